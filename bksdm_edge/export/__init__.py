"""Export of SD components to edge formats (ONNX, TFLite/LiteRT, Core ML)."""
