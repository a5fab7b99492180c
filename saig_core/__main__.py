"""``python -m saig_core``: the installed ``saig`` command, for scripts written before :mod:`saig_cli`.

The engine does not import the command line above it; it looks the command up the way any
program would, through the ``saig`` console-script entry point of the installed package.
"""
import sys
from importlib.metadata import entry_points

(saig,) = entry_points(group="console_scripts", name="saig") or (None,)
if saig is None:
    sys.exit("saig is not installed in this Python (pip install -e . in the project folder)")
sys.exit(saig.load()())
