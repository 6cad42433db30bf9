"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021; code
facebookresearch/dino): the criterion, with its center and teacher-temperature schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum
from .inputs import check_views, full_precision


class DINOLoss(nn.Module):
    """Cross-entropy between the sharpened, centred teacher distribution of each global crop and the student
    distribution of every other crop, averaged over those (teacher crop, student crop) pairs.

    `student` holds the head outputs of all crops, global crops first; `teacher` those of the global crops
    (two in the authors' recipe). Student probabilities are softmax(s / `student_temp`); teacher probabilities
    softmax((t - center) / T_epoch), detached. The buffer `center` (1, `out_dim`) follows the mean teacher
    output of the global batch (all-reduced across ranks) with momentum `center_momentum`, after each training
    call (not in eval mode). T_epoch rises linearly from `warmup_teacher_temp` to `teacher_temp` over
    `warmup_teacher_temp_epochs`, then stays (also past `nepochs`); the loop calls `set_epoch(epoch)` at the
    start of each epoch. The schedule, the epoch and the center are buffers: they are in the state_dict.
    Defaults are the authors' (main_dino.py and DINOLoss).
    """

    input_kind = "student_teacher"

    def __init__(self, out_dim: int = 65536, nepochs: int = 100, warmup_teacher_temp: float = 0.04,
                 teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"dino out_dim must be an int >= 1, got {out_dim!r}")
        if not isinstance(nepochs, int) or nepochs < 1:
            raise ValueError(f"dino nepochs must be an int >= 1, got {nepochs!r}")
        if not isinstance(warmup_teacher_temp_epochs, int) or not 0 <= warmup_teacher_temp_epochs <= nepochs:
            raise ValueError(f"dino warmup_teacher_temp_epochs must be an int in [0, nepochs={nepochs}], "
                             f"got {warmup_teacher_temp_epochs!r}")
        if not (teacher_temp > 0 and warmup_teacher_temp > 0 and student_temp > 0):
            raise ValueError("dino temperatures must be > 0, got warmup_teacher_temp="
                             f"{warmup_teacher_temp!r}, teacher_temp={teacher_temp!r}, student_temp={student_temp!r}")
        self.out_dim, self.nepochs = out_dim, nepochs
        self.student_temp, self.center_momentum = float(student_temp), float(center_momentum)
        warmup = torch.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, dtype=torch.float64)
        schedule = torch.cat([warmup, torch.full((nepochs - warmup_teacher_temp_epochs,), float(teacher_temp),
                                                 dtype=torch.float64)])
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("teacher_temp_schedule", schedule)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: int) -> None:
        """Use the teacher temperature of `epoch` (0-based) from now on."""
        if epoch < 0:
            raise ValueError(f"dino epoch must be >= 0, got {epoch}")
        self.epoch.fill_(int(epoch))

    def teacher_temp(self) -> torch.Tensor:
        """This epoch's teacher temperature (the last one past the schedule's end)."""
        return self.teacher_temp_schedule[self.epoch.clamp(max=self.teacher_temp_schedule.numel() - 1)]

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None = None) -> torch.Tensor:
        check_views("dino", student, teacher, "2+", "1+")
        if len(teacher) > len(student):
            raise ValueError(f"dino: the teacher sees the global views, a subset of the student's {len(student)}; "
                             f"got {len(teacher)} teacher views")
        widths = {v.shape[1] for v in [*student, *teacher]}
        if widths != {self.out_dim}:
            raise ValueError(f"dino was built with out_dim={self.out_dim} but got outputs of width(s) {sorted(widths)}")
        student, teacher = full_precision(student), full_precision(teacher)
        teacher_out = torch.cat(teacher).detach()
        temp = self.teacher_temp().to(teacher_out.dtype)
        targets = F.softmax((teacher_out - self.center) / temp, dim=-1).chunk(len(teacher))
        log_probs = [F.log_softmax(s / self.student_temp, dim=-1) for s in student]
        total, terms = 0.0, 0
        for iq, q in enumerate(targets):
            for v, log_p in enumerate(log_probs):
                if v == iq:
                    continue   # the student's view of the teacher's own crop
                total = total + torch.sum(-q * log_p, dim=-1).mean()
                terms += 1
        if self.training:
            self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center <- momentum * center + (1 - momentum) * mean teacher output over every rank's batch."""
        teacher_out = teacher_out.to(self.center.dtype)
        sums = all_reduce_sum(torch.cat([teacher_out.sum(dim=0), teacher_out.new_tensor([teacher_out.shape[0]])]))
        batch_center = (sums[:-1] / sums[-1]).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))

    def extra_repr(self) -> str:
        return (f"out_dim={self.out_dim}, nepochs={self.nepochs}, student_temp={self.student_temp}, "
                f"center_momentum={self.center_momentum}")
