"""The search's outputs on stored configurations equal those of main at d535aaf (before the faster search).

tests/data/search_reference.npz holds, for every case in `CASES`, the SearchResult fields (and the path where
asked) that `search_counterfactuals` returned on main at d535aaf, written from that commit by
`PYTHONPATH=. python tests/test_search_equality.py --write`. Each case is small (8 factuals) and deterministic:
a self-contained MLP with weights drawn from a fixed key, factuals whose one-hot groups hold real categories, and every kind of constraint.
The counterfactuals must be bit-identical: the faster search runs the same floating-point operations.
"""
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain.models import VAE
from ctrain.search import PRESETS, SearchConfig, search_counterfactuals

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "search_reference.npz")
FIELDS = ("x_cf", "converged", "steps", "x_ae", "p_target")
N, HIDDEN, K = 8, 16, 3


def mlp(params, x):
    """Returns (N, K) logits of a one-hidden-layer tanh MLP."""
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def mlp_params(width: int, seed: int = 0) -> dict:
    """Returns the MLP's weights for `width` inputs, drawn from a fixed key (scaled so logits are O(1))."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {"w1": jax.random.normal(k1, (width, HIDDEN)) * (2.0 / np.sqrt(width)),
            "b1": jax.random.normal(k2, (HIDDEN,)) * 0.1,
            "w2": jax.random.normal(k3, (HIDDEN, K)), "b2": jnp.zeros(K)}


def tabular_constraints(width: int, group_sizes: tuple[int, ...]) -> cons.Constraints:
    """Returns an Adult-like set: 6 numeric columns (immutable, increase, decrease, bounded, 2 free), then groups.

    The first group is immutable (as race or gender), the others free; numeric scales differ from 1.
    """
    rng = np.random.default_rng(1)
    groups, start = [], 6
    for size in group_sizes:
        groups.append(list(range(start, start + size)))
        start += size
    assert start == width
    lower = np.full(width, -np.inf, np.float32)
    upper = np.full(width, np.inf, np.float32)
    lower[3], upper[3] = -0.5, 0.5
    lower[6:], upper[6:] = 0.0, 1.0
    scale = np.ones(width, np.float32)
    scale[:6] = rng.uniform(0.5, 2.0, 6)
    return cons.make_constraints(width, immutable=[0] + groups[0], increase=[1], decrease=[2], lower=lower,
                                 upper=upper, groups=groups, scale=scale)


def tabular_factuals(width: int, group_sizes: tuple[int, ...], seed: int = 2) -> np.ndarray:
    """Returns (N, width) factuals: normal numeric columns, one real category per group."""
    rng = np.random.default_rng(seed)
    x = np.zeros((N, width), np.float32)
    x[:, :6] = rng.normal(size=(N, 6))
    x[:, 3] = np.clip(x[:, 3], -0.5, 0.5)
    start = 6
    for size in group_sizes:
        x[np.arange(N), start + rng.integers(0, size, N)] = 1.0
        start += size
    return x


SMALL = (2, 3, 5, 8)  # 24 columns
ADULT = (2, 2, 5, 7, 9, 15, 16, 42)  # 104 columns, Adult's width, with group sizes of its kind


def setting(groups=SMALL, seed: int = 0):
    """Returns (params, x, target, constraints) of one stored setting; targets are ≠ the predicted class."""
    width = 6 + sum(groups)
    params = mlp_params(width, seed)
    x = jnp.asarray(tabular_factuals(width, groups))
    target = ((jnp.argmax(mlp(params, x), -1) + 1 + jnp.arange(N) % 2) % K).astype(jnp.int32)
    return params, x, target, tabular_constraints(width, groups)


def vae_params(width: int, config: SearchConfig):
    """Returns VAE params for `width` columns initialised from a fixed key (REVISE's latent space)."""
    module = VAE(latent=config.vae_latent, hidden=config.vae_hidden, width=width)
    return module.init(jax.random.key(5), jnp.zeros((1, width)), jax.random.key(6))


def _eccco_aux(config, width):
    return {"conformal_quantile": jnp.float32(0.6)}


def _revise_aux(config, width):
    return {"vae_params": vae_params(width, config)}


D = SearchConfig()
# name: (config, groups, constrained, aux builder, extra keyword arguments by builder)
CASES = {
    **{f"preset_{name}": (cfg, SMALL, True, None, None) for name, cfg in PRESETS.items() if name != "explain"},
    "generic": (D.replace(generator="generic"), SMALL, True, None, None),
    "eccco": (D.replace(generator="eccco"), SMALL, True, _eccco_aux, None),
    "revise": (D.replace(generator="revise", step_size=0.3), SMALL, True, _revise_aux, None),
    "revise_relaxed": (D.replace(generator="revise", categorical="relaxed"), SMALL, True, _revise_aux, None),
    "revise_scan": (D.replace(generator="revise", loop="scan", max_steps=12), SMALL, True, _revise_aux, None),
    "relaxed": (D.replace(categorical="relaxed"), SMALL, True, None, None),
    "snap_state": (D.replace(categorical="snap_state", step_size=0.6), SMALL, True, None, None),
    "snap_state_scan": (D.replace(categorical="snap_state", step_size=0.6, loop="scan"), SMALL, True, None, None),
    "gradient": (D.replace(step_rule="gradient"), SMALL, True, None, None),
    "normalized": (D.replace(step_rule="normalized"), SMALL, True, None, None),
    "clipped": (D.replace(step_rule="clipped"), SMALL, True, None, None),
    "absolute": (D.replace(units="absolute"), SMALL, True, None, None),
    "scan": (D.replace(loop="scan"), SMALL, True, None, None),
    "walk_scan": (PRESETS["walk_past_tau"].replace(loop="scan"), SMALL, True, None, None),
    "unconverged": (D.replace(threshold=0.995, max_steps=12), SMALL, True, None, None),
    "unconstrained": (D, SMALL, False, None, None),
    "adult_width": (D, ADULT, True, None, None),
    "adult_width_relaxed": (D.replace(categorical="relaxed"), ADULT, True, None, None),
    "adult_width_snap_state": (D.replace(categorical="snap_state", step_size=0.6), ADULT, True, None, None),
    "return_path": (D.replace(max_steps=6), SMALL, True, None, "return_path"),
    "x_init": (D, SMALL, True, None, "x_init"),
}


# The cases every run compares (each compiles its own search, ~2 s on 2 cores); CTRAIN_ALL_SEARCH_CASES=1 compares
# all of them (about a minute), as a change to the search should before it is merged.
CORE = ("preset_training", "preset_reference", "preset_walk_past_tau", "eccco", "revise", "snap_state",
        "normalized", "unconverged", "adult_width", "return_path", "x_init")
RUN = sorted(CASES) if os.environ.get("CTRAIN_ALL_SEARCH_CASES") == "1" else CORE


def run_case(name: str) -> dict[str, np.ndarray]:
    """Returns the search's outputs for case `name` as NumPy arrays (plus "path" where the case returns one)."""
    config, groups, constrained, aux_of, extra = CASES[name]
    params, x, target, constraints = setting(groups)
    aux = aux_of(config, x.shape[1]) if aux_of else None
    kwargs = {}
    if extra == "return_path":
        kwargs["return_path"] = True
    if extra == "x_init":
        kwargs["x_init"] = x + 0.3 * jax.random.normal(jax.random.key(7), x.shape)
    search = jax.jit(search_counterfactuals, static_argnames=("apply_fn", "config", "return_path"))
    out = search(mlp, params, x, target, jax.random.key(0), config, constraints if constrained else None, aux,
                 **kwargs)
    res, path = out if extra == "return_path" else (out, None)
    arrays = {f: np.asarray(getattr(res, f)) for f in FIELDS}
    if path is not None:
        arrays["path"] = np.asarray(path)
    return arrays


def write_reference(path: str = REFERENCE) -> None:
    """Writes every case's outputs to `path` (.npz) atomically: a temp file in the same folder, fsync, rename."""
    arrays = {f"{name}/{k}": v for name in CASES for k, v in run_case(name).items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as stored:
        return {k: stored[k] for k in stored.files}


def test_reference_covers_every_case(reference):
    assert {k.split("/")[0] for k in reference} == set(CASES)


@pytest.mark.parametrize("name", RUN)
def test_search_equals_main_bit_for_bit(reference, name):
    got = run_case(name)
    assert set(got) == {k.split("/")[1] for k in reference if k.startswith(name + "/")}
    for field, value in got.items():
        np.testing.assert_array_equal(value, reference[f"{name}/{field}"], err_msg=f"{name}: {field}")


def test_stored_cases_exercise_what_they_name(reference):
    """The reference is not degenerate: counterfactuals moved, some rows did not converge, groups were searched."""
    assert reference["unconverged/converged"].mean() < 1.0
    assert reference["preset_training/converged"].mean() > 0.5
    for name in ("preset_training", "adult_width", "snap_state", "preset_reference", "revise"):
        assert np.any(reference[f"{name}/x_cf"] != setting(CASES[name][1])[1]), name
    # relaxed keeps fractional categories somewhere; the snapping modes never do
    relaxed = reference["preset_reference/x_cf"][:, 6:]
    assert np.any((relaxed > 0) & (relaxed < 1))
    for name in ("adult_width", "snap_state"):
        assert set(np.unique(reference[f"{name}/x_cf"][:, 6:])) <= {0.0, 1.0}


if __name__ == "__main__" and "--write" in sys.argv:
    write_reference()
    print(f"wrote {REFERENCE}")


def _gathers(groups):
    params, x, target, constraints = setting(groups)
    hlo = jax.jit(search_counterfactuals, static_argnames=("apply_fn", "config")).lower(
        mlp, params, x, target, jax.random.key(0), D, constraints).as_text()
    return hlo.count("stablehlo.gather")


def test_one_hot_groups_add_no_gathers_to_the_compiled_search():
    """The groups are static: snapping them slices columns (a traced gather ran element by element on XLA CPU)."""
    with_groups = _gathers(ADULT)
    params, x, target, _ = setting(ADULT)
    plain = jax.jit(search_counterfactuals, static_argnames=("apply_fn", "config")).lower(
        mlp, params, x, target, jax.random.key(0), D, cons.make_constraints(x.shape[1])).as_text().count("stablehlo.gather")
    assert with_groups == plain


def test_groups_in_any_column_order_snap_as_the_padded_index_does():
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(5, 7)), jnp.float32)
    for groups in (((0, 2, 5), (1, 3)), ((4, 5, 6), (0, 1)), ((2, 3),)):
        index = np.full((len(groups), 3), -1, np.int32)
        for i, g in enumerate(groups):
            index[i, :len(g)] = g
        np.testing.assert_array_equal(cons.snap_groups(x, groups), cons.snap_groups(x, jnp.asarray(index)))
