"""What needs FFCV says so when it is missing: the training loop, models, criteria and logs run without it
(a Trainer trains on in-memory tensors or a torch DataLoader); the seeded data ops, the Loader and .beton
files (`torchstrap_runtime.data`) and CoKe's views are built on FFCV."""

from __future__ import annotations

from .errors import UserError


class FFCVMissingError(UserError, ImportError):
    """FFCV is not installed (or does not import) where something built on it was asked for."""


def require_ffcv(what: str) -> None:
    """Import FFCV, or raise `FFCVMissingError`: one sentence saying that `what` needs it and what runs without."""
    try:
        import ffcv  # noqa: F401
    except ImportError as error:
        raise FFCVMissingError(
            f"{what} needs FFCV, which does not import here ({error}): install it (pip install ffcv, which "
            f"needs libjpeg-turbo and OpenCV), or train from in-memory tensors or a torch.utils.data.DataLoader, "
            f"which need no FFCV", name="ffcv") from None
