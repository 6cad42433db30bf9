"""Seeded FFCV ops (torchstrap_runtime.data)."""
