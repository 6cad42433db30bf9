"""Evaluation helpers for embeddings: kNN accuracy, leave-one-out precision@1, NMI, linear probe.

Similarities are cosine (embeddings are L2-normalised first). Work is chunked so that a 50k x 50k
similarity matrix is never held at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _tensor(x, dtype=torch.float32) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).detach().to("cpu", dtype)


def _check_pairs(emb: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if emb.dim() != 2 or labels.dim() != 1 or emb.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: need embeddings [N, D] and labels [N], got {tuple(emb.shape)} and "
                         f"{tuple(labels.shape)}")


@torch.no_grad()
def knn_predict(train_emb, train_labels, test_emb, k: int = 20, chunk: int = 1024) -> torch.Tensor:
    """Majority vote of the k most cosine-similar training samples (ties go to the smaller label)."""
    train, test = F.normalize(_tensor(train_emb), dim=1), F.normalize(_tensor(test_emb), dim=1)
    labels = _tensor(train_labels, torch.long)
    _check_pairs(train, labels, "knn")
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"knn: k={k} must be in [1, {train.shape[0]}] (the number of training samples)")
    num_classes = int(labels.max()) + 1
    preds = []
    for start in range(0, test.shape[0], chunk):
        neighbours = (test[start:start + chunk] @ train.T).topk(k, dim=1).indices
        votes = torch.zeros(neighbours.shape[0], num_classes).scatter_add_(
            1, labels[neighbours], torch.ones(neighbours.shape))
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_emb, train_labels, test_emb, test_labels, k: int = 20) -> float:
    """Fraction of test samples whose k-nearest-neighbour vote (cosine) gives their label."""
    test_labels = _tensor(test_labels, torch.long)
    preds = knn_predict(train_emb, train_labels, test_emb, k)
    if preds.shape != test_labels.shape:
        raise ValueError(f"knn_accuracy: {preds.shape[0]} test embeddings but {test_labels.shape[0]} test labels")
    return float((preds == test_labels).float().mean())


@torch.no_grad()
def precision_at_1(emb, labels, chunk: int = 1024) -> float:
    """Leave-one-out precision@1: fraction of samples whose nearest other sample (cosine) shares its label."""
    emb, labels = F.normalize(_tensor(emb), dim=1), _tensor(labels, torch.long)
    _check_pairs(emb, labels, "precision_at_1")
    if emb.shape[0] < 2:
        raise ValueError("precision_at_1 needs at least 2 samples")
    hits = 0
    for start in range(0, emb.shape[0], chunk):
        sims = emb[start:start + chunk] @ emb.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -float("inf")  # leave the sample itself out
        hits += int((labels[sims.argmax(dim=1)] == labels[start:start + chunk]).sum())
    return hits / emb.shape[0]


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information between two labelings (scikit-learn)."""
    from sklearn.metrics import normalized_mutual_info_score
    return float(normalized_mutual_info_score(_tensor(labels_true, torch.long).numpy(),
                                              _tensor(labels_pred, torch.long).numpy()))


def linear_probe_accuracy(train_emb, train_labels, test_emb, test_labels, max_iter: int = 1000) -> float:
    """Test accuracy of a logistic-regression probe fitted on frozen (standardised) training embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(_tensor(train_emb).numpy(), _tensor(train_labels, torch.long).numpy())
    return float(probe.score(_tensor(test_emb).numpy(), _tensor(test_labels, torch.long).numpy()))
