"""Running a model: devices and precisions (:mod:`.device`, names in :mod:`.choices`), the batch
:class:`~saig_core.runtime.encode.Encoder` (:mod:`.encode`), the backend check (:mod:`.backend`),
progress and JSON-lines reporting (:mod:`.progress`) and the argument builders every command
shares (:mod:`.args`).
"""
