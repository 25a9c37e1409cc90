"""The torch-free core that `segcls.export` and `segcls.runtime` both build on.

Errors, the model description and the exported model's contract (ONNX metadata, engine sidecars), atomic
writes, pyramidal TIFF, metrics, the CUDA / TensorRT helpers (imported lazily) and the command grammar.
It imports numpy, click, tifffile and nothing else of segcls: `make lint` checks it (import-linter).
"""
