"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021; code
facebookresearch/dino): the criterion, with its center and teacher-temperature schedule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum
from .inputs import check_views, full_precision
from .recipes import MILD_JITTER, BaselineRecipe, OptimizerRecipe, TeacherRecipe, scaled_width


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


class DINOHead(nn.Module):
    """DINO's head (facebookresearch/dino vision_transformer.py `DINOHead`): an MLP of `nlayers` Linear layers
    (GELU between, BatchNorm before each GELU with `use_bn`) from `in_dim` through `hidden_dim` (2048) to
    `bottleneck_dim` (256), weights truncated-normal (std 0.02) and biases 0; then L2 normalisation and a
    weight-normalised Linear without bias to `out_dim` (65536), its norm g fixed at 1 with `norm_last_layer`."""

    def __init__(self, in_dim: int, out_dim: int = 65536, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers += [nn.BatchNorm1d(b)] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers) if len(layers) > 1 else layers[0]
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        norm = self.last_layer.parametrizations.weight.original0   # g, one per output
        with torch.no_grad():
            norm.fill_(1.0)
        norm.requires_grad_(not norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def dino_heads(in_dim: int, head_scale: float = 1.0, vit: bool = False):
    return DINOHead(in_dim, scaled_width(65536, head_scale), hidden_dim=scaled_width(2048, head_scale),
                    bottleneck_dim=scaled_width(256, head_scale)), None


CLIP_GRAD = 3.0          # main_dino.py --clip_grad: each parameter's gradient norm at most 3
FREEZE_LAST_LAYER = 1    # main_dino.py --freeze_last_layer: the last layer's gradients dropped in epoch 0


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float = CLIP_GRAD) -> None:
    """DINO's `utils.clip_gradients`: each parameter's gradient scaled to norm <= `clip` (without a host sync)."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_((clip / (torch.linalg.vector_norm(p.grad) + 1e-6)).clamp(max=1.0))


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int = FREEZE_LAST_LAYER) -> None:
    """DINO's `utils.cancel_gradients_last_layer`: no update of the head's last layer in the first
    `freeze_last_layer` epochs."""
    if epoch < freeze_last_layer:
        for name, p in model.named_parameters():
            if "last_layer" in name:
                p.grad = None


def dino_views(image_size: int, small_size: int, small_crops: int, scale_min: float | None = None,
               global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)) -> list[dict]:
    """DataAugmentationDINO: two global crops (scale 0.4-1; blur 1.0 / 0.1, solarization 0 / 0.2) and
    `small_crops` local crops of `small_size` (scale 0.05-0.4, blur 0.5); jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
    grayscale 0.2 on every crop. `scale_min` is unused: DINO's crops keep their own scales."""
    common = dict(jitter=MILD_JITTER, jitter_p=0.8, grayscale_p=0.2)
    return [dict(name="image", image_size=image_size, scale=global_scale, blur_p=1.0, **common),
            dict(name="view2", image_size=image_size, scale=global_scale, blur_p=0.1, solarize_p=0.2, **common),
            *[dict(name=f"small{i}", image_size=small_size, scale=local_scale, blur_p=0.5, **common)
              for i in range(1, small_crops + 1)]]


# main_dino.py's defaults (ViT-S/16): AdamW, lr 0.0005 x batch / 256 after 10 warm-up epochs, cosine to
# min_lr 1e-6, weight decay 0.04 -> 0.4 along a cosine (none on biases and norms), teacher momentum 0.996 -> 1,
# per-parameter gradient clip 3, the last layer frozen in epoch 0, 2 global + 8 local crops (96 px at 224).
RECIPE = BaselineRecipe(
    name="dino", criterion="dino", heads=dino_heads, views=dino_views, small_crops=8, out_dim_param="out_dim",
    params={"nepochs": 100, "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
            "student_temp": 0.1, "center_momentum": 0.9},
    optimizer=OptimizerRecipe("adamw", base_lr=0.0005, weight_decay=0.04, final_weight_decay=0.4, min_lr=1e-6),
    teacher=TeacherRecipe(0.996))
