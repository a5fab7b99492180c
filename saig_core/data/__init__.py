"""Images into model inputs: cross-view datasets (:mod:`.datasets`), the ground/aerial transforms
and the input convention shared with ``saig locate`` (:mod:`.transforms`), and image
preprocessing (:mod:`.preprocess`).
"""
