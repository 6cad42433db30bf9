"""Straight transcriptions of the six self-supervised losses as their authors wrote them, one process:

- SimCLR: google-research/simclr, tf2/objective.py `add_contrastive_loss` (TensorFlow, written here in torch;
  LARGE_NUM masking, softmax cross-entropy of [logits_ab, logits_aa] and [logits_ba, logits_bb], loss_a + loss_b);
- VICReg: facebookresearch/vicreg, main_vicreg.py `VICReg.forward` after the projector;
- Barlow Twins: facebookresearch/barlowtwins, main.py `BarlowTwins.forward` after the projector (its
  BatchNorm1d(affine=False), in-place ops and `c.div_(batch_size)`);
- BYOL: google-deepmind/deepmind-research, byol/utils/helpers.py `l2_normalize`/`regression_loss` and
  byol_experiment.py's symmetric `repr_loss` (JAX, written here in torch);
- MoCo v3: facebookresearch/moco-v3, moco/builder.py `contrastive_loss` and `forward`;
- DINO: facebookresearch/dino, main_dino.py `DINOLoss` (numpy schedule, `update_center`).

Written from the authors' code, not from torchstrap_runtime.methods: the equivalence tests hold ours against them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LARGE_NUM = 1e9


def simclr_add_contrastive_loss(hidden: torch.Tensor, hidden_norm: bool = True,
                                temperature: float = 1.0) -> torch.Tensor:
    """google-research/simclr's loss of `hidden` = [view 1 rows; view 2 rows], one replica."""
    if hidden_norm:
        hidden = hidden * torch.rsqrt(torch.clamp((hidden * hidden).sum(-1, keepdim=True), min=1e-12))
    hidden1, hidden2 = torch.split(hidden, hidden.shape[0] // 2, 0)
    batch_size = hidden1.shape[0]
    hidden1_large, hidden2_large = hidden1, hidden2
    labels = F.one_hot(torch.arange(batch_size), batch_size * 2).to(hidden.dtype)
    masks = F.one_hot(torch.arange(batch_size), batch_size).to(hidden.dtype)
    logits_aa = hidden1 @ hidden1_large.T / temperature
    logits_aa = logits_aa - masks * LARGE_NUM
    logits_bb = hidden2 @ hidden2_large.T / temperature
    logits_bb = logits_bb - masks * LARGE_NUM
    logits_ab = hidden1 @ hidden2_large.T / temperature
    logits_ba = hidden2 @ hidden1_large.T / temperature

    def softmax_cross_entropy(onehot, logits):   # tf.losses.softmax_cross_entropy, mean reduction
        return (-(onehot * F.log_softmax(logits, dim=1)).sum(1)).mean()

    loss_a = softmax_cross_entropy(labels, torch.cat([logits_ab, logits_aa], 1))
    loss_b = softmax_cross_entropy(labels, torch.cat([logits_ba, logits_bb], 1))
    return loss_a + loss_b


def vicreg_off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_forward(x, y, batch_size, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """facebookresearch/vicreg after `self.projector`, one process (FullGatherLayer is the identity)."""
    num_features = x.shape[1]
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = vicreg_off_diagonal(cov_x).pow_(2).sum().div(num_features) + \
        vicreg_off_diagonal(cov_y).pow_(2).sum().div(num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


class BarlowTwinsHead(nn.Module):
    """facebookresearch/barlowtwins' loss part of `BarlowTwins` (after the projector), one process."""

    def __init__(self, width: int, batch_size: int, lambd: float = 0.0051):
        super().__init__()
        self.batch_size, self.lambd = batch_size, lambd
        self.bn = nn.BatchNorm1d(width, affine=False)

    def forward(self, z1, z2):
        c = self.bn(z1).T @ self.bn(z2)
        c.div_(self.batch_size)
        # torch.distributed.all_reduce(c): one process
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = vicreg_off_diagonal(c).pow_(2).sum()
        return on_diag + self.lambd * off_diag


def byol_l2_normalize(x, axis=None, epsilon=1e-12):
    square_sum = torch.sum(torch.square(x), dim=axis, keepdim=True)
    x_inv_norm = torch.rsqrt(torch.maximum(square_sum, torch.tensor(epsilon, dtype=x.dtype)))
    return x * x_inv_norm


def byol_regression_loss(x, y):
    normed_x, normed_y = byol_l2_normalize(x, axis=-1), byol_l2_normalize(y, axis=-1)
    return torch.sum((normed_x - normed_y) ** 2, dim=-1)


def byol_repr_loss(prediction_view1, prediction_view2, projection_view1, projection_view2):
    """byol_experiment.py: regression of each view's online prediction on the other view's target projection."""
    repr_loss = byol_regression_loss(prediction_view1, projection_view2.detach())
    repr_loss = repr_loss + byol_regression_loss(prediction_view2, projection_view1.detach())
    return torch.mean(repr_loss)


def mocov3_contrastive_loss(q, k, T, rank=0):
    q = nn.functional.normalize(q, dim=1)
    k = nn.functional.normalize(k, dim=1)
    # k = concat_all_gather(k): one process
    logits = torch.einsum('nc,mc->nm', [q, k]) / T
    N = logits.shape[0]
    labels = torch.arange(N, dtype=torch.long) + N * rank
    return nn.CrossEntropyLoss()(logits, labels) * (2 * T)


def mocov3_forward(q1, q2, k1, k2, T=1.0):
    with torch.no_grad():
        k1, k2 = k1.detach(), k2.detach()
    return mocov3_contrastive_loss(q1, k2, T) + mocov3_contrastive_loss(q2, k1, T)


class AuthorsDINOLoss(nn.Module):
    """facebookresearch/dino's DINOLoss, one process (all_reduce over one rank)."""

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                 student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
        ))

    def forward(self, student_output, teacher_output, epoch):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = batch_center / (len(teacher_output) * 1)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
