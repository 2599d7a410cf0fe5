"""The studies under experiments/studies: their settings reach what runs, and their summaries count correctly."""
import json

import numpy as np
import pytest

from ctrain.evaluate import seed_interval
from ctrain.search import WALK_PAST_TAU
from experiments import pipeline
from experiments.configs import get_config, get_path, leaf_paths
from experiments.studies.actionability import study as actionability
from experiments.studies.training_search import study as training_search

TINY_PROTOCOL = {"protocol.n_rounds": 2, "protocol.n_individuals": 4, "sensitivity.rounds": 2,
                 "sensitivity.samples": 20, "sensitivity.steps": 2}


def _spy_fit(monkeypatch):
    seen = []
    real = pipeline.fit_many

    def spy(states, data, config, **kwargs):
        seen.append((config.objective, config.search, states.weights, data.schema.protected().tolist()))
        return real(states, data, config, **kwargs)

    monkeypatch.setattr(pipeline, "fit_many", spy)
    return seen


def test_actionability_searches_are_what_they_say():
    config = get_config("moons")
    assert actionability.training_search("parity", config) is None  # train_seeds then uses the config's own
    tau = config.train.search.threshold
    assert actionability.training_search("walk", config) == WALK_PAST_TAU.replace(threshold=tau)
    assert actionability.training_search("explain", config).step_rule == "normalized_linf"
    with pytest.raises(ValueError, match="unknown training search"):
        actionability.training_search("fast", config)


@pytest.mark.parametrize("search", ["walk"])  # parity is the config's own search (the test above)
def test_actionability_draw_trains_three_arms_with_x0_protected_and_the_asked_search(monkeypatch, search):
    monkeypatch.setattr(actionability, "STUDY_PROTOCOL", TINY_PROTOCOL)
    seen = _spy_fit(monkeypatch)
    row = actionability.run_draw("overlapping", 3, [0, 1], search=search, epochs=1)
    assert [s[0] for s in seen] == ["vanilla", "full", "full"]
    assert all(protected == [True, False] for *_, protected in seen)  # x0 immutable in every arm
    config = get_config("overlapping")
    _, ct_search, ct_weights, _ = seen[1]
    _, _, div_weights, _ = seen[2]
    per_run = lambda w, name: np.asarray(getattr(w, name)).tolist()  # the λ's of each of the two stacked runs
    assert (per_run(ct_weights, "reg"), per_run(ct_weights, "adv")) == ([config.weights.reg] * 2,
                                                                         [config.weights.adv] * 2)
    assert (per_run(div_weights, "reg"), per_run(div_weights, "adv"), per_run(div_weights, "div")) == \
        ([0.0] * 2, [0.0] * 2, [config.weights.div] * 2)
    tau = config.train.search.threshold
    expected = pipeline.search_config(config) if search == "parity" else WALK_PAST_TAU.replace(threshold=tau)
    assert ct_search == expected
    assert row["draw"] == 3 and len(row["class_mean_gap_sigma"]) == 2 and row["search"] == search
    for arm in actionability.ARMS:
        assert len(row["arms"][arm]["gradient_share"]) == 2 and len(row["arms"][arm]["ig_median"]) == 2
    assert set(row["cost_reduction"]) == {"CT", "CT_div"}
    json.dumps(row, allow_nan=False)


def test_study_settings_are_paths_of_the_config_tree_and_reach_the_config():
    for settings in (actionability.STUDY_PROTOCOL, training_search.STUDY_ROUNDS):
        assert set(settings) <= set(leaf_paths())
    config = actionability.study_config("moons", [0, 1], 3)
    assert all(get_path(config, path) == value for path, value in actionability.STUDY_PROTOCOL.items())
    assert (config.seeds, config.train.epochs) == ((0, 1), 3)
    assert actionability.study_config("moons", [0], None).train.epochs == get_config("moons").train.epochs


def _row(dataset, gaps, reductions, ig, share):
    """A stored draw with the given CT arm figures (BL's IG and share are 1.0)."""
    arms = {"BL": {"ig_median": [1.0, 1.0], "gradient_share": [1.0, 1.0], "validity": [1.0, 1.0]}}
    cost = {}
    for arm in ("CT", "CT_div"):
        arms[arm] = {"ig_median": [ig, ig], "gradient_share": [share, share], "converged": [0.5, 0.7], "validity": [1, 1],
                     "nonfinite": [0, 1]}
        cost[arm] = {"per_seed_reduction_pct": reductions, "reduction": seed_interval(reductions)}
    return {"dataset": dataset, "draw": 0, "seeds": [0, 1], "class_mean_gap_sigma": gaps, "arms": arms,
            "cost_reduction": cost}


def test_actionability_summary_counts_draws_by_geometry():
    rows = [_row("d", [1.0, 2.0], [10.0, 20.0], 0.5, 0.5),     # x1 leads: every figure in the paper's direction
            _row("d", [2.0, 1.0], [-10.0, -30.0], 2.0, 0.5),   # x0 leads: cost and IG against, share with
            _row("d", [3.0, 1.0], [None, None], 2.0, 2.0)]     # no valid counterfactual: cost undefined
    entry = actionability.summarise(rows)["d/parity/CT"]  # rows without a search are the reference's
    assert entry["draws"] == 3 and entry["seeds"] == 2
    assert entry["cost"] == {"all": "1/2", "x1_leads": "1/1", "x0_leads": "0/1"}
    assert entry["ig"] == {"all": "1/3", "x1_leads": "1/1", "x0_leads": "0/2"}
    assert entry["gradient_share"] == {"all": "2/3", "x1_leads": "1/1", "x0_leads": "1/2"}
    assert entry["cost_reduction_over_draws"] == seed_interval([15.0, -20.0])
    assert entry["cost_reduction_median"] == pytest.approx(-2.5)
    assert entry["matured"] == pytest.approx(0.6) and entry["skipped"] == 3
    assert "| d | parity | CT | 3 × 2 | -2.5 [" in actionability.tables(rows)
    rows[0]["search"] = "explain"  # a draw of another training search is summarised apart
    assert actionability.summarise(rows)["d/explain/CT"]["draws"] == 1


def test_actionability_refuses_an_out_folder_of_other_settings_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(actionability, "run_draw", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "rows").mkdir()
    (tmp_path / "settings.json").write_text(json.dumps({"seeds": [0, 1], "epochs": 5}))
    with pytest.raises(ValueError, match="holds rows run with"):
        actionability.main(["--out", str(tmp_path), "--seeds", "0", "1", "2", "--quiet"])
    with pytest.raises(SystemExit):
        actionability.main(["--out", str(tmp_path / "new"), "--seeds", "0", "0"])


def test_training_search_candidates_and_explainers_are_what_they_say():
    adult = get_config("adult")
    assert training_search.candidate("parity", adult) is None  # the config's own: the reference's search
    walk = training_search.candidate("walk", adult)
    assert (walk.convergence, walk.step_rule, walk.threshold, walk.categorical) == \
        ("max_steps", "clipped", adult.train.search.threshold, adult.train.search.categorical)
    explain = training_search.candidate("explain", adult)
    assert (explain.convergence, explain.step_rule, explain.categorical) == ("threshold", "normalized_linf", "relaxed")
    ecco, wachter = (training_search.explainer(e, adult, seed=3) for e in ("ecco", "wachter"))
    assert (ecco.search.generator, ecco.search.threshold, ecco.seed) == ("ecco", adult.protocol.search.threshold, 3)
    assert ecco == pipeline.protocol_config(adult, seed=3)  # the paper's protocol, seeded by the training seed
    assert (wachter.search.generator, wachter.search.lambda_cost, wachter.lambda_energy) == ("generic", 0.1, (0.0,))
    assert (wachter.n_rounds, wachter.search.threshold) == (ecco.n_rounds, ecco.search.threshold)
    with pytest.raises(ValueError, match="unknown training search"):
        training_search.candidate("fast", adult)


def test_training_search_scores_each_candidate_with_both_explainers(monkeypatch):
    monkeypatch.setattr(training_search, "STUDY_ROUNDS", {"protocol.n_rounds": 2, "protocol.n_individuals": 4})
    seen = _spy_fit(monkeypatch)
    protocols = []
    real = training_search.evaluate_explainability

    def evaluate_spy(models, x, y, **kwargs):
        protocols.append((sorted(models), kwargs["protocol"].search.generator))
        return real(models, x, y, **kwargs)

    monkeypatch.setattr(training_search, "evaluate_explainability", evaluate_spy)
    row = training_search.run_dataset("moons", ["walk", "explain"], [0, 1], epochs=2)
    searches = [s[1] for s in seen if s[0] == "full"]
    assert [(s.convergence, s.step_rule) for s in searches] == [("max_steps", "clipped"),
                                                                ("threshold", "normalized_linf")]
    assert protocols == [(["BL", "explain", "walk"], g) for _ in (0, 1) for g in ("ecco", "generic")]
    for label in ("walk", "explain"):
        assert len(row["maturity"][label]["per_epoch"]) == 2
        for e in training_search.EXPLAINERS:
            assert row["reductions"][label][e]["ip"]["n_seeds"] == 2
    assert "| moons | walk | 2 |" in training_search.tables([row])


def test_tables_only_rebuilds_a_studys_tables_from_its_stored_rows_without_training(tmp_path, monkeypatch):
    monkeypatch.setattr(actionability, "run_draw", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "rows").mkdir()
    rows = [_row("d", [1.0, 2.0], [10.0, 20.0], 0.5, 0.5), _row("d", [2.0, 1.0], [-10.0, -30.0], 2.0, 0.5)]
    for i, row in enumerate(rows):
        (tmp_path / "rows" / f"d-draw{i}-parity.json").write_text(json.dumps(row))
    assert actionability.main(["--out", str(tmp_path), "--tables-only"]) == rows
    assert "| d | parity | CT | 2 × 2 |" in (tmp_path / "tables.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["d/parity/CT"]["draws"] == 2
    with pytest.raises(FileNotFoundError, match="no rows folder"):
        training_search.main(["--out", str(tmp_path / "none"), "--tables-only"])


def test_grid_study_picks_the_best_rows_and_finds_the_papers_choice(tmp_path):
    from experiments.studies.grids import study as grids
    folder = tmp_path / "tuning"
    folder.mkdir()
    fields = ["dataset", "group", "config", "train.search.threshold", "weights.reg", "ip_reduction_pct", "ip_low",
              "ip_high", "ip_significant", "ip_star_reduction_pct", "ip_star_low", "ip_star_high",
              "ip_star_significant", "cost_reduction_pct", "cost_low", "cost_high", "cost_significant", "mature",
              "search_steps", "skipped_updates"]
    rows = [("moons", 0.9, 0.25, 10.0, 20.0), ("moons", 0.5, 0.1, 30.0, 5.0), ("moons", 0.75, 0.5, 20.0, 40.0)]
    lines = [",".join(fields)]
    for name, tau, reg, ip, ip_star in rows:
        lines.append(f"{name},g,c,{tau},{reg},{ip},{ip - 5},{ip + 5},True,{ip_star},{ip_star - 50},{ip_star + 50},"
                     f"False,1.0,0.0,2.0,False,0.9,3.0,0")
    (folder / "grid.csv").write_text("\n".join(lines) + "\n")
    (folder / "grid.md").write_text("grid table\n")
    summary = grids.main(["--out", str(tmp_path), "--grids", "tuning", "--dest", str(tmp_path)])
    moons = summary["tuning"]["datasets"]["moons"]
    assert moons["paper_choice"] == {"train.search.threshold": 0.9, "weights.reg": 0.25}  # moons' own config
    assert moons["best"]["ip"]["train.search.threshold"] == 0.5
    assert moons["best"]["ip_star"]["weights.reg"] == 0.5
    assert moons["paper_row"]["ip_reduction_pct"] == 10.0
    table = (tmp_path / "tables.md").read_text()
    assert "| moons | best IP | 0.5 | 0.1 | 30.0 [25.0, 35.0]* | 5.0 [-45.0, 55.0] |" in table  # False → no mark
    assert (tmp_path / "grid_tuning.md").read_text() == "grid table\n"
