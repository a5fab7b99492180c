"""A seeded synthetic world with exact ground truth, and the demo that measures the product on it.

:mod:`.world` builds the 2.5D scene (pure numpy), :mod:`.render` draws orthophotos, panoramas and
limited field-of-view photos from it, :mod:`.io` writes GeoTIFFs, EXIF-tagged JPEGs and
``truth.csv``, :mod:`.generate` makes worlds and training pairs, and :mod:`.demo` runs ``saig synth``,
``saig index build`` and ``saig locate`` on a held-out world and scores them. Sits above
:mod:`tiling` and below :mod:`saig_cli`.
"""
