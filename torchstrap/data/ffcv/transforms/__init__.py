"""Seeded FFCV transforms (torchstrap_runtime.data)."""
