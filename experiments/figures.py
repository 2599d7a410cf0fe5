"""The paper's figures that need their own computation: Figure 1 (linear models) and Figure 3 (IG maps).

    python -m experiments.reproduce --datasets linearly_separable     # writes Figure 1 beside the table

Figure 1 (`experiments.pipeline.train_figure1` trains, `linear_sensitivities` scores): linear classifiers on a 2-D synthetic set, four panels as in the paper: (a) BL, all
features mutable; (b) CT, all mutable; (c) BL with the protected feature immutable at test time; (d) CT
trained with the feature protected and immutable at test time. Each panel draws the decision boundary
(green), the data and the test-time counterfactual paths of the same factuals (all searched towards class
1). The figure's numbers (`linear_sensitivities`) are each model's share of its decision-function gradient
on each feature: Proposition 3.1 predicts that protection lowers the protected feature's share.

Figure 3 (`ig_maps_figure`): per class, the mean integrated gradients over the test images of that class
(target: the true class; baselines drawn from U(−1, 1), the reference's "random" baseline), min–max
normalised to [0, 1] as in the reference's `integrated_gradients_mnist.jl`; one row per model, the
protected pixel rows outlined.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ctrain import metrics
from ctrain.data import Dataset
from experiments import plots


@functools.partial(jax.jit, static_argnames=("apply_fn", "n_steps"))
def _integrated_gradients(apply_fn, params, x, target, baseline, *, n_steps):
    return metrics.integrated_gradients(apply_fn, params, x, target, baseline, n_steps=n_steps)


def class_ig_maps(apply_fn, params, x, y, *, num_classes: int, key: jax.Array, n_steps: int = 50,
                  chunk_size: int = 500) -> np.ndarray:
    """Returns (K, D) per-class mean IG of the class's rows of x (N, D) towards their label y (N,), min–max in [0, 1].

    Every row gets its own baseline from U(−1, 1); a class without rows gets a map of zeros.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    baseline = np.asarray(jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0))
    ig = np.concatenate([np.asarray(_integrated_gradients(apply_fn, params, x[i:i + chunk_size],
                                                          jnp.asarray(y[i:i + chunk_size], jnp.int32),
                                                          baseline[i:i + chunk_size], n_steps=n_steps))
                         for i in range(0, len(x), chunk_size)])
    maps = np.zeros((num_classes, x.shape[1]), np.float64)
    for c in range(num_classes):
        rows = y == c
        if rows.any():
            mean = ig[rows].mean(0)
            spread = mean.max() - mean.min()
            maps[c] = (mean - mean.min()) / spread if spread > 0 else 0.0
    return maps


def ig_maps_figure(path, data: Dataset, models: dict[str, tuple], *, protected_mask, key: jax.Array,
                   n_steps: int = 50, title: str = "") -> str:
    """Returns `path` after saving Figure 3: per-class IG maps of each model on the test images of `data`."""
    if not data.image_shape:
        raise ValueError(f"ig_maps_figure needs image data; {data.name!r} has no image_shape")
    maps = {name: class_ig_maps(apply_fn, params, data.x_test, data.y_test, num_classes=data.num_classes, key=key,
                                n_steps=n_steps)
            for name, (apply_fn, params) in models.items()}
    return plots.plot_ig_maps(path, maps, image_shape=data.image_shape, protected_mask=protected_mask,
                              class_names=data.class_names or None, title=title)


def linear_sensitivities(apply_fn, params, num_features: int) -> list[float]:
    """Returns each feature's share of |∇ₓ(logit₁ − logit₀)| of a binary model at 0 ((D,) list, sums to 1).

    For a linear model the gradient is the same everywhere: the shares say how strongly the decision
    depends on each feature, which is what Proposition 3.1 is about.
    """
    grad = jax.grad(lambda x: (apply_fn(params, x[None])[0, 1] - apply_fn(params, x[None])[0, 0]))(
        jnp.zeros((num_features,), jnp.float32))
    magnitude = np.abs(np.asarray(grad, np.float64))
    return (magnitude / magnitude.sum()).tolist() if magnitude.sum() > 0 else [0.0] * num_features


