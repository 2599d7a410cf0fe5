"""Batched, constrained, jit-compiled counterfactual search.

`search_counterfactuals` runs up to T gradient steps for a whole batch at once: per-sample gradients
are `vmap`ped, the loop is a `lax.while_loop` that stops when every sample has converged (or a
`lax.scan` of exactly T steps), converged samples are frozen, and every iterate is projected onto the
actionability constraints. The same pure function serves post-hoc explanation (`explain`) and the
counterfactual-training step, where its outputs are constants (`stop_gradient`).

A generator is a per-sample search objective `loss(logits, x_cf, x, target, step, config, aux)`,
registered under a name; latent-space generators also give `encode`/`decode`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctrain import constraints as cons
from ctrain.data.schema import check_features
from ctrain.energy import energy_from_logits
from ctrain.models import VAE, check_model


# How a search treats one-hot groups and lattice features (`SearchConfig.categorical`; `make_constraints`'s
# grid_origin/grid_step, e.g. integer columns); during the search a group's columns and a lattice feature are
# relaxed, each kept within its bounds, and "the snapped point" below also has its lattice features rounded onto
# feasible lattice points (`constraints.snap`):
#  "relaxed"           the reference's parity: group columns are continuous features kept in their box, never
#                      snapped, so a counterfactual may hold a fractional category;
#  "straight_through"  the model is evaluated, and τ checked, at the snapped point (real categories) while its
#                      gradient moves the relaxed state: returns real categories and keeps converging;
#  "snap_state"        the state itself is snapped after every step and the gradient taken there: the reference's
#                      test-time search (CounterfactualExplanations.jl re-encodes the snapped point as the new
#                      state when the data declares categorical features), where a category changes only when a
#                      single step moves another one past it (step · gradient gap > 1).
CATEGORICAL_MODES = ("relaxed", "straight_through", "snap_state")


# Step rules, in the style of optax's gradient transformations: each maps the gradient g (N, D) in search units to
# the step direction Δ/η, and names the norm its steps are measured in (`clip_by_norm` of that norm is the walk's
# step past τ).
def _norm(g: jax.Array, ord: float) -> jax.Array:
    if ord == 2:
        return jnp.linalg.norm(g, axis=-1, keepdims=True)
    return jnp.max(jnp.abs(g), axis=-1, keepdims=True)


def scale_by_norm(ord: float, floor: float = 1e-12) -> Callable[[jax.Array], jax.Array]:
    """Returns g ↦ g / max(‖g‖_ord, floor) on rows: steps of length 1 in that norm (a zero gradient stays zero)."""
    return lambda g: g / jnp.maximum(_norm(g, ord), floor)


def clip_by_norm(ord: float) -> Callable[[jax.Array], jax.Array]:
    """Returns g ↦ g / max(‖g‖_ord, 1) on rows: g itself where it is shorter than 1, else its direction at length 1."""
    return scale_by_norm(ord, floor=1.0)


# name: (the norm of its steps, gradient -> step direction). Δ = −η·direction(g):
#  "gradient"         g (the reference's SGD step);
#  "normalized"       g/‖g‖₂, L2 length η: a feature's share shrinks like 1/√D (on Adult's 104 columns `explain`
#                     reached τ for 0.36 of a BL model's factuals in T = 30);
#  "normalized_linf"  g/‖g‖∞, the steepest feature moves η, the ε-ball's norm (there 1.00);
#  "clipped"          g/max(‖g‖∞, 1), gradient steps of at most L∞ length η (the walk past τ).
# Figures: `python -m experiments.benchmarks.step_rules`.
_STEP_RULES: dict[str, tuple[float, Callable[[jax.Array], jax.Array]]] = {
    "gradient": (2, lambda g: g),
    "normalized": (2, scale_by_norm(2)),
    "normalized_linf": (math.inf, scale_by_norm(math.inf)),
    "clipped": (math.inf, clip_by_norm(math.inf)),
}
STEP_RULES = tuple(_STEP_RULES)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of the search (hashable, so it can be a static jit argument).

    `SearchConfig()` is the reference's training-time ECCo search (T = 30 SGD steps of size 0.1, λ_cost = 0.001,
    λ_energy = 5 with the decaying schedule, AE ball ε = 0.3 L∞, stop at τ) made units-aware and categorical:
    the fields below say how. The named searches (`PRESETS`, or `SearchConfig.preset(name, **changes)`):
      "training"       `TRAINING_SEARCH`, `TrainConfig`'s default: `SearchConfig()` itself;
      "explain"        `EXPLAIN_SEARCH`, the default of `explain`: the same search as training's;
      "reference"      `REFERENCE_SEARCH`, also `SearchConfig.reference(**changes)`: the reference
                       implementation's search exactly (paper parity), `SearchConfig()` with `PAPER_PARITY`;
      "walk_past_tau"  `WALK_PAST_TAU`: walks on past τ with clipped gradient steps (training's former default).
    """

    generator: str = "ecco"
    max_steps: int = 30
    step_size: float = 0.1
    threshold: float = 0.75
    epsilon: float = 0.3
    lambda_cost: float = 0.001
    lambda_energy: float = 5.0  # weighted by the reference's decaying schedule φ_k (`energy_weight`)
    energy_reg: float = 1e-3
    lambda_conformal: float = 1.0
    conformal_temperature: float = 0.1
    conformal_kappa: float = 1.0
    loop: str = "while"  # "while" stops once all samples converge; "scan" always runs T steps
    # How one-hot groups are searched: one of CATEGORICAL_MODES (see there); "relaxed" is the reference's.
    categorical: str = "straight_through"
    # The units of steps, the ε-ball and the cost: "std" measures them in each feature's training standard deviation
    # (Constraints.scale), so the search walks to τ in the same number of steps whatever the units of the data
    # (README: "Defaults"); "absolute" (the reference) in the data's own units.
    units: str = "std"
    # How a gradient becomes a step: one of STEP_RULES (see there); "gradient" is the reference's.
    step_rule: str = "normalized_linf"
    # When a search stops: "threshold" (reference) once p(t | x') >= τ; "max_steps" after all T steps (CE.jl's
    # MaxIterConvergence): past τ the walk goes on descending the generator's loss with steps clipped to length
    # η (Δ = −η∇/max(‖∇‖, 1), in the step rule's norm, so it settles at a mode), and x' is its last iterate with
    # p >= τ (the final one if it never got there).
    convergence: str = "threshold"
    vae_latent: int = 2  # REVISE only: the VAE architecture whose params come in `aux["vae_params"]`
    vae_hidden: int = 16

    def __post_init__(self):
        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return value

        if not 0.0 < number("threshold") < 1.0:
            raise ValueError(f"threshold τ must be in (0, 1), got {self.threshold}")
        if isinstance(self.max_steps, bool) or int(number("max_steps")) != self.max_steps or self.max_steps < 1:
            raise ValueError(f"max_steps T must be an integer >= 1, got {self.max_steps}")
        if not number("step_size") > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        for name in ("epsilon", "lambda_cost", "lambda_energy", "energy_reg", "lambda_conformal", "conformal_kappa"):
            if number(name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not number("conformal_temperature") > 0:
            raise ValueError(f"conformal_temperature must be > 0, got {self.conformal_temperature}")
        for name in ("vae_latent", "vae_hidden"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, np.integer)) \
                    or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        choices = {"loop": ("while", "scan"), "categorical": CATEGORICAL_MODES, "units": ("absolute", "std"),
                   "step_rule": STEP_RULES, "convergence": ("threshold", "max_steps")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.generator, str) or not self.generator:
            raise ValueError(f"generator must be the name of a registered generator, got {self.generator!r}")

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes) -> "SearchConfig":
        """Returns the named search of `PRESETS` with `changes` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown search preset {name!r}; presets: {sorted(PRESETS)}")
        return PRESETS[name].replace(**changes)

    @classmethod
    def reference(cls, **changes) -> "SearchConfig":
        """Returns the reference implementation's training search (paper parity), with `changes` applied.

        ECCo, T = 30 SGD steps of 0.1 on the raw input gradient, λ_cost 0.001, λ_energy 5, ε = 0.3, all in
        the data's own units, and one-hot groups searched as continuous columns (no snapping).
        """
        return cls.preset("reference", **changes)


# --------------------------------------------------------------------------------------------------
# Presets: the named searches, all in this one place (`SearchConfig.preset(name, **changes)`).

# The settings in which the reference implementation differs from `SearchConfig()`.
PAPER_PARITY = dict(categorical="relaxed", units="absolute", step_rule="gradient", convergence="threshold")
REFERENCE_SEARCH = SearchConfig(**PAPER_PARITY)

# Training's search (`TrainConfig`'s default) is explain's, `SearchConfig()`. Chosen by the training-search study
# (experiments/studies/training_search/README.md) on criteria fixed before it ran: the mechanism engages on every
# data type (>= 0.5 of the training counterfactuals mature, MNIST-5k included) and CT is not worse than BL on any
# synthetic set under either of two explainers (the paper's ECCo protocol and a plain Wachter search). The walk past
# τ failed both (0.37 mature on moons, 0.42 on Adult; IP* −49% under Wachter on linearly separable); paper parity
# failed the first (0.34 on Adult, 0.39 on overlapping). What it gives up: Adult's IP* gain (+12% n.s. against the
# walk's +40%, ECCo). Being `SearchConfig()` itself, a TrainConfig given a bare `SearchConfig(...)` trains with this
# step rule and convergence too (tests/test_search.py holds the identities). Change it with `.replace(...)`.
TRAINING_SEARCH = SearchConfig()
EXPLAIN_SEARCH = TRAINING_SEARCH  # `explain`'s default: training and explanations search alike
# The walk past τ (training's default before the study): every sample takes all T steps, clipped gradient steps of
# at most L∞ length η, and x' is its last iterate with p >= τ.
WALK_PAST_TAU = SearchConfig(convergence="max_steps", step_rule="clipped")

PRESETS: dict[str, SearchConfig] = {"training": TRAINING_SEARCH, "explain": EXPLAIN_SEARCH,
                                    "reference": REFERENCE_SEARCH, "walk_past_tau": WALK_PAST_TAU}

# --------------------------------------------------------------------------------------------------
# Generators

LossFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Generator:
    """A search objective; `encode`/`decode` map between input space and the search state (latent search)."""

    loss: LossFn
    encode: Callable | None = None  # (config, aux, x (D,)) -> state
    decode: Callable | None = None  # (config, aux, state) -> x (D,)

    @property
    def latent(self) -> bool:
        return self.decode is not None


GENERATORS: dict[str, Generator] = {}


def register_generator(name: str, *, encode: Callable | None = None, decode: Callable | None = None):
    """Returns a decorator registering `loss(logits, x_cf, x, target, step, config, aux) -> scalar` under `name`."""
    if (encode is None) != (decode is None):
        raise ValueError("a latent generator needs both encode and decode")

    def wrap(loss: LossFn) -> LossFn:
        GENERATORS[name] = Generator(loss, encode, decode)
        return loss

    return wrap


def get_generator(name: str) -> Generator:
    """Returns the registered Generator called `name`."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; registered: {sorted(GENERATORS)}")
    return GENERATORS[name]


def energy_weight(step: jax.Array, config: SearchConfig) -> jax.Array:
    """Returns φ_k, the energy-penalty weight at step k: a·(b + k + 1)^−0.9 with b = round(T/25), a = b/10.

    The reference's b is 0 for T < 13, which silently switches the penalty off; b is at least 1 here.
    """
    b = max(1, round(config.max_steps / 25))
    return (b / 10) * (b + step + 1.0) ** -0.9


@register_generator("generic")
def generic_loss(logits, x_cf, x, target, step, config, aux):
    """Returns the Wachter objective CE(f(x'), t) + λ_cost·‖x' − x‖₁ (scalar)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    return ce + config.lambda_cost * jnp.sum(jnp.abs(x_cf - x))


@register_generator("ecco")
def ecco_loss(logits, x_cf, x, target, step, config, aux):
    """Returns generic + λ_energy·φ_k·(E(x', t) + reg·E(x', t)²) (scalar), E the target-class energy."""
    e = energy_from_logits(logits, target)
    return (generic_loss(logits, x_cf, x, target, step, config, aux)
            + config.lambda_energy * energy_weight(step, config) * (e + config.energy_reg * e ** 2))


def smooth_set_size(logits: jax.Array, quantile: jax.Array, *, temperature: float, kappa: float) -> jax.Array:
    """Returns max(0, Σ_y σ((q̂ − s_y)/T) − κ) with s_y = 1 − p(y|x): the smooth conformal set size (...,)."""
    scores = 1.0 - jax.nn.softmax(logits, axis=-1)
    return jnp.maximum(0.0, jax.nn.sigmoid((quantile - scores) / temperature).sum(-1) - kappa)


def calibrate_conformal(apply_fn, params, x_cal: jax.Array, y_cal: jax.Array, *, alpha: float = 0.1) -> jax.Array:
    """Returns q̂, the split-conformal (1 − α) quantile of calibration scores 1 − p(y|x) (scalar)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    scores = 1.0 - jnp.take_along_axis(jax.nn.softmax(apply_fn(params, x_cal), -1), y_cal[:, None], -1)[:, 0]
    n = scores.shape[0]
    level = min(1.0, np.ceil((n + 1) * (1 - alpha)) / n)
    return jnp.quantile(scores, level, method="higher")


@register_generator("eccco")
def eccco_loss(logits, x_cf, x, target, step, config, aux):
    """Returns ecco + λ_conformal·smooth conformal set size (scalar); needs aux["conformal_quantile"]."""
    if aux is None or "conformal_quantile" not in aux:
        raise ValueError("the 'eccco' generator needs aux={'conformal_quantile': calibrate_conformal(...)}")
    size = smooth_set_size(logits, aux["conformal_quantile"], temperature=config.conformal_temperature,
                           kappa=config.conformal_kappa)
    return ecco_loss(logits, x_cf, x, target, step, config, aux) + config.lambda_conformal * size


def _vae(config: SearchConfig, width: int):
    return VAE(latent=config.vae_latent, hidden=config.vae_hidden, width=width)


def _revise_encode(config, aux, x):
    return _vae(config, x.shape[-1]).apply(aux["vae_params"], x, method="encode")[0]


def _revise_decode(config, aux, z):
    width = aux["vae_params"]["params"]["decoder_out"]["bias"].shape[-1]
    return _vae(config, width).apply(aux["vae_params"], z, method="decode")


@register_generator("revise", encode=_revise_encode, decode=_revise_decode)
def revise_loss(logits, x_cf, x, target, step, config, aux):
    """Returns the REVISE objective CE(f(g(z)), t) + λ_cost·‖g(z) − x‖₁, with cost in input space (scalar)."""
    return generic_loss(logits, x_cf, x, target, step, config, aux)


# --------------------------------------------------------------------------------------------------
# Search


@flax.struct.dataclass
class SearchResult:
    """Per-sample outputs of the search (leading axis N)."""

    x_cf: jax.Array  # (N, D) counterfactuals, strictly feasible
    converged: jax.Array  # (N,) bool: p(target | x_cf) >= τ, and the logits at x_cf are finite
    steps: jax.Array  # (N,) int32: gradient steps taken before p(target | x') first reached τ (all taken if never)
    x_ae: jax.Array  # (N, D) last iterate with ‖x_t − x‖∞ <= ε (x itself if none)
    p_target: jax.Array  # (N,) p(target | x_cf)


def search_units(config: SearchConfig, constraints: cons.Constraints) -> jax.Array:
    """Returns the (D,) unit of each feature in which the search measures steps, the ε-ball and the cost.

    `units="absolute"` (reference): 1 for every feature, the data's own units. `units="std"`: the feature's
    training standard deviation (`Constraints.scale`), so the search does not depend on the units of the data.
    """
    return constraints.scale if config.units == "std" else jnp.ones_like(constraints.scale)


def within_ball(x_new: jax.Array, x: jax.Array, unit: jax.Array, epsilon: float) -> jax.Array:
    """Returns (n,) bool: whether each row of x_new (n, D) lies in the closed L∞ ball of radius ε around x in `unit`s."""
    # L∞ steps of η = ε/3 land on the surface: the tolerance keeps rounding (which differs between copies of the
    # data in other units) from deciding whether they are inside.
    return jnp.max(jnp.abs(x_new - x) / unit, axis=-1) <= epsilon * (1 + 1e-5)


def check_key(key) -> jax.Array:
    """Returns `key` if it is a JAX PRNG key (typed, or a legacy uint32 (2,) array); raises a TypeError otherwise."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0:
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return key
    raise TypeError(f"key must be a JAX PRNG key such as jax.random.key(0), got {type(key).__name__}"
                    + (f" {np.shape(key)} {getattr(key, 'dtype', '')}" if hasattr(key, "shape") else f" {key!r}"))


def check_model_and_params(apply_fn, params, width: int) -> int:
    """Returns K, the logits the model gives for (N, width) inputs; raises a ValueError naming the parameters'
    shapes (against the model's own, where it can build them) when params are None or do not fit."""
    try:
        return check_model(apply_fn, params, width)
    except ValueError as err:
        if "cannot take inputs of" not in str(err):
            raise
        if params is None:  # a model without parameters may take None; this one failed on it
            raise ValueError(f"the model failed on params=None: pass the model's parameters (e.g. state.params or "
                             f"make_model(...)[1]) ({err})") from None
        got = _param_shapes(params)
        expected = _expected_param_shapes(apply_fn, width)
        if expected is None:
            raise ValueError(f"{err}; or params belong to another model: their shapes are "
                             f"{_describe_shapes(got)}") from None
        differ = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        differ.update({k: (v, None) for k, v in got.items() if k not in expected})
        listed = ", ".join(f"{k} {a} (one for {width} features: {b})" for k, (a, b) in list(differ.items())[:4])
        raise ValueError(f"the model cannot take inputs of {width} features with these params: {listed}"
                         f"{' ...' if len(differ) > 4 else ''}; pass x of the width the params were built for, "
                         "or the params of this model") from None


def _param_shapes(params) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _describe_shapes(shapes: dict[str, tuple], limit: int = 6) -> str:
    items = [f"{k} {v}" for k, v in shapes.items()]
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "") if items else "(no arrays)"


def _expected_param_shapes(apply_fn, width: int) -> dict[str, tuple] | None:
    """Returns the parameter shapes of a Flax model (`apply_fn.module`) built for `width` inputs, else None."""
    module = getattr(apply_fn, "module", None)
    if module is None or not hasattr(module, "init"):
        return None
    try:
        shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, width), jnp.float32))
    except Exception:  # a module that needs other init arguments: say what the params are, not what they should be
        return None
    return _param_shapes(shapes)


def _check_inputs(apply_fn, params, x, target, constraints: cons.Constraints) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D), got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("x has no rows: pass at least one factual")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}; cast it with x.astype(jnp.float32)")
    if target.shape != x.shape[:1]:
        raise ValueError(f"target must have shape ({x.shape[0]},), got {target.shape}")
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    cons.check_width(constraints, x.shape[1])
    num_classes = check_model_and_params(apply_fn, params, x.shape[1])
    if not isinstance(target, jax.core.Tracer):  # values can only be checked outside a trace
        t = np.asarray(target)
        if t.min() < 0 or t.max() >= num_classes:
            raise ValueError(f"target classes must be in [0, {num_classes}) for a model with {num_classes} logits, "
                             f"got values in [{t.min()}, {t.max()}]")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Where a search's state lives, chosen once before its loop: input space itself, or a generator's latent space.

    All functions act on the whole batch, except `point`, which acts on one sample inside the per-sample gradient.
    """

    start: Callable  # x0 (N, D) -> the first state (N, S)
    view: Callable  # state (N, S) -> the counterfactual (N, D) the model is judged at, feasible
    point: Callable  # (state (S,), x (D,)) -> the point (D,) the generator's objective is evaluated at
    gradient_at_view: bool  # the objective is taken at the view (straight-through), not at the state
    logits_at_view: Callable  # (view (N, D), logits of the objective (N, K)) -> the logits at the view (N, K)
    gradient: Callable  # the objective's gradient at the state -> the step's gradient in search units
    move: Callable  # (state, step in search units) -> the next state, kept feasible


def input_space(config: SearchConfig, x: jax.Array, c: cons.Constraints, unit: jax.Array) -> SearchSpace:
    """Returns the identity search space: states are counterfactuals (N, D), kept projected onto the constraints."""
    box = cons.feasible_box(x, c)
    discrete = config.categorical != "relaxed" and cons.has_discrete(c)
    snap_state = discrete and config.categorical == "snap_state"
    keep = (lambda s: cons.snap(s, x, c, box)) if snap_state else (lambda s: s)
    movable = (c.mutability != cons.IMMUTABLE).astype(x.dtype)
    return SearchSpace(
        start=lambda x0: keep(cons.project(x0, x, c, box)),
        # States are kept projected, so only the snap onto categories (and lattices) separates state and view.
        view=(lambda s: cons.snap(s, x, c, box)) if discrete else (lambda s: s),
        point=lambda s, x_i: s,
        gradient_at_view=discrete,
        logits_at_view=lambda view, logits: logits,
        # the gradient in search units (chain rule); fixed features add no length
        gradient=lambda g: g * unit * movable,
        move=lambda s, step: keep(cons.project(s + step * unit, x, c, box)))


def latent_space(gen: Generator, config: SearchConfig, aux: Any, apply_fn, params, x: jax.Array,
                 c: cons.Constraints) -> SearchSpace:
    """Returns a latent search space (REVISE): states are codes, decoded and made feasible to be judged."""
    decode_one = functools.partial(gen.decode, config, aux)
    snap = config.categorical != "relaxed"
    return SearchSpace(
        start=jax.vmap(functools.partial(gen.encode, config, aux)),
        view=lambda s: cons.finalize(jax.vmap(decode_one)(s), x, c, snap_groups=snap),
        # The objective belongs to the counterfactual that is returned, the decoded point made feasible,
        # not to the raw decoding (whose immutable copy may drift and saturate the loss).
        point=lambda s, x_i: cons.project(decode_one(s), x_i, c),
        gradient_at_view=False,
        # τ is checked at the view, the decoding made feasible and snapped, not at the objective's point
        logits_at_view=lambda view, logits: apply_fn(params, view),
        gradient=lambda g: g,
        move=lambda s, step: s + step)


def search_counterfactuals(apply_fn, params, x: jax.Array, target: jax.Array, key: jax.Array,
                           config: SearchConfig = EXPLAIN_SEARCH, constraints: cons.Constraints | None = None,
                           aux: Any = None, return_path: bool = False, x_init: jax.Array | None = None):
    """Returns a SearchResult for factuals x (N, D) and target classes (N,); pure and jit-compatible.

    The outputs carry no gradient: they are constants for whatever loss uses them. With
    `return_path=True` (static) it returns (result, path) where path (T + 1, N, D) holds every
    iterate starting from the initial point (frozen rows repeat), for plots. Every search starts at x (projected)
    and draws no randomness: `key` is checked but unused, kept in the signature that `explain`, training and
    `ctrain.sharding.per_device_search` share.

    `x_init` (N, D), optional: the point each search starts from instead of x (a warm start, e.g. the last
    counterfactual of a persistent chain, `TrainConfig.persistent`). It is projected onto the constraints of x
    (immutable features set to x's, bounds, monotone directions) before the first step; everything else is still
    measured from the factual x: the cost term, the ε-ball of x_AE (x_AE is x itself unless an iterate, the start
    included, lies in that ball) and the constraints. A start that already has p(t) >= τ converges in 0 steps
    and is returned as it is (projected). None (default) starts at x, exactly as without it.
    """
    if not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig, got {type(config).__name__}")
    x = jnp.asarray(x)
    target = jnp.asarray(target)
    c = cons.unconstrained(x.shape[-1]) if constraints is None else constraints
    _check_inputs(apply_fn, params, x, target, c)
    check_key(key)
    gen = get_generator(config.generator)
    if gen.latent and (aux is None or "vae_params" not in aux):
        raise ValueError(f"generator {config.generator!r} searches a VAE latent space: pass aux={{'vae_params': ...}}")
    x0 = x if x_init is None else _check_x_init(x_init, x)
    params = jax.lax.stop_gradient(params)
    unit = search_units(config, c)
    space = latent_space(gen, config, aux, apply_fn, params, x, c) if gen.latent else input_space(config, x, c, unit)

    def sample_objective(s, x_i, t_i, step):
        x_cf = space.point(s, x_i)
        logits = apply_fn(params, x_cf[None])[0]
        if config.units != "absolute":
            # Generators see x' and x in search units, so their distance terms are measured in them too. x' is
            # written as x plus its scaled change, so an unchanged feature has exactly zero distance in any units.
            change = (x_cf - x_i) / unit
            x_i = x_i / unit
            x_cf = x_i + change
        return gen.loss(logits, x_cf, x_i, t_i, step, config, aux), logits

    grad_fn = jax.vmap(jax.value_and_grad(sample_objective, has_aux=True), in_axes=(0, 0, 0, None))
    stop_at_threshold = config.convergence == "threshold"
    step_norm, direction = _STEP_RULES[config.step_rule]

    def check(view, logits, reached, x_ae, x_mature):
        p = jnp.take_along_axis(jax.nn.softmax(logits, -1), target[:, None], -1)[:, 0]
        mature = p >= config.threshold
        in_ball = within_ball(view, x, unit, config.epsilon)
        if not stop_at_threshold:  # only a walk past τ needs its last mature iterate
            x_mature = jnp.where(mature[:, None], view, x_mature)
        return reached | mature, jnp.where(in_ball[:, None], view, x_ae), x_mature, p

    def step_fn(carry):
        k, s, view, reached, steps, x_ae, x_mature, _ = carry
        (_, logits), g = grad_fn(view if space.gradient_at_view else s, x, target, k)
        reached, x_ae, x_mature, p = check(view, space.logits_at_view(view, logits), reached, x_ae, x_mature)
        g = space.gradient(jnp.where(jnp.isfinite(g), g, 0.0))
        step = direction(g)
        if not stop_at_threshold:
            # Past τ the walk settles at a mode of its loss: the step shrinks with g there, where a fixed-length
            # step would circle the mode and turn rounding noise into steps of η. In std units g is in loss units
            # per standard deviation, so the clip at norm 1 is unit-free.
            step = jnp.where(reached[:, None], clip_by_norm(step_norm)(g), step)
        s_new = space.move(s, -config.step_size * step)  # plain SGD, per sample
        if stop_at_threshold:  # converged samples are frozen
            s_new = jnp.where(reached[:, None], s, s_new)
        steps = steps + (~reached).astype(jnp.int32)  # the steps it took to reach τ, whether or not it goes on
        return k + 1, s_new, space.view(s_new), reached, steps, x_ae, x_mature, p

    n = x.shape[0]
    s0 = space.start(x0)
    carry = (jnp.zeros((), jnp.int32), s0, space.view(s0), jnp.zeros(n, bool), jnp.zeros(n, jnp.int32), x, x,
             jnp.zeros(n, x.dtype))
    carry, path = _run_loop(step_fn, carry, config, stop_at_threshold, return_path)
    _, _, view, reached, steps, x_ae, x_mature, _ = carry
    logits = apply_fn(params, view)
    reached, x_ae, x_mature, p = check(view, logits, reached, x_ae, x_mature)
    if not stop_at_threshold:
        # Past τ the walk may drift back below it (the generator's loss is not p): x' is its last iterate at or
        # above τ, the deepest mature point of the walk, as x_AE is the last iterate inside the ball.
        view = jnp.where(reached[:, None], x_mature, view)
        logits = apply_fn(params, view)
        p = jnp.take_along_axis(jax.nn.softmax(logits, -1), target[:, None], -1)[:, 0]
    # NaN/inf logits name no class, whatever p or an earlier iterate said: such an x' has not converged.
    reached = reached & jnp.all(jnp.isfinite(logits), axis=-1)
    result = jax.lax.stop_gradient(SearchResult(x_cf=view, converged=reached, steps=steps, x_ae=x_ae, p_target=p))
    return (result, jax.lax.stop_gradient(path)) if return_path else result


def _check_x_init(x_init, x: jax.Array) -> jax.Array:
    x_init = jnp.asarray(x_init)
    if x_init.shape != x.shape or not jnp.issubdtype(x_init.dtype, jnp.floating):
        raise ValueError(f"x_init must be a floating (N, D) array like x {x.shape}, got {x_init.shape} {x_init.dtype}")
    return x_init.astype(x.dtype)


def _run_loop(step_fn, carry, config: SearchConfig, stop_at_threshold: bool, return_path: bool):
    """Returns (final carry, path (T + 1, N, D) or None): a while loop that stops once every row has reached τ,
    or a scan of exactly T steps (`loop="scan"`, or when the path is asked for)."""
    if config.loop == "while" and not return_path:
        def running(cr):
            return (cr[0] < config.max_steps) & ~(stop_at_threshold & jnp.all(cr[3]))
        return jax.lax.while_loop(running, step_fn, carry), None

    def scan_step(cr, _):
        cr = step_fn(cr)
        return cr, (cr[2] if return_path else None)

    start = carry[2]
    carry, path = jax.lax.scan(scan_step, carry, None, length=config.max_steps)
    return carry, (jnp.concatenate([start[None], path]) if return_path else None)


# --------------------------------------------------------------------------------------------------
# Post-hoc API

# The jitted search shared by `explain`, plots and tests, so they reuse one compilation cache.
_search_jit = jax.jit(search_counterfactuals, static_argnames=("apply_fn", "config", "return_path"))


def search_counterfactuals_jit(apply_fn, params, x, target, key, config: SearchConfig = EXPLAIN_SEARCH,
                               constraints: cons.Constraints | None = None, aux: Any = None,
                               return_path: bool = False):
    """Returns `search_counterfactuals(...)` compiled once per (apply_fn, config, shapes), after checking the inputs.

    Target values can only be checked outside the compiled program, so they are checked here first.
    """
    x, target = jnp.asarray(x), jnp.asarray(target)
    _check_inputs(apply_fn, params, x, target, cons.unconstrained(x.shape[-1]) if constraints is None
                  else constraints)
    return _search_jit(apply_fn, params, x, target, check_key(key), config, constraints, aux, return_path)


def sample_targets(key: jax.Array, predicted: jax.Array, num_classes: int) -> jax.Array:
    """Returns targets (N,) drawn uniformly from the classes other than `predicted` (N,)."""
    shift = jax.random.randint(key, predicted.shape, 1, num_classes)
    return ((predicted + shift) % num_classes).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Counterfactuals for N factuals as NumPy arrays, with `summary()` statistics, `describe()` text and
    `to_frame(dataset)`, the factuals beside their counterfactuals in the dataset's own columns.

    Every array is in the units of the x that `explain` was given, the model's input units: for a Dataset from a
    loader, `from_arrays` or `from_dataframe`, continuous features in training standard deviations and one-hot
    columns 0/1.
    """

    x: np.ndarray  # (N, D)
    x_cf: np.ndarray  # (N, D)
    target: np.ndarray  # (N,)
    predicted: np.ndarray  # (N,) model's class for x
    converged: np.ndarray  # (N,) p(target | x_cf) >= τ, logits at x_cf finite
    valid: np.ndarray  # (N,) argmax f(x_cf) == target, logits at x_cf finite
    steps: np.ndarray  # (N,)
    x_ae: np.ndarray  # (N, D)
    p_target: np.ndarray  # (N,)

    def cost(self) -> np.ndarray:
        """Returns the (N,) L1 distances ‖x' − x‖₁ in the model's input units (a changed category adds 2)."""
        return np.abs(np.asarray(self.x_cf, np.float64) - self.x).sum(-1)

    def summary(self) -> dict[str, float]:
        """Returns shares converged / valid, mean steps and mean L1 cost as plain floats (`describe()` says what
        each means)."""
        # A NaN p(target) means NaN logits at x_cf, which no valid or converged counterfactual has.
        finite = np.isfinite(self.p_target)
        return {"n": int(len(self.x)), "converged": float((self.converged & finite).mean()),
                "valid": float((self.valid & finite).mean()),
                "mean_steps": float(self.steps.mean()),
                "mean_cost_l1": float(np.abs(self.x_cf - self.x).sum(-1).mean())}

    def describe(self) -> str:
        """Returns `summary()` as text, one line per figure, each saying what it measures and in which units."""
        s = self.summary()
        return "\n".join([
            f"{s['n']} counterfactuals",
            f"  valid      {s['valid']:.2f}  share whose predicted class (argmax of the logits) is the target",
            f"  converged  {s['converged']:.2f}  share that reached p(target | x') >= tau, the search's threshold "
            "(SearchConfig.threshold, 0.75 by default); stricter than valid, which needs only the largest p",
            f"  mean steps {s['mean_steps']:.1f}  gradient steps the search took (at most SearchConfig.max_steps)",
            f"  mean cost  {s['mean_cost_l1']:.3g}  L1 distance |x' - x|_1 in the model's input units: for a ctrain "
            "Dataset, training standard deviations of each continuous feature, and 2 for each changed category",
        ])

    def to_frame(self, dataset, *, unchanged: str | None = "-"):
        """Returns a pandas DataFrame of 2N rows, each factual (in `dataset`'s original columns, units and
        categories, `dataset.decode`) followed by its counterfactual, indexed by (row, "factual" | "counterfactual").

        The target column (the frame's target name, else "class") holds the predicted class of the factual and
        the target class of the counterfactual; "valid" (the model gives x' the target class), "p_target" and
        "cost" (`cost()`, the model's input units) are filled on counterfactual rows. A counterfactual cell whose
        decoded value equals the factual's shows `unchanged` ("-", as DiCE's visualize_as_dataframe does); None
        keeps the values and their dtypes.
        """
        import pandas as pd  # an optional extra (ctrain[pandas]), needed only for frames
        if np.shape(self.x)[-1] != dataset.num_features:
            raise ValueError(f"the explanation has {np.shape(self.x)[-1]} features but dataset {dataset.name!r} "
                             f"has {dataset.num_features}")
        n = len(self.x)
        factual, counterfactual = dataset.decode(self.x), dataset.decode(self.x_cf)
        if unchanged is not None:
            same = factual.eq(counterfactual)
            counterfactual = counterfactual.astype(object).mask(same, unchanged)
        names = dataset.class_names or tuple(str(k) for k in range(dataset.num_classes))
        label = getattr(dataset.table, "target", None) or "class"
        factual[label] = [names[k] for k in np.asarray(self.predicted)]
        counterfactual[label] = [names[k] for k in np.asarray(self.target)]
        factual["valid"] = pd.array([None] * n, dtype="boolean")
        counterfactual["valid"] = pd.array(np.asarray(self.valid, bool), dtype="boolean")
        factual["p_target"], counterfactual["p_target"] = np.nan, np.asarray(self.p_target, np.float64)
        factual["cost"], counterfactual["cost"] = np.nan, self.cost()
        both = pd.concat([factual, counterfactual], keys=["factual", "counterfactual"], names=["kind", "row"])
        return both.swaplevel().reindex(pd.MultiIndex.from_product([range(n), ["factual", "counterfactual"]],
                                                                   names=["row", "kind"]))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def predict(apply_fn, params, x, *, chunk_size: int = 1024) -> np.ndarray:
    """Returns argmax f(x) (N,) computed in fixed-size chunks."""
    return np.concatenate([np.asarray(logits).argmax(-1) for logits in _chunked_logits(apply_fn, params, x, chunk_size)])


def _chunked_logits(apply_fn, params, x, chunk_size):
    fn = jax.jit(apply_fn)
    x = np.asarray(x, np.float32)
    for lo, hi in _chunks(len(x), chunk_size):
        yield fn(params, _pad(x[lo:hi], chunk_size))[: hi - lo]


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    # Padding by repeating the first row keeps every chunk the same shape, so the search compiles once.
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])


def _check_targets(target, n: int, num_classes: int) -> np.ndarray:
    """Returns target as int32 (n,) from a scalar or (n,) integer array; raises on any other shape, dtype or range."""
    t = np.asarray(target)
    if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}"
                        + (" (values are not rounded or parsed)" if t.dtype.kind in "fUSO" else ""))
    if t.ndim == 0:
        t = np.full(n, t)
    if t.shape != (n,):
        raise ValueError(f"target must be one class for all rows or shape ({n},) (one per row of x), got {t.shape}")
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"target classes must be in [0, {num_classes}), got values in [{t.min()}, {t.max()}]")
    return t.astype(np.int32)


def explain(apply_fn, params, x, target=None, *, key: jax.Array, config: SearchConfig = EXPLAIN_SEARCH,
            constraints: cons.Constraints | None = None, chunk_size: int = 256, allow_same_class: bool = False,
            aux: Any = None) -> Explanation:
    """Returns an Explanation for factuals x (N, D): targets random ≠ predicted class unless given (N,) or scalar."""
    x = check_features(x, what="x")
    n, width = x.shape
    if n == 0:
        raise ValueError("x has no rows: pass at least one factual")
    key = check_key(key)
    constraints = cons.unconstrained(width) if constraints is None else constraints
    cons.check_width(constraints, width)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    num_classes = check_model_and_params(apply_fn, params, width)
    logits = np.concatenate([np.asarray(lg) for lg in _chunked_logits(apply_fn, params, x, chunk_size)])
    predicted = logits.argmax(-1)
    key, tkey = jax.random.split(key)
    if target is None:
        target = np.asarray(sample_targets(tkey, jnp.asarray(predicted), num_classes))
    else:
        target = _check_targets(target, n, num_classes)
        if not allow_same_class and np.any(target == predicted):
            raise ValueError(f"{int(np.sum(target == predicted))} targets equal the model's predicted class; "
                             "pass allow_same_class=True to search anyway")
    size = min(chunk_size, n)
    parts = []
    for i, (lo, hi) in enumerate(_chunks(n, size)):
        res = search_counterfactuals_jit(apply_fn, params, _pad(x[lo:hi], size), _pad(target[lo:hi], size),
                          jax.random.fold_in(key, i), config, constraints, aux)
        parts.append(jax.tree.map(lambda a: np.asarray(a)[: hi - lo], res))
    res = jax.tree.map(lambda *a: np.concatenate(a), *parts)
    logits_cf = np.concatenate([np.asarray(lg) for lg in _chunked_logits(apply_fn, params, res.x_cf, chunk_size)])
    # argmax of NaN logits is an arbitrary class (the first NaN), which may happen to be the target.
    finite = np.all(np.isfinite(logits_cf), axis=-1)
    valid = finite & (logits_cf.argmax(-1) == target)
    converged = np.asarray(res.converged) & finite
    if not finite.all():
        warnings.warn(f"explain: {int((~finite).sum())} of {n} counterfactuals have NaN/inf logits; they count as "
                      "neither valid nor converged", RuntimeWarning, stacklevel=2)
    return Explanation(x=x, x_cf=res.x_cf, target=target, predicted=predicted, converged=converged,
                       valid=valid, steps=res.steps, x_ae=res.x_ae, p_target=res.p_target)
