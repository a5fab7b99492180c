# The user's commands: `make test` and `make demo`. Everything installs itself on first use and
# nothing is reinstalled on a second run (stamp files in .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-installed
TORCH_SPEC ?= torch==2.13.0
QGIS_PY := /usr/bin/python3

.PHONY: help venv lint test test-backend test-plugin test-plugin-install test-cluster bench-report qgis clean plugin-zip install-plugin demo demo-model

help:
	@echo "make demo   - set up .venv, then generate a held-out world, index it, geolocate its photos (demo_out/)"
	@echo "make test   - set up .venv (and QGIS for plugin tests), run ruff and mypy, then the whole suite"
	@echo "make lint   - ruff and mypy only"
	@echo "make test-cluster - saig index build --ray on a real local Ray cluster (two nodes, started and stopped)"
	@echo "make bench-report - docs/benchmarks.md, docs/scale.md and docs/calibration.svg from benchmarks/results/*.json"
	@echo "make demo-model - retrain models/demo.pt from synthetic worlds (about 60 min on 2 CPU cores)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,onnx,train,ray]'
	touch $(STAMP)

venv: $(STAMP)

# QGIS (Debian packages) for the plugin tests; installed when missing and we are root.
qgis:
	@if [ -x /usr/bin/qgis_process.bin ] && $(QGIS_PY) -c 'import qgis.core, pytest' 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "Installing QGIS from Debian packages (a few minutes, once)..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qgis python3-qgis python3-pytest xvfb >/dev/null; \
	else \
		echo "QGIS is missing: run 'sudo apt-get install -y qgis python3-qgis python3-pytest xvfb' for the plugin tests."; \
	fi

# Gates first (lint, import order, docstrings on the public API; types of saig_core and tiling), then the suites.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint test-backend test-plugin

test-backend: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/plugin -q -m "not cluster"

# A head node and a second worker node (one CPU, a small object store each) started by the test and stopped
# at its end; `saig index build --ray` on them must equal the single-process build and resume.
test-cluster: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/plugin -q -m cluster -p no:cacheprovider

# Every figure of docs/benchmarks.md and docs/scale.md comes from benchmarks/results/*.json (each benchmark
# script writes its own file; see benchmarks/record.py).
bench-report: $(STAMP)
	$(PY) scripts/bench_report.py

test-plugin: qgis $(STAMP)
	@if [ ! -d tests/plugin ]; then echo "no plugin tests yet"; \
	elif $(QGIS_PY) -c 'import qgis.core, pytest' 2>/dev/null; then \
		QT_QPA_PLATFORM=offscreen $(QGIS_PY) -m pytest tests/plugin -q -p no:cacheprovider -m "not install"; \
	else echo "QGIS not available: plugin tests not run"; exit 1; fi

# The plugin's own backend install, end to end (ZIP -> empty profile -> Install backend -> qgis_process): minutes
test-plugin-install: qgis $(STAMP)
	QT_QPA_PLATFORM=offscreen $(QGIS_PY) -m pytest tests/plugin/test_install_from_zip.py -q -p no:cacheprovider

# QGIS plugin: dist/qgis_saig_plugin.zip ("Install from ZIP", then "Install backend" in the dock), or install it
# into a QGIS profile and enable it, recording this checkout so the plugin uses .venv as its backend.
PLUGIN_ZIP := dist/qgis_saig_plugin.zip
QGIS_PROFILE ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default
PLUGIN_SOURCES := $(shell find qgis_saig_plugin -type f -not -path '*/__pycache__/*' -not -name backend.json 2>/dev/null)
# the ZIP ships the backend (this project) as a wheel, for the plugin's "Install backend"
BACKEND_SOURCES := $(shell find saig_core tiling synthetic_world saig_cli -name '*.py' -not -path '*/__pycache__/*' 2>/dev/null)

$(PLUGIN_ZIP): $(PLUGIN_SOURCES) $(BACKEND_SOURCES) pyproject.toml metadata.txt LICENSE scripts/plugin_package.py | $(STAMP)
	$(PYTHON) scripts/plugin_package.py zip $@ --python $(PY)

plugin-zip: $(PLUGIN_ZIP)

install-plugin: $(PLUGIN_ZIP) | $(STAMP)
	$(PYTHON) scripts/plugin_package.py install $(PLUGIN_ZIP) --profile "$(QGIS_PROFILE)" --checkout "$(CURDIR)"

# The built-in example: a held-out synthetic world (seed 2026), indexed and geolocated with
# models/demo.pt; writes demo_out/ (report.json, candidates.gpkg, heatmaps/, overviews/).
demo: $(STAMP)
	$(VENV)/bin/saig demo --out demo_out

# Retrain models/demo.pt: training pairs from worlds 101-106 and 114-117, validation pairs from world 109
# (never the demo's 2026), configs/demo.yaml, then the val-selected best.pt exported as fp16.
DEMO_DATA := build/demo-data
demo-model: $(STAMP)
	$(VENV)/bin/saig synth --seed 101,102,103,104,105,106,114,115,116,117 --size-m 2000 --pairs 1500 --out $(DEMO_DATA)/train
	$(VENV)/bin/saig synth --seed 109 --size-m 2000 --pairs 600 --out $(DEMO_DATA)/val
	rm -rf build/demo-run
	OMP_NUM_THREADS=1 $(VENV)/bin/saig train --config configs/demo.yaml --out build/demo-run --set data.train=$(CURDIR)/$(DEMO_DATA)/train/pairs.csv
	$(PY) -c 'from synthetic_world.demo import export_demo_model as e; e("build/demo-run/best.pt", "models/demo.pt")'
	$(PY) benchmarks/calibration.py --checkpoint models/demo.pt --write-checkpoint
	sha256sum models/demo.pt

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out test-artifacts
