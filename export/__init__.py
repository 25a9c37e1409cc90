"""Export: torch checkpoint -> ONNX (uint8 in, labels/probs/class scores out) -> FP16 -> TensorRT."""
