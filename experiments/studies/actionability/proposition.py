"""Proposition 3.1's setting, measured: linear softmax models on two Gaussian classes, x0 immutable.

    python -m experiments.studies.actionability.proposition            # ~1 min on a 2-core CPU

The classes are N(∓μ, I) in 2-D; CT is trained with the divergence term only (λ_reg = λ_adv = 0). Three arms share
data, seeds and initial weights: BL, CT with x0 protected (x⁺[0] := x'[0], the paper's masking) and CT with x0
unprotected (still immutable in the search, but x⁺[0] as drawn). The figure is each model's relative sensitivity
|Δθ₀| / |Δθ₁|, Δθ_d = θ_{1,d} − θ_{0,d}; Proposition 3.1 predicts protected < BL and protected < unprotected when
the mutable feature x1 is discriminative. Rows: two geometries (x1 or x0 the more discriminative) × three training
searches (the reproduction's, the library's walk past τ, explain's stop at τ). tests/test_proposition.py holds the
same set-up as known-answer tests.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.data import Dataset, from_arrays
from ctrain.models import make_model
from ctrain.objective import LossWeights
from ctrain.search import WALK_PAST_TAU, SearchConfig
from ctrain.train import TrainConfig, create_train_states, fit_many
from experiments import pipeline

DIVERGENCE_ONLY = LossWeights(clf=1.0, div=0.5, reg=0.0, adv=0.0)
ARMS = {"BL": ("vanilla", True), "protected": ("full", True), "unprotected": ("full", False)}
# The training searches at τ = 0.5: the reproduction's (the reference's raw gradient steps), explain's (L∞ steps of
# 0.1 σ, stop at τ) and the walk past τ (clipped steps, all T of them).
SEARCHES = {"parity": SearchConfig.reference(threshold=0.5), "explain": SearchConfig(threshold=0.5),
            "walk": WALK_PAST_TAU.replace(threshold=0.5)}


def gaussian_classes(mean_gap, n_per_class: int = 600, seed: int = 0) -> Dataset:
    """Returns a Dataset of two N(∓mean_gap, I) classes in 2-D with x0 immutable, in its own units."""
    rng = np.random.default_rng(seed)
    mu = np.asarray(mean_gap, np.float64)
    x = np.concatenate([rng.normal(-mu, 1.0, (n_per_class, 2)), rng.normal(mu, 1.0, (n_per_class, 2))])
    y = np.repeat([0, 1], n_per_class)
    return from_arrays(x, y, immutable=["x0"], standardize=False, seed=0)


def relative_sensitivity(params) -> np.ndarray:
    """Returns (S,) |Δθ₀| / |Δθ₁| of S stacked linear models' params (kernel (S, 2, 2))."""
    (kernel,) = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                 if "kernel" in jax.tree_util.keystr(path)]
    gap = np.abs(np.asarray(kernel)[:, :, 1] - np.asarray(kernel)[:, :, 0])
    return gap[:, 0] / gap[:, 1]


def train_linear_arm(mean_gap, arm: str, search: SearchConfig, seeds=(0, 1, 2), epochs: int = 10
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Returns ((S,) relative sensitivities, (S,) share of matured training counterfactuals in the last epoch)."""
    data = gaussian_classes(mean_gap)
    objective, protect = ARMS[arm]
    apply_fn, _ = make_model("linear", 2, 2, jax.random.key(0))
    inits = [make_model("linear", 2, 2, jax.random.key(s))[1] for s in seeds]
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits), learning_rate=1e-2,
                                 weights=DIVERGENCE_ONLY)
    config = TrainConfig(objective=objective, search=search, epochs=epochs, batch_size=30, n_ce=300, protect=protect)
    states, histories = fit_many(states, data, config, seeds=seeds, constraints=data.constraints(), progress=False)
    matured = np.array([h[-1].get("converged", np.nan) for h in histories], np.float64)
    return relative_sensitivity(states.params), matured


def table(seeds=(0, 1, 2, 3, 4), epochs: int = 10) -> str:
    """Returns the markdown table of relative sensitivities per geometry, search and arm (mean [min, max] over seeds)."""
    lines = ["| Class means ∓ | More discriminative | Training search | BL | CT protected | CT unprotected "
             "| Protected < BL (seeds) | Protected < unprotected (seeds) | Mature, protected |", "|" + "---|" * 9]
    show = lambda v: f"{v.mean():.2f} [{v.min():.2f}, {v.max():.2f}]"
    for gap in ((1.0, 2.0), (2.0, 1.0)):
        bl, _ = train_linear_arm(gap, "BL", SEARCHES["parity"], seeds, epochs)
        for name, search in SEARCHES.items():
            protected, matured = train_linear_arm(gap, "protected", search, seeds, epochs)
            unprotected, _ = train_linear_arm(gap, "unprotected", search, seeds, epochs)
            lines.append(f"| ({gap[0]:g}, {gap[1]:g}) | {'x1' if gap[1] > gap[0] else 'x0'} | {name} | {show(bl)} "
                         f"| {show(protected)} | {show(unprotected)} | {int((protected < bl).sum())}/{len(seeds)} "
                         f"| {int((protected < unprotected).sum())}/{len(seeds)} | {matured.mean():.2f} |")
    lines += ["", f"Relative sensitivity |Δθ₀| / |Δθ₁| of linear models after {epochs} epochs (Adam 1e-2, batch 30, "
              f"300 counterfactuals per epoch, λ_div 0.5, λ_reg = λ_adv = 0), mean [min, max] over {len(seeds)} "
              "seeds; BL trains no counterfactuals, so it has one value per geometry."]
    return "\n".join(lines)


def main(argv=None) -> str:
    """Prints and returns the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help='training seeds (default: %(default)s)')
    parser.add_argument("--epochs", type=int, default=10,
                        help='training epochs (default: %(default)s)')
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or args.epochs < 1:
        parser.error("--seeds must be distinct and --epochs >= 1")
    text = table(tuple(args.seeds), args.epochs)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(pipeline.run_command(main, sys.argv[1:]))
