"""The PyTorch side: profiler, ONNX export, split-inference runtime. Only this package imports torch."""
