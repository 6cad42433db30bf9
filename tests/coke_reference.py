"""A straight transcription of the update rules published in idstcv/CoKe (builder_{single,double,multi}_view.py
and the losses of main_{single,double,multi}_view.py), one process, the authors' [D, K] center layout.

Written from the authors' code, not from torchstrap_runtime.criteria.coke: the equivalence tests hold our
criteria against it. `step` is one mini-batch (their model forward plus their loss), `update_center` their
end of epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AuthorsCoKe:
    def __init__(self, mode: str, centers: list[torch.Tensor], num_ins: int, T: float, dual_lr: float, ratio: float,
                 alpha: float = 0.2, beta: float = 0.5, stage: int = 801, t: float = 0.5, ls: int = 5):
        self.mode, self.T, self.dual_lr, self.ratio = mode, T, dual_lr, ratio
        self.alpha, self.beta, self.stage, self.t = alpha, beta, stage, t
        self.ls = ls if mode == "single" else 1
        self.K = [c.shape[0] for c in centers]
        self.H = len(centers)
        self.lb = [ratio / k for k in self.K]
        self.pre = [c.T.clone() for c in centers]
        self.cur = [c.T.clone() for c in centers]
        self.duals = [torch.zeros(k) for k in self.K]
        self.counters = [torch.zeros(k) for k in self.K]
        if mode == "single":
            self.assign_labels = torch.ones(self.H, num_ins, self.ls, dtype=torch.long)
            self.label_val = torch.zeros(self.H, num_ins, self.ls)
            self.label_idx = torch.zeros(self.H, num_ins, dtype=torch.long)
        else:
            self.assign_labels = torch.ones(self.H, num_ins, dtype=torch.long)

    # ------------------------------------------------------------------ builder
    def gen_label(self, feats, epoch, h):
        centers = self.pre[h] if (self.mode == "single" and epoch >= self.stage) else self.cur[h]
        return torch.argmax(feats @ centers + self.duals[h], dim=1)

    def update_label(self, targets, labels, epoch, h):
        if self.mode != "single":
            self.assign_labels[h][targets] = labels
            return
        if epoch < self.stage or self.ls == 1:
            self.assign_labels[h][targets, 0] = labels
        elif epoch == self.stage:
            self.assign_labels[h][targets, 0] = labels
            self.label_val[h][targets, 0] = 1.0
            self.label_idx[h][targets] = 1
        else:
            factor = 1.0 / (epoch - self.stage + 1.0)
            hits = (self.assign_labels[h][targets, :] - labels.reshape(-1, 1) == 0).nonzero()
            idx = self.label_idx[h][targets]
            val = self.label_val[h][targets, idx]
            if len(hits) > 0:
                idx[hits[:, 0]] = hits[:, 1]
                val[hits[:, 0]] = 0.0
            self.label_val[h][targets, idx] -= val
            self.label_val[h][targets, :] *= (1.0 - factor) / (1.0 - val.reshape(-1, 1))
            self.assign_labels[h][targets, idx] = labels
            self.label_val[h][targets, idx] += factor
            self.label_idx[h][targets] = torch.min(self.label_val[h][targets, :], dim=1).indices

    def get_label(self, target, epoch, h):
        if self.mode != "single":
            return self.assign_labels[h][target]
        if epoch <= self.stage or self.ls == 1:
            return self.assign_labels[h][target, 0]
        labels = torch.zeros(len(target), self.K[h])
        for i, s in enumerate(target.tolist()):
            labels[i].index_add_(0, self.assign_labels[h][s], self.label_val[h][s])
        labels[labels > 0] = torch.exp(labels[labels > 0] / self.t)
        return labels / labels.sum(dim=1, keepdim=True)

    def update_center(self, epoch):
        if self.mode == "single" and epoch >= self.stage:
            factor = 1.0 / (epoch - self.stage + 1.0)
            for h in range(self.H):
                tmp = F.normalize(self.cur[h], dim=0)
                self.pre[h] = F.normalize((1.0 - factor) * self.pre[h] + factor * tmp, dim=0)
                self.cur[h] = self.pre[h].clone()
        else:
            for h in range(self.H):
                self.pre[h] = self.cur[h].clone()
        self.counters = [torch.zeros(k) for k in self.K]

    def update_center_mini_batch(self, feats, labels, epoch, h):
        idx, count = torch.unique(labels, return_counts=True)
        self.duals[h][idx] -= self.dual_lr / len(labels) * count
        self.duals[h] += self.dual_lr * self.lb[h]
        if self.ratio < 1:
            self.duals[h][self.duals[h] < 0] = 0
        a = self.counters[h][idx].float()
        self.counters[h][idx] += count
        a = a / self.counters[h][idx].float()
        self.cur[h][:, idx] = self.cur[h][:, idx] * a
        self.cur[h].index_add_(1, labels, feats.T * (1.0 / self.counters[h][labels]))
        if self.mode != "single" or epoch < self.stage:
            self.cur[h][:, idx] = F.normalize(self.cur[h][:, idx], dim=0)

    # ------------------------------------------------------------------ forward + loss of main_*.py
    def step(self, proj: list[torch.Tensor], pred: list[torch.Tensor], target: torch.Tensor, epoch: int):
        """proj/pred: raw outputs per view (large first). Returns (loss, this batch's new labels per head)."""
        zs = [F.normalize(x, dim=1) for x in proj]
        ps = [F.normalize(x, dim=1) for x in pred]
        proj_logits = [[z @ self.pre[h] / self.T for z in zs] for h in range(self.H)]
        pred_logits = [[p @ self.pre[h] / self.T for p in ps] for h in range(self.H)]
        feats = zs[0] if self.mode == "single" else (zs[0] + zs[1]) * 0.5
        cur_labels, new_labels = [], []
        for h in range(self.H):
            if epoch == 0:
                labels = self.gen_label(feats, epoch, h)
                self.update_label(target, labels, epoch, h)
                self.update_center_mini_batch(feats, labels, epoch, h)
                cur_labels.append(self.get_label(target, epoch, h))
            else:
                cur_labels.append(self.get_label(target, epoch, h))
                labels = self.gen_label(feats, epoch, h)
                self.update_center_mini_batch(feats, labels, epoch, h)
                self.update_label(target, labels, epoch, h)
            new_labels.append(labels)
        return self.loss(proj_logits, pred_logits, cur_labels, epoch), new_labels

    def loss(self, proj, pred, labels, epoch):
        ce = F.cross_entropy

        def soft_ce(logits, target):
            return -torch.mean(torch.sum(F.log_softmax(logits, dim=1) * target, dim=1))

        H = self.H
        if self.mode == "single":
            lp = lj = 0
            for h in range(H):
                if epoch <= self.stage or self.ls == 1:
                    lp += ce(pred[h][0], labels[h])
                    lj += ce(proj[h][0], labels[h])
                else:
                    lp += soft_ce(pred[h][0], labels[h])
                    lj += soft_ce(proj[h][0], labels[h])
            return self.beta * lp / H + (1.0 - self.beta) * lj / H
        a, snum = self.alpha, len(proj[0]) - 2
        lp = lj = lps = ljs = 0
        for h in range(H):
            s1, s2 = F.softmax(proj[h][0], dim=1), F.softmax(proj[h][1], dim=1)
            lp += a * ce(pred[h][0], labels[h]) + a * ce(pred[h][1], labels[h])
            lj += a * ce(proj[h][0], labels[h]) + a * ce(proj[h][1], labels[h])
            lp += (1 - a) * soft_ce(pred[h][0], s2) + (1 - a) * soft_ce(pred[h][1], s1)
            lj += (1 - a) * soft_ce(proj[h][0], s2) + (1 - a) * soft_ce(proj[h][1], s1)
            for k in range(snum):
                lps += 2 * a * ce(pred[h][2 + k], labels[h]) + (1 - a) * soft_ce(pred[h][2 + k], s1 + s2)
                ljs += 2 * a * ce(proj[h][2 + k], labels[h]) + (1 - a) * soft_ce(proj[h][2 + k], s1 + s2)
        large = 0.5 / (2.0 * H) * (lp + lj)
        if self.mode == "double":
            return large
        small = 0.5 / (2.0 * snum * H) * (lps + ljs)
        return self.beta * large + (1 - self.beta) * small
