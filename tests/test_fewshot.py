"""The closed-form few-shot solver against an independent ridge solution, in both regimes."""
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from pipeline.ridge import BIAS_CONSTANT, RidgeSolver, fewshot_accuracy, sample_shots


def sklearn_weights(x, y, num_classes, l2):
    """scikit-learn ridge on the same standardized design (bias column included, no intercept)."""
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
    design = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    return Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(design, targets).coef_.T


@pytest.mark.parametrize("n,d,regime", [(200, 16, "primal"), (20, 64, "dual")])
@pytest.mark.parametrize("l2", [2.0 ** -2, 2.0 ** 10])
def test_solver_matches_independent_ridge(n, d, regime, l2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
    y = rng.integers(0, 5, size=n)
    solver = RidgeSolver.fit(x, y, 5)
    assert solver.dual == (regime == "dual")
    ours, ref = solver.weights(l2), sklearn_weights(x, y, 5, l2)
    assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))


def test_several_l2_strengths_from_one_decomposition():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 10)), rng.integers(0, 3, size=30)
    solver = RidgeSolver.fit(x, y, 3)
    for l2 in (0.1, 10.0, 1000.0):
        ref = sklearn_weights(x, y, 3, l2)
        assert np.allclose(solver.weights(l2), ref, rtol=1e-6, atol=1e-9)


def test_shots_are_k_per_class_and_seeded():
    labels = np.repeat(np.arange(4), 30)
    idx = sample_shots(labels, 5, seed=0, num_classes=4)
    assert len(idx) == 20 and all(np.sum(labels[idx] == c) == 5 for c in range(4))
    assert np.array_equal(idx, sample_shots(labels, 5, seed=0, num_classes=4))
    assert not np.array_equal(idx, sample_shots(labels, 5, seed=1, num_classes=4))


def test_separable_features_give_high_accuracy_and_noise_gives_chance():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 32)) * 3
    train_y, test_y = np.repeat(np.arange(10), 30), np.repeat(np.arange(10), 20)
    train_x = centers[train_y] + rng.normal(size=(300, 32))
    test_x = centers[test_y] + rng.normal(size=(200, 32))
    good = fewshot_accuracy(train_x, train_y, test_x, test_y, 10, shots=(1, 10), seeds=3)
    assert good[(10, 2.0 ** 10)]["mean"] > 0.9 and len(good[(10, 2.0 ** 10)]["per_seed"]) == 3
    noise = fewshot_accuracy(rng.normal(size=(300, 32)), train_y, rng.normal(size=(200, 32)), test_y, 10,
                             shots=(10,), seeds=3)
    assert noise[(10, 2.0 ** 10)]["mean"] < 0.25


def test_missing_class_is_a_clear_error():
    with pytest.raises(ValueError, match=r"classes \[2\] have no training example"):
        fewshot_accuracy(np.zeros((4, 3)), np.array([0, 1, 0, 1]), np.zeros((2, 3)), np.array([0, 1]), 3)
