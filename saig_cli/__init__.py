"""The ``saig`` command line, the top layer: it parses arguments and calls library functions.

Layers, imports pointing down only: :mod:`saig_cli` → :mod:`synthetic_world` → :mod:`tiling` →
:mod:`saig_core`. Command groups: :mod:`saig_cli.engine` (checkpoints, ONNX, backend check),
:mod:`saig_cli.training` (train, eval), :mod:`saig_cli.geo` (tile, index, locate) and
:mod:`saig_cli.synthetic` (synth, demo); :mod:`saig_cli.main` assembles them.
"""
