"""Checkpoint -> ONNX score graph conversion (heavy dependencies live here only)."""
