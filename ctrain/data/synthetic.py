"""The paper's four 2-D synthetic datasets, generated in-package (no sklearn, no download).

Parameters follow the reference implementation: blobs with std 0.5 (linearly separable) and 2.0
(overlapping), circles with noise 0.15 and factor 0.01, moons with noise 0.1; 3000 train, 600
validation and 600 test samples. Blob centres are fixed at ±(2, 2) rather than drawn at random, so
that the overlapping set has the reference's ≈0.92 Bayes accuracy for every seed.
"""
from __future__ import annotations

import numpy as np

from ctrain.data.dataset import Dataset, prepare, split_indices
from ctrain.data.schema import Schema

N_TRAIN, N_VAL, N_TEST = 3000, 600, 600


def make_blobs(n: int, *, std: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x (n, 2), y (n,)) from two isotropic Gaussians centred at -(2, 2) and +(2, 2)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    centres = np.array([[-2.0, -2.0], [2.0, 2.0]])
    return centres[y] + std * rng.standard_normal((n, 2)), y


def make_circles(n: int, *, noise: float = 0.15, factor: float = 0.01, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x (n, 2), y (n,)): an outer unit circle (class 0) and an inner one scaled by `factor` (class 1)."""
    rng = np.random.default_rng(seed)
    n_out = n // 2
    t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    t_in = np.linspace(0, 2 * np.pi, n - n_out, endpoint=False)
    x = np.concatenate([np.c_[np.cos(t_out), np.sin(t_out)], factor * np.c_[np.cos(t_in), np.sin(t_in)]])
    y = np.r_[np.zeros(n_out, int), np.ones(n - n_out, int)]
    return x + noise * rng.standard_normal(x.shape), y


def make_moons(n: int, *, noise: float = 0.1, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x (n, 2), y (n,)): two interleaving half circles."""
    rng = np.random.default_rng(seed)
    n_out = n // 2
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n - n_out)
    x = np.concatenate([np.c_[np.cos(t_out), np.sin(t_out)], np.c_[1 - np.cos(t_in), 0.5 - np.sin(t_in)]])
    y = np.r_[np.zeros(n_out, int), np.ones(n - n_out, int)]
    return x + noise * rng.standard_normal(x.shape), y


GENERATORS = {
    "linearly_separable": lambda n, seed: make_blobs(n, std=0.5, seed=seed),
    "overlapping": lambda n, seed: make_blobs(n, std=2.0, seed=seed),
    "circles": lambda n, seed: make_circles(n, noise=0.15, factor=0.01, seed=seed),
    "moons": lambda n, seed: make_moons(n, noise=0.1, seed=seed),
}


def load_synthetic(name: str, *, seed: int = 42, n_train: int = N_TRAIN, n_val: int = N_VAL,
                   n_test: int = N_TEST, standardize: bool = False, n_std: float = 2.0) -> Dataset:
    """Returns one synthetic Dataset (2 features x0, x1; 2 classes), identical for identical arguments."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic dataset {name!r}; choose from {sorted(GENERATORS)}")
    if min(n_train, n_test) < 2 or n_val < 0:
        raise ValueError(f"need n_train, n_test >= 2 and n_val >= 0, got {n_train}, {n_val}, {n_test}")
    n = n_train + n_val + n_test
    x, y = GENERATORS[name](n, seed)
    val_idx, test_idx, train_idx = split_indices(y, [n_val / n, n_test / n], seed=seed)
    return prepare(name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], x_val=x[val_idx],
                   y_val=y[val_idx], schema=Schema.default(2), num_classes=2, standardize=standardize,
                   n_std=n_std, class_names=("0", "1"))
