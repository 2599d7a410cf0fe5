"""Units-aware CT: the search, the training and the protocol do not depend on the units of the features."""
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain.data import load_dataset
from ctrain.evaluate import PROTOCOL_SEARCH, ProtocolConfig, evaluate_explainability
from ctrain.models import make_model
from ctrain.search import WALK_PAST_TAU, SearchConfig, search_counterfactuals
from ctrain.train import TrainConfig, create_train_state, create_train_states, fit, fit_many
from experiments.configs import get_config, override

UNITS = SearchConfig(threshold=0.75, units="std", step_rule="normalized", step_size=0.1, max_steps=40)


@pytest.fixture(scope="module")
def circles():
    return load_dataset("circles").subsample(300, seed=0)


def _model(data, seed=0):
    return make_model("mlp", data.num_features, data.num_classes, jax.random.key(seed),
                      input_stats=data.input_stats())


def test_a_rescaled_copy_is_the_same_data_in_other_units(circles):
    big = circles.affine(10.0, 3.0)
    np.testing.assert_allclose(big.x_train, circles.x_train * 10 + 3, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(big.schema.scale_array(), circles.schema.scale_array() * 10, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(big.constraints().lower), np.asarray(circles.constraints().lower) * 10 + 3,
                               rtol=1e-5)
    np.testing.assert_allclose(big.standardizer.inverse(big.x_test), circles.standardizer.inverse(circles.x_test),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [0.1, 10.0])
@pytest.mark.parametrize("rule", ["gradient", "normalized", "normalized_linf", "clipped"])
def test_units_aware_search_gives_the_same_counterfactuals_in_any_units(circles, factor, rule):
    apply_fn, params = _model(circles)
    big = circles.affine(factor)
    big_fn, _ = _model(big)  # the same weights, with the input statistics of the rescaled copy
    cfg = UNITS.replace(step_rule=rule, epsilon=0.3, lambda_cost=0.01)
    x = jnp.asarray(circles.x_test[:40])
    target = 1 - jnp.argmax(apply_fn(params, x), -1)
    small_res = search_counterfactuals(apply_fn, params, x, target, jax.random.key(0), cfg, circles.constraints())
    big_res = search_counterfactuals(big_fn, params, x * factor, target, jax.random.key(0), cfg, big.constraints())
    chex.assert_trees_all_close(big_res.x_cf / factor, small_res.x_cf, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(big_res.x_ae / factor, small_res.x_ae, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(big_res.steps, small_res.steps)
    # Walking all T steps past τ (training's default) is just as unit-free.
    walk = cfg.replace(convergence="max_steps")
    small_walk = search_counterfactuals(apply_fn, params, x, target, jax.random.key(0), walk, circles.constraints())
    big_walk = search_counterfactuals(big_fn, params, x * factor, target, jax.random.key(0), walk, big.constraints())
    chex.assert_trees_all_close(big_walk.x_cf / factor, small_walk.x_cf, rtol=1e-4, atol=1e-4)
    assert float(jnp.mean(small_res.steps)) > 1
    # The reference's absolute search is not invariant: the same rescaling changes its path.
    paper = cfg.replace(units="absolute", step_rule="gradient")
    a = search_counterfactuals(apply_fn, params, x, target, jax.random.key(0), paper, circles.constraints())
    b = search_counterfactuals(big_fn, params, x * factor, target, jax.random.key(0), paper, big.constraints())
    assert not np.allclose(np.asarray(b.x_cf) / factor, np.asarray(a.x_cf), atol=1e-3)


# The training default and the walk at circles' configured τ = 0.5: on the nearly flat model of a 3-epoch run few
# counterfactuals reach 0.75 (the walk's clipped gradient steps: 0.00; the default's: 0.15); at 0.5 the
# counterfactual terms are active, which the test checks.
@pytest.mark.parametrize("search", [UNITS, TrainConfig().search.replace(threshold=0.5),
                                    WALK_PAST_TAU.replace(threshold=0.5, max_steps=40)],
                         ids=["stop at tau, L2 steps", "training default", "walk past tau"])
def test_training_on_rescaled_data_gives_the_same_predictions(circles, search):
    cfg = TrainConfig(search=search, epochs=3, n_ce=60, batch_size=30, shuffle=True)
    runs = []
    for data in (circles, circles.affine(10.0, -4.0)):
        apply_fn, params = _model(data)
        state, history = fit(create_train_state(apply_fn, params), data, cfg, progress=False)
        runs.append((apply_fn(state.params, jnp.asarray(data.x_test)), history))
    (small_logits, small_hist), (big_logits, big_hist) = runs
    np.testing.assert_allclose(big_logits, small_logits, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(np.argmax(big_logits, -1), np.argmax(small_logits, -1))
    assert small_hist[-1]["converged"] > 0.2  # the counterfactual terms are active, not idle
    for key in ("converged", "search_steps", "loss"):
        assert big_hist[-1][key] == pytest.approx(small_hist[-1][key], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("rule", ["normalized", "normalized_linf"])
def test_normalised_steps_walk_where_the_reference_step_jumps(rule):
    # A confident linear model: logit₁ − logit₀ = 20·x0. From x0 = −0.5 (p₁ ≈ 5e-5), one reference SGD step of 0.1
    # moves x0 by 0.1·(1 − p)·20 ≈ 2: a jump far past the boundary. Normalised steps of 0.1 (σ = 2 here, so
    # 0.2 in x0) reach p₁ ≥ 0.6, i.e. x0 ≥ ln(1.5)/20 ≈ 0.0203, after exactly 3 steps (x0 = −0.5 + 3·0.2 = 0.1).
    from ctrain import constraints as cons
    linear = lambda p, x: x @ p
    w = jnp.array([[0.0, 20.0], [0.0, 0.0]])
    c = cons.make_constraints(2, scale=np.array([2.0, 2.0]))
    x = jnp.array([[-0.5, 0.3], [-0.5, -0.7]])
    base = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.6, step_size=0.1, max_steps=30,
                        units="absolute", step_rule="gradient")
    jump = search_counterfactuals(linear, w, x, jnp.ones(2, jnp.int32), jax.random.key(0), base, c)
    walk = search_counterfactuals(linear, w, x, jnp.ones(2, jnp.int32), jax.random.key(0),
                                  base.replace(units="std", step_rule=rule), c)
    np.testing.assert_array_equal(jump.steps, [1, 1])
    assert float(jump.x_cf[0, 0]) > 1.4
    np.testing.assert_array_equal(walk.steps, [3, 3])
    np.testing.assert_allclose(walk.x_cf, x + jnp.array([0.6, 0.0]), atol=1e-5)  # along x0 only, 3 × 0.2
    assert bool(jnp.all(walk.converged))


@pytest.mark.parametrize("width", [1, 4, 16, 64])
def test_linf_steps_do_not_shrink_with_the_number_of_features_and_l2_steps_do(width):
    # logit₁ − logit₀ = (4/D)·Σ x_i: the evidence spread evenly over D features, so from x = −0.47·1 every feature
    # must rise by 0.47 to reach τ = 0.5 whatever D is. An L∞ step of η = 0.1 moves every feature by 0.1: 5 steps
    # for any D. An L2 step of 0.1 moves each by 0.1/√D: ⌈4.7·√D⌉ steps (5, 10, 19), and 38 > T = 30 for D = 64.
    from ctrain import constraints as cons
    w = jnp.zeros((width, 2)).at[:, 1].set(4.0 / width)
    x = jnp.full((1, width), -0.47)
    c = cons.make_constraints(width, scale=np.ones(width))
    config = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.5, step_size=0.1, max_steps=30,
                          units="std")
    linf = search_counterfactuals(lambda p, v: v @ p, w, x, jnp.ones(1, jnp.int32), jax.random.key(0), config, c)
    l2 = search_counterfactuals(lambda p, v: v @ p, w, x, jnp.ones(1, jnp.int32), jax.random.key(0),
                                config.replace(step_rule="normalized"), c)
    assert config.step_rule == "normalized_linf"  # the default
    np.testing.assert_array_equal(linf.steps, [5])
    np.testing.assert_allclose(linf.x_cf, jnp.full((1, width), 0.03), atol=1e-5)
    expected = {1: 5, 4: 10, 16: 19, 64: 30}[width]
    np.testing.assert_array_equal(l2.steps, [expected])
    assert bool(l2.converged[0]) == (width < 64)


@pytest.mark.parametrize("slope, moved", [(0.5, 0.1 * 0.5 * (1 - 1 / (1 + np.exp(0.5)))), (20.0, 0.1)])
def test_clipped_steps_are_gradient_steps_of_at_most_linf_length_eta(slope, moved):
    # logit₁ − logit₀ = slope·x0 from x0 = −1: the CE gradient on x0 is −(1 − p)·slope with p = σ(−slope). A gentle
    # model (slope 0.5, |g| = 0.31 < 1) gets the plain gradient step 0.1·|g|; a steep one (|g| ≈ 20) a step of η.
    from ctrain import constraints as cons
    w = jnp.array([[0.0, slope], [0.0, 0.0]])
    x = jnp.array([[-1.0, 0.0]])
    config = SearchConfig(generator="generic", lambda_cost=0.0, threshold=0.99, step_size=0.1, max_steps=1,
                          units="std", step_rule="clipped")
    res = search_counterfactuals(lambda p, v: v @ p, w, x, jnp.ones(1, jnp.int32), jax.random.key(0), config,
                                 cons.make_constraints(2))
    np.testing.assert_allclose(res.x_cf, x + jnp.array([[moved, 0.0]]), rtol=1e-5)


def test_seed_reductions_are_each_training_seeds_own_reduction():
    from experiments.studies.units.study import seed_reductions
    # Rounds 0-1 belong to seed 0 (ratios 0.5, 0.7: mean 0.6, a 40% reduction), 2-3 to seed 1 (mean 1.1: −10%);
    # seed 2 has no round.
    ratios = {0: 0.5, 1: 0.7, 2: 1.2, 3: 1.0}
    got = seed_reductions(ratios, rounds=2, n_seeds=3)
    assert got[0] == pytest.approx(40.0) and got[1] == pytest.approx(-10.0) and got[2] is None
    assert seed_reductions({str(k): v for k, v in ratios.items()}, 2, 3)[:2] == got[:2]  # keys as read from JSON


def test_the_units_aware_protocol_scores_a_rescaled_copy_identically(circles):
    models = {"BL": _model(circles, 0), "CT": _model(circles, 1)}
    big = circles.affine(10.0)
    big_models = {k: (_model(big, s)[0], p) for (k, (_, p)), s in zip(models.items(), (0, 1))}
    protocol = ProtocolConfig(n_rounds=4, n_individuals=10, lambda_energy=(1.0,), ip_samples=50, mmd_samples=8,
                              search=PROTOCOL_SEARCH.replace(max_steps=20, threshold=0.6, units="std"),
                              mmd_length_scale="median")
    a = evaluate_explainability(models, circles.x_test, circles.y_test, num_classes=2, protocol=protocol,
                                constraints=circles.constraints())
    b = evaluate_explainability(big_models, big.x_test, big.y_test, num_classes=2, protocol=protocol,
                                constraints=big.constraints())
    for ra, rb in zip(a["summary"], b["summary"]):
        for metric in ("validity", "cost", "ip", "ip_star"):
            if ra[metric] is None:
                assert rb[metric] is None
            else:
                assert rb[metric] == pytest.approx(ra[metric], rel=2e-3, abs=2e-4), metric


def test_the_units_study_runs_each_arm_with_its_settings_and_writes_its_tables(tmp_path, monkeypatch):
    from experiments import pipeline
    from experiments.studies.units import study as units
    seen = []
    real_fit = pipeline.fit_many

    def fit_spy(states, data, config, **kwargs):
        seen.append((data.x_train.std(), config.objective, (config.search.units, config.search.step_rule,
                     config.search.convergence), float(states.weights.reg[0]),
                     (config.search.categorical, config.schedule, config.burnin)))
        return real_fit(states, data, config, **kwargs)

    monkeypatch.setattr(pipeline, "fit_many", fit_spy)
    md = tmp_path / "RESULTS.md"
    md.write_text("# kept\n")
    # one test-time λ_energy: one search to compile per model, not five
    sets = ["train.n_ce=60", "protocol.n_individuals=8", "protocol.search.max_steps=10", "protocol.ip_samples=30",
            "protocol.mmd_samples=6", "weights.reg=0.3", "protocol.lambda_energy=1.0", "train.burnin=0.5",
            "train.schedule=per_batch"]
    results = units.main(["--datasets", "circles", "--copies", "raw", "x10", "--arms", "paper", "units_clipped",
                          "--seeds", "0", "--epochs", "1", "--rounds", "2", "--out", str(tmp_path / "out"),
                          "--results-md", str(md), "--section", "study", "--title", "Units study: a test",
                          "--categorical", "relaxed",
                          *sum((["--set", s] for s in sets), [])])
    assert [(r["copy"], r["arm"]) for r in results] == [("raw", "paper"), ("raw", "units_clipped"), ("x10", "paper"),
                                                        ("x10", "units_clipped")]
    # Each arm's search reaches training (BL and CT), the --set λ_reg reaches the state, the x10 copy is x10.
    arms = [a for _, _, a, _, _ in seen]
    paper, default = ("absolute", "gradient", "threshold"), ("std", "clipped", "max_steps")
    assert arms == [paper] * 2 + [default] * 2 + [paper] * 2 + [default] * 2
    # The study's units_clipped arm is the walk past τ (training's default before the training-search study).
    from ctrain.search import WALK_PAST_TAU
    assert (WALK_PAST_TAU.units, WALK_PAST_TAU.step_rule, WALK_PAST_TAU.convergence) == default
    assert all(reg == pytest.approx(0.3) for _, _, _, reg, _ in seen)
    # --categorical and the config's schedule and burn-in reach every run's TrainConfig.
    assert {extra for *_, extra in seen} == {("relaxed", "per_batch", 0.5)}  # the default is straight-through
    assert seen[4][0] == pytest.approx(10 * seen[0][0], rel=1e-5)
    for r in results:
        assert set(r["comparisons"]) == {"cost", "ip", "ip_star", "validity", "violations", "ip_star_fixed"}
        assert r["comparisons"]["violations"]["baseline_mean"] == 0  # circles has no one-hot group
        assert 0 <= r["health"]["converged"] <= 1 and r["health"]["search_steps"] >= 1
    text = md.read_text()
    assert text.startswith("# kept") and "<!-- study:start -->\n### Units study: a test\n" in text
    assert "--title 'Units study: a test'" in text  # the command as written can be run again
    assert "--set weights.reg=0.3" in text
    assert text.count("| circles |") == 6  # four arms' rows and the two units-minus-paper rows
    for r in results:
        if r["arm"] == "units_clipped":
            assert set(r["differences"]["paper"]) == {"cost", "ip", "ip_star", "ip_star_fixed"}
            assert r["differences"]["paper"]["ip"]["n_rounds"] >= 1
        # With one seed, the seed's own reduction is the pooled one.
        assert units.seed_reductions(r["ratios"]["ip_star"], 2, 1)[0] == pytest.approx(
            r["comparisons"]["ip_star"]["reduction_pct"])
    assert sum(r["arm"] == "units_clipped" for r in results) == 2
    assert "IP: arm − paper" in text and "| IP* −% per seed |" in text
    # --tables-only writes the same tables from the saved run, without training.
    count = len(seen)
    again = tmp_path / "AGAIN.md"
    units.main(["--tables-only", "--out", str(tmp_path / "out"), "--results-md", str(again), "--section", "again",
                "--title", "Again"])
    rows = lambda t: [line for line in t.splitlines() if line.startswith("| circles")]
    assert len(seen) == count and rows(again.read_text()) == rows(text)
    assert "--title 'Units study: a test'" in again.read_text()  # the run's own command
    # A units.json written before runs saved their command gets an equivalent one rebuilt from its arguments.
    saved = json.loads((tmp_path / "out" / "units.json").read_text())
    del saved["command"]
    (tmp_path / "out" / "units.json").write_text(json.dumps(saved))
    units.main(["--tables-only", "--out", str(tmp_path / "out"), "--results-md", str(again), "--section", "again",
                "--title", "Again"])
    assert "--datasets circles --copies raw x10 --arms paper units_clipped --seeds 0 --rounds 2" in again.read_text()
    assert rows(again.read_text()) == rows(text)
    with pytest.raises(ValueError, match=r"weights\.reg=-1: .*λ_reg must be finite and >= 0"):
        units.main(["--datasets", "circles", "--set", "weights.reg=-1", "--out", str(tmp_path / "bad")])


def test_categorical_arm_trains_paper_parity_relaxed_and_the_default_straight_through(tmp_path, monkeypatch):
    from experiments import pipeline
    from experiments.studies.units import study as units
    from ctrain.search import SearchConfig, TRAINING_SEARCH
    seen = []
    real_fit = pipeline.fit_many

    def fit_spy(states, data, config, **kwargs):
        seen.append((config.search.units, config.search.categorical))
        return real_fit(states, data, config, **kwargs)

    monkeypatch.setattr(pipeline, "fit_many", fit_spy)
    # Scoring is not what this test is about: every metric comes back empty, so the tables say n/a.
    monkeypatch.setattr(units, "evaluate_pair", lambda *a, **k: ({}, {key: {} for key, _ in units.DIFF_METRICS}))
    results = units.main(["--datasets", "circles", "--copies", "raw", "--arms", "units", "paper", "--seeds", "0",
                          "--epochs", "1", "--rounds", "2", "--out", str(tmp_path), "--categorical", "arm",
                          "--set", "train.n_ce=40"])
    assert SearchConfig.reference().categorical == "relaxed" != TRAINING_SEARCH.categorical
    # BL and CT of each arm, in the order the arms were given.
    assert seen == [("std", TRAINING_SEARCH.categorical)] * 2 + [("absolute", "relaxed")] * 2
    assert [(r["arm"], r["categorical"]) for r in results] == [("units", TRAINING_SEARCH.categorical),
                                                               ("paper", "relaxed")]
    text = (tmp_path / "units.md").read_text()
    assert f"| circles | raw | units ({TRAINING_SEARCH.categorical}) |" in text
    assert "| circles | raw | paper (relaxed) |" in text


def test_models_that_standardise_their_inputs_leave_one_hot_columns_alone_unless_asked(monkeypatch):
    from ctrain.data import from_arrays
    from experiments import pipeline
    from experiments.studies.units import study as units
    from experiments.configs import get_config
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(50, 10, 200), np.eye(3)[rng.choice(3, 200, p=[0.8, 0.15, 0.05])]]
    data = from_arrays(x, rng.integers(0, 2, 200), feature_names=["a", "c=1", "c=2", "c=3"],
                       categorical={"c": ["c=1", "c=2", "c=3"]}, standardize=False)
    seen = []

    class Built(Exception):
        pass

    def make_model_spy(*args, input_stats=None):
        seen.append(input_stats)
        raise Built  # the inputs are what this test is about, not training

    monkeypatch.setattr(pipeline, "make_model", make_model_spy)  # train_pair builds its models there
    for standardize_onehot in (False, True):
        with pytest.raises(Built):
            units.train_pair(get_config("circles"), data, "units", [0], 1, False,
                             standardize_onehot=standardize_onehot)
    with pytest.raises(Built):
        units.train_pair(get_config("circles"), data, "paper", [0], 1, False)
    (mean, std), (mean_all, std_all), paper = seen
    np.testing.assert_allclose([mean[0], std[0]], [data.x_train[:, 0].mean(), data.x_train[:, 0].std()], rtol=1e-5)
    np.testing.assert_array_equal(np.r_[mean[1:], std[1:]], [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(std_all, data.x_train.std(0), rtol=1e-6)  # the older tables' way
    assert std_all[3] < 0.3 and paper is None  # the rare category would weigh > 3x; paper parity sees raw inputs


def test_every_experiment_setting_is_read_by_the_units_study_or_refused_with_a_reason():
    from experiments.studies.units import study as units
    from experiments.configs import leaf_paths

    def named(path, prefixes):
        return any(path == p or (p.endswith(".") and path.startswith(p)) or path.startswith(p + ".")
                   for p in prefixes)

    # Every leaf of the tree is in READS or has its own reason in NOT_READ_BECAUSE (none falls through to the
    # catch-all), and where both name it the reason wins (a path an arm or a flag sets, inside a branch it reads).
    for path in leaf_paths() + ["data.kwargs.n_train"]:
        assert named(path, units.READS) or named(path, units.NOT_READ_BECAUSE), path
        reason = units.unread_reason(path)
        assert (reason is None) == (not named(path, units.NOT_READ_BECAUSE)), path
        assert reason != "the study does not read that field", path
    # Every prefix names something in the tree.
    for prefix in tuple(units.READS) + tuple(units.NOT_READ_BECAUSE):
        assert any(p == prefix or p.startswith(prefix if prefix.endswith(".") else prefix + ".") or
                   (prefix == "data.kwargs" and p == "data.kwargs") for p in leaf_paths()), prefix
    assert units.unread_reason("train.search.threshold") is None and units.unread_reason("weights.reg") is None
    assert units.unread_reason("train.search.units") == "each arm sets it (--arms)"
    assert units.unread_reason("sensitivity.rounds") == "there is no IG run"


@pytest.mark.parametrize("key, hint", [("protocol.n_rounds=5", "--rounds"),
                                       ("train.search.categorical=relaxed", "--categorical"),
                                       ("data.protected=x0", "free"), ("seeds=3", "--seeds"),
                                       ("train.search.step_rule=gradient", "--arms"),
                                       ("actionability.threshold=0.6", "no actionability run")])
def test_the_units_study_refuses_a_setting_it_would_ignore(tmp_path, key, hint):
    from experiments.studies.units import study as units
    with pytest.raises(ValueError, match=rf"--set {re.escape(key.split('=')[0])}=.*would change nothing.*{hint}"):
        units.main(["--datasets", "circles", "--set", key, "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_the_units_study_refuses_an_old_flat_setting_as_an_unknown_path(tmp_path):
    from experiments.studies.units import study as units
    with pytest.raises(ValueError, match=r"unknown config key 'lambda_reg': the config tree's root has no field"):
        units.main(["--datasets", "circles", "--set", "lambda_reg=0.1", "--out", str(tmp_path / "bad")])


def test_arm_difference_is_the_difference_of_reductions_over_paired_rounds():
    from ctrain.evaluate import compare
    from experiments.studies.units.study import arm_difference, round_ratios

    def summary(ct, bl):
        return [{"round": j, "model": m, "ip": v} for j, (c, b) in enumerate(zip(ct, bl))
                for m, v in (("CT", c), ("BL", b))]

    arm = summary([0.8, 0.6, 0.7, None], [1.0, 1.0, 1.0, 1.0])
    ref = summary([0.9, 0.7, 0.8, 0.5], [1.0, 1.0, 1.0, 1.0])
    d = arm_difference(round_ratios(arm, "ip"), round_ratios(ref, "ip"))
    # Round 3 has no CT value in the arm, so three rounds pair, each 10 points better: a CI of a constant.
    assert d["n_rounds"] == 3 and d["difference"] == pytest.approx(10.0)
    assert d["ci_low"] == pytest.approx(10.0) and d["ci_high"] == pytest.approx(10.0) and d["significant"]
    # Over the same rounds it is the difference of the two reductions `compare` reports.
    arm, ref = summary([0.8, 1.3, 0.5], [1.0, 2.0, 0.5]), summary([0.9, 1.0, 0.4], [1.0, 1.0, 0.5])
    d = arm_difference(round_ratios(arm, "ip"), round_ratios(ref, "ip"))
    assert d["difference"] == pytest.approx(compare(arm, "ip")["reduction_pct"] - compare(ref, "ip")["reduction_pct"])
    noisy = arm_difference({0: 1.0, 1: 0.8}, {0: 0.9, 1: 0.9})
    assert noisy["difference"] == pytest.approx(0.0) and noisy["ci_low"] < 0 < noisy["ci_high"]
    assert not noisy["significant"]
    one = arm_difference({0: 0.5}, {0: 0.9, 1: 0.9})
    assert one["difference"] == pytest.approx(40.0) and one["ci_low"] is None and one["significant"] is None


@pytest.mark.parametrize("rule", ["gradient", "normalized"])
def test_eval_step_rule_reaches_the_units_studys_evaluator(monkeypatch, rule):
    from experiments.studies.units import study as units
    from experiments.configs import get_config

    seen = []

    class Recorded(Exception):
        pass

    def spy(models, x, y, *, protocol, **kwargs):
        seen.append((protocol.search_config(1.0).step_rule, protocol.search_config(1.0).categorical))
        raise Recorded

    monkeypatch.setattr(units, "evaluate_explainability", spy)
    data = load_dataset("circles", n_train=40, n_val=0, n_test=20)
    with pytest.raises(Recorded):
        units.evaluate_pair(get_config("circles"), data, {"BL": [None], "CT": [None]}, [0], 2, rule, "snap_state")
    assert seen == [(rule, "snap_state")]


def test_the_step_rule_benchmark_scores_explain_for_bl_and_ct_under_each_rule(tmp_path):
    from experiments.benchmarks import step_rules
    out = step_rules.main(["--quick", "--rules", "normalized", "clipped", "--json", str(tmp_path / "r.json")])
    assert set(out) == {"circles"} and set(out["circles"]) == {"BL", "CT"}
    for rows in out["circles"].values():
        assert set(rows) == {"normalized", "clipped"}
        for r in rows.values():
            assert 0 <= r["reach_tau"] <= 1 and 0 <= r["valid"] <= 1 and 0 <= r["mean_steps"] <= 30
            assert r["cost_sd"] > 0  # the searches moved
    assert json.loads((tmp_path / "r.json").read_text())["step_rules"]["circles"]["BL"]["clipped"] == \
        out["circles"]["BL"]["clipped"]


@pytest.mark.parametrize("arm", ["paper", "units_clipped"])
def test_train_pair_trains_what_its_own_loop_trained_before_it_used_train_seeds(arm):
    """train_pair goes through pipeline.train_seeds; the models are bit-identical to its former hand-written loop."""
    from experiments.studies.units import study as units

    config = override(get_config("circles"), ["train.n_ce=30", "train.epochs=1"])
    data = units.data_copy(config, "raw")
    seeds = (0, 1)
    models, _ = units.train_pair(config, data, arm, seeds, epochs=1, progress=False, categorical="relaxed")
    spec = units.ARMS[arm]
    extra = {"input_stats": data.input_stats()} if spec["normalize_inputs"] else {}
    apply_fn, _ = make_model(config.model, data.num_features, data.num_classes, jax.random.key(0), **extra)
    inits = jax.tree.map(lambda *a: jnp.stack(a), *[
        make_model(config.model, data.num_features, data.num_classes, jax.random.key(s), **extra)[1] for s in seeds])
    search = config.train.search.replace(categorical="relaxed", **spec["search"])
    for label, objective in (("BL", "vanilla"), ("CT", "full")):
        tc = config.train.replace(objective=objective, search=search, epochs=1)
        states = create_train_states(apply_fn, inits, weights=config.weights, learning_rate=config.learning_rate)
        states, _ = fit_many(states, data, tc, seeds=seeds, progress=False)
        for i in range(len(seeds)):
            chex.assert_trees_all_equal(models[label][i][1], jax.tree.map(lambda a, i=i: a[i], states.params))
