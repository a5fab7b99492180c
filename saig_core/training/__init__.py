"""Training and evaluation: losses (:mod:`.losses`), (A)SAM (:mod:`.sam`), the learning-rate
schedule (:mod:`.schedule`), the YAML config (:mod:`.config`), the trainer (:mod:`.trainer`),
multi-process DDP (:mod:`.distributed`) and retrieval metrics (:mod:`.evaluate`).
"""
