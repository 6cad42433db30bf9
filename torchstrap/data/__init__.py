"""Seeded FFCV data: `torchstrap.data.ffcv.transforms.image` holds the image ops (torchstrap_runtime.data)."""
