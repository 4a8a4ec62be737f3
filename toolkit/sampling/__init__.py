"""Batched sampling from exported step models on onnxruntime (numpy and onnxruntime only: no TensorFlow)."""
