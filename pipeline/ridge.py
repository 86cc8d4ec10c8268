"""Linear few-shot evaluation, the protocol of the ViT paper (Sec. 4.1 "Metrics", Appendix B.1)
as in the authors' public evaluator (big_vision ``fewshot_lsr``):

- features of a frozen model (pre-logits), k examples per class drawn per seed;
- standardize with the few-shot training set's mean and std (+1e-5), append a constant feature
  of 100 so that the bias is almost unregularized;
- L2-regularized least squares to {-1, +1}^K targets in closed form, solved in the primal
  (D x D) or the dual (N x N), whichever is smaller; one eigendecomposition serves every L2
  strength;
- predict by argmax; report the mean and spread over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BIAS_CONSTANT = 100.0
DEFAULT_L2 = 2.0 ** 10
DEFAULT_SHOTS = (1, 5, 10, 25)


@dataclass
class RidgeSolver:
    """Pre-computed pieces of ridge regression for one few-shot training set:
    W(l2) = lhs diag(1 / (eigs + l2)) rhs."""
    mean: np.ndarray
    std: np.ndarray
    eigs: np.ndarray
    lhs: np.ndarray
    rhs: np.ndarray
    dual: bool

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, num_classes: int) -> "RidgeSolver":
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0, keepdims=True)
        std = x.std(axis=0, keepdims=True) + 1e-5
        x = design_matrix(x, mean, std)
        targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
        n, d = x.shape
        if n >= d:   # primal: (X^T X + l2 I)^-1 X^T Y
            eigs, q = np.linalg.eigh(x.T @ x)
            return cls(mean, std, eigs, q, q.T @ (x.T @ targets), dual=False)
        eigs, q = np.linalg.eigh(x @ x.T)   # dual: X^T (X X^T + l2 I)^-1 Y
        return cls(mean, std, eigs, x.T @ q, q.T @ targets, dual=True)

    def weights(self, l2: float) -> np.ndarray:
        return (self.lhs / (self.eigs + l2)[None, :]) @ self.rhs

    def predict(self, x: np.ndarray, l2: float) -> np.ndarray:
        return np.argmax(design_matrix(np.asarray(x, np.float64), self.mean, self.std) @ self.weights(l2), axis=1)


def design_matrix(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = (x - mean) / std
    return np.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)


def sample_shots(labels: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """Indices of ``shots`` examples per class (fewer where a class has fewer), drawn for ``seed``
    as the authors' evaluator does: a permutation of each class's indices, first k taken."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(num_classes)]
    return np.concatenate(per_class)


def fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes: int, shots=DEFAULT_SHOTS, seeds: int = 3,
                     l2_regs=(DEFAULT_L2,)) -> dict[tuple[int, float], dict]:
    """{(shots, l2): {"mean", "std", "per_seed"}} of test accuracy."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    present = np.bincount(train_y, minlength=num_classes)
    if (present == 0).any():
        missing = np.flatnonzero(present == 0).tolist()
        raise ValueError(f"few-shot: classes {missing[:10]} have no training example; "
                         "is this the right split and class count?")
    results: dict[tuple[int, float], list[float]] = {}
    for seed in range(seeds):
        for k in shots:
            idx = sample_shots(train_y, k, seed, num_classes)
            solver = RidgeSolver.fit(train_x[idx], train_y[idx], num_classes)
            for l2 in l2_regs:
                acc = float(np.mean(solver.predict(test_x, l2) == test_y))
                results.setdefault((k, l2), []).append(acc)
    return {key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v} for key, v in results.items()}
