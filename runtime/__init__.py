"""Whole-slide inference. Imports without torch: numpy, onnxruntime, openslide, tifffile."""
