"""Checks of the (student, teacher) view lists the self-supervised criteria are called with."""

from __future__ import annotations

import torch


def check_temperature(method: str, temperature: float) -> float:
    """`temperature` as a float, or a ValueError naming the method when it is not > 0."""
    if not temperature > 0:
        raise ValueError(f"{method} temperature must be > 0, got {temperature!r}")
    return float(temperature)


def check_views(method: str, student, teacher, students: int | str, teachers: int | str | None) -> None:
    """Raise ValueError unless `student` (and `teacher`) are lists of 2-D tensors with equal batch sizes per list:
    `students` and `teachers` views, each an int or "N+" for at least N (`teachers` None: no teacher accepted)."""
    _check_list(method, "student", student)
    _check_count(method, "student", len(student), students)
    if teachers is None:
        if teacher is not None:
            raise ValueError(f"{method} has no teacher network: call it with teacher=None")
        return
    if teacher is None:
        raise ValueError(f"{method} needs the teacher's outputs for its global views (teacher=[...])")
    _check_list(method, "teacher", teacher)
    _check_count(method, "teacher", len(teacher), teachers)


def _check_count(method: str, what: str, count: int, expected: int | str) -> None:
    if isinstance(expected, str):
        least = int(expected.rstrip("+"))
        if count < least:
            raise ValueError(f"{method} needs at least {least} {what} views, got {count}")
    elif count != expected:
        raise ValueError(f"{method} needs {expected} {what} views, got {count}")


def _check_list(method: str, what: str, views) -> None:
    if isinstance(views, torch.Tensor) or not isinstance(views, (list, tuple)):
        raise ValueError(f"{method}: {what} must be a list of per-view (B, D) tensors, got {type(views).__name__}")
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor) or v.dim() != 2:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{method}: {what}[{i}] must be a (B, D) tensor, got {shape}")
    if len({v.shape[0] for v in views}) > 1:
        raise ValueError(f"{method}: the {what} views have different batch sizes "
                         f"{[v.shape[0] for v in views]}; each view holds the same samples")


def full_precision(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """float16 / bfloat16 views as float32 (the losses' batch statistics and softmaxes need the range); others
    unchanged."""
    return [v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for v in views]
