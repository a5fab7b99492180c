"""Model weights on disk: checkpoints in the project's format, the authors' and ImageNet layouts
(:mod:`.checkpoint`), and ONNX export (:mod:`.onnx_export`).
"""
