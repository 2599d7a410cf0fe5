"""The README's headline table, Table 1's average row and Figures 2 and 5, built from results with known answers.

No training here: each row's comparisons are made by the pipeline's own `compared_over_rounds_and_seeds` from
round summaries whose per-seed reductions are fixed by construction (CT's value = BL's × (1 − r/100)).
"""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from experiments import paper_results, plots, reproduce, tables
from experiments.pipeline import compared_over_rounds_and_seeds

METRICS = ("ip", "ip_star", "cost")


def _summaries(reductions_pct, n_rounds=4):
    """Returns one round summary per seed in which CT is `reduction` % below BL in every metric."""
    out = []
    for r in reductions_pct:
        rows = []
        for k in range(n_rounds):
            bl = 2.0 + k
            rows += [{"model": "BL", "round": k, **{m: bl for m in METRICS}},
                     {"model": "CT", "round": k, **{m: bl * (1 - r / 100) for m in METRICS}}]
        out.append(rows)
    return out


def _result(dataset, seeds, reductions_pct, *, label=None, categorical="relaxed", groups=0, ablation=False):
    per_seed = _summaries(reductions_pct)
    compare = {m: compared_over_rounds_and_seeds(per_seed, 4, m, treatment="CT") for m in ("ip", "ip_star")}
    compare["cost_protected"] = compared_over_rounds_and_seeds(per_seed, 4, "cost", treatment="CT")
    comparisons = {"CT": compare}
    if ablation:
        for model, shift in (("CD", 5.0), ("AR", -5.0)):
            shifted = [[{**row, "model": model} if row["model"] == "CT" else row for row in seed]
                       for seed in _summaries([r + shift for r in reductions_pct])]
            comparisons[model] = {m: compared_over_rounds_and_seeds(shifted, 4, m, treatment=model)
                                  for m in ("ip", "ip_star")}
    return {"dataset": dataset, "label": label or dataset, "seeds": list(seeds), "categorical": categorical,
            "one_hot_groups": groups, "comparisons": comparisons, "ablation": ablation,
            "mechanism": {"CT": {"converged": [1.0] * len(seeds), "search_steps": [3.0] * len(seeds),
                                 "nonfinite": [0] * len(seeds)}}}


def test_the_average_row_is_the_mean_over_rows_per_seed_that_every_row_has():
    rows = [_result("circles", range(5), [10, 20, 30, 40, 50]), _result("moons", range(3), [0, 10, 20])]
    stat = tables.average_over_rows(rows, "ip")
    assert stat["seeds"] == [0, 1, 2] and stat["rows"] == 2
    per_seed = [(10 + 0) / 2, (20 + 10) / 2, (30 + 20) / 2]
    np.testing.assert_allclose(stat["mean"], np.mean(per_seed), atol=1e-9)
    half = stat["high"] - stat["mean"]
    np.testing.assert_allclose(half, 9.925 * np.std(per_seed, ddof=1) / np.sqrt(3), rtol=1e-3)  # t(0.995, 2)
    assert tables.paper_average(rows, 0) == pytest.approx((58.88 + 19.59) / 2)


def test_the_paper_average_over_its_nine_rows_is_the_papers_avg_row():
    avg = tables.paper_all_rows_average()
    assert round(avg["ip"], 1) == 15.6 and round(avg["ip_star"], 1) == 25.3 and round(avg["cost"], 1) == 18.5


def test_headline_has_one_row_per_paper_data_set_the_configs_own_one_hot_mode_and_the_average():
    results = [_result("adult", range(5), [1, 2, 3, 4, 5], label="adult (straight-through)",
                       categorical="straight_through", groups=8),
               _result("adult", range(5), [5, 6, 7, 8, 9], label="adult (relaxed, tested snap-state)", groups=8),
               _result("german", range(5), [1, 1, 1, 1, 1]),  # not a paper data set
               _result("mnist_5k", range(3), [10, 20, 30])]
    table = tables.make_headline(results)
    body = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in body] == [
        "| adult (relaxed, tested snap-state)", "| mnist_5k (the paper's mnist row)",
        "| Avg. over the 2 paper rows above"]
    assert "| 7.0 [" in body[0] and paper_results.reduction("adult", 1) in body[0]
    assert body[0].endswith("CT 1.00 / 3.0 / 0 |")
    assert "15.6 / 25.3 / 18.5" in table


def test_readme_headline_fills_its_markers_and_refuses_a_file_without_them(tmp_path):
    meta = {"command": "python -m experiments.reproduce --full", "git_commit": "0123456789abcdef", "git_dirty": False,
            "started": "2026-12-06 22:00:00", "cpu_count": 2, "device": "cpu"}
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- headline:start -->\nold\n<!-- headline:end -->\n\nafter\n")
    tables.write_readme_headline(str(readme), "| table |", meta)
    text = readme.read_text()
    assert "old" not in text and "| table |" in text and "`0123456789`" in text and text.endswith("after\n")
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n")
    with pytest.raises(ValueError, match="headline:start"):
        tables.write_readme_headline(str(bare), "| table |", meta)


def test_figure_links_draw_figure5_from_the_ablation_and_link_figure2(tmp_path):
    grid = tmp_path / "run" / "mnist_5k" / "counterfactual_grid.png"
    grid.parent.mkdir(parents=True)
    grid.write_bytes(b"png")
    rows = [_result("circles", range(3), [10, 20, 30], ablation=True),
            {**_result("mnist_5k", range(3), [1, 2, 3]),
             "figures": {"counterfactual_grid": str(grid), "training_curves": str(grid.parent / "t.png")}}]
    out = tmp_path / "experiments" / "results_figures"
    lines = tables._figure_links(rows, {}, str(out))
    assert any(line.startswith("- Figure 5") for line in lines)
    assert (out / "figure5_ablation.png").stat().st_size > 1000
    assert any("Figure 2, mnist_5k" in line and "figure2_counterfactuals_mnist_5k.png" in line for line in lines)
    assert (out / "figure2_counterfactuals_mnist_5k.png").read_bytes() == b"png"


def test_the_ablation_table_puts_the_papers_figure5_beside_ours():
    table = tables.make_ablation_table([_result("circles", range(3), [10, 20, 30], ablation=True)])
    row = next(line for line in table.splitlines() if line.startswith("| circles"))
    assert "61 / -2 / 61" in row and "91 / 33 / 97" in row


def test_plot_ablation_refuses_no_rows(tmp_path):
    with pytest.raises(ValueError, match="at least one dataset row"):
        plots.plot_ablation(tmp_path / "f.png", [])


def test_cost_verdict_sorts_rows_by_the_sign_of_their_interval_over_seeds():
    rows = [_result("circles", range(5), [10, 12, 11, 13, 12]), _result("moons", range(5), [-20, -22, -21, -19, -20]),
            _result("overlapping", range(5), [-30, 40, -10, 25, 0])]
    verdict = tables.cost_verdict(rows)
    assert "costs less on circles, more on moons, and is not distinguishable on overlapping" in verdict


def test_agreement_lines_claim_a_direction_only_when_the_interval_over_seeds_excludes_zero():
    lines = tables.agreement_lines([_result("circles", range(5), [10, 12, 11, 13, 12]),
                                       _result("moons", range(5), [-30, 40, -10, 25, 0])])
    assert "IP same direction (11.6 [" in lines[0]
    assert "IP not distinguishable from 0 over seeds" in lines[1] and "direction" not in lines[1].split(";")[0]


STORE = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "results_store", "reproduce_v3")


def _stored():
    """Returns (results, metadata) of the stored reproduction that RESULTS.md is built from."""
    with open(os.path.join(STORE, "results.json")) as f, open(os.path.join(STORE, "metadata.json")) as g:
        return json.load(f), json.load(g)


def _grid(text):
    """Returns the cells of each markdown table row of `text` (the separator row left out), in order."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.mark.parametrize("make", [tables.make_table, tables.make_ratio_table, tables.make_ig_table, tables.make_table7, tables.make_table8a,
                                  tables.make_robustness_table, tables.make_ablation_table])
def test_stored_tables_have_one_row_per_stored_result_in_order(make):
    results, _ = _stored()
    head, *rows = _grid(make(results))
    labels = [r.get("label", r["dataset"]) for r in results]
    assert [row[0] for row in rows[:len(labels)]] == labels
    assert all(len(row) == len(head) for row in rows)
    # Table 1 and 1b alone add the average over the paper rows.
    assert rows[len(labels):] == (rows[-1:] if make in (tables.make_table, tables.make_ratio_table) else [])


def test_stored_headline_and_baselines_follow_the_stored_rows():
    results, _ = _stored()
    head, *rows = _grid(tables.make_headline(results))
    paper = tables.paper_rows(results)
    assert len(rows) == len(paper) + 1 and all(len(row) == len(head) for row in rows)
    assert [row[1] for row in rows[:-1]] == [str(len(r["seeds"])) for r in paper]
    head, *rows = _grid(tables.make_baselines_table(results))
    expected = [(r["label"], m) for r in results if r.get("versus") for m in tables.BASELINE_MODELS
                if m in r["means"]]
    assert [(row[0], row[1]) for row in rows] == expected and all(len(row) == len(head) for row in rows)
    assert len(tables.agreement_lines(results)) == len(results)


def test_stored_all_tables_has_a_section_per_table_of_the_stored_run():
    results, meta = _stored()
    text = tables.all_tables(results, ablation=any(r.get("ablation") for r in results), figure1=meta.get("figure1"),
                             baselines=False)
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert [s.split(":")[0] for s in sections[:5]] == ["## Table 1", "## Table 1b", "## Table 2", "## Table 7",
                                                        "## Table 8a"]
    assert ("## Ablation (paper Fig. 5)" in sections) == any(r.get("ablation") for r in results)
    assert ("## Figure 1: linear models" in sections) == bool(meta.get("figure1"))
    assert not any(s.startswith("## Baselines") for s in sections)


def _as_stored_before_round_reductions(res):
    """Returns `res` with the per-seed round reductions taken out, as results stored before them read."""
    for per_metric in res["comparisons"].values():
        for cmp in per_metric.values():
            for key in ("round_reduction", "per_seed_round_reduction_pct", "per_seed_n_rounds", "round_significant"):
                cmp["seeds"].pop(key, None)
    return res


def _heavy_tailed(seeds_rounds):
    """Returns a row whose seeds' rounds (CT, BL) make the round estimator and the ratio of means differ."""
    per_seed = [[row for r, (t, b) in enumerate(rounds) for row in ({"model": "CT", "round": r, **{m: t for m in METRICS}},
                                                                    {"model": "BL", "round": r, **{m: b for m in METRICS}})]
                for rounds in seeds_rounds]
    n = len(seeds_rounds[0])
    compare = {m: compared_over_rounds_and_seeds(per_seed, n, m, treatment="CT") for m in ("ip", "ip_star")}
    compare["cost_protected"] = compared_over_rounds_and_seeds(per_seed, n, "cost", treatment="CT")
    return {"dataset": "circles", "label": "circles", "seeds": list(range(len(per_seed))), "categorical": "relaxed",
            "one_hot_groups": 0, "comparisons": {"CT": compare}, "ablation": False, "protocol_rounds": n,
            "mechanism": {}, "validity": {}, "accuracy": {}}


HEAVY = [[(1.0, 10.0), (2.0, 0.1)], [(1.0, 2.0), (1.0, 2.0)], [(3.0, 4.0), (1.0, 1.0)]]


def _row_cells(table, label="circles"):
    return next(row for row in _grid(table) if row[0] == label)


def test_table1_prints_the_papers_estimator_over_seeds_and_table1b_the_ratio_of_means():
    res = _heavy_tailed(HEAVY)
    seeds = res["comparisons"]["CT"]["ip"]["seeds"]
    round_means = [-(np.mean([t / b for t, b in rounds]) - 1) * 100 for rounds in HEAVY]
    np.testing.assert_allclose(seeds["per_seed_round_reduction_pct"], round_means)
    cell = _row_cells(tables.make_table([res]))[2]
    assert cell.startswith(f"{np.mean(round_means):.1f} [") and "Interval needs a rerun" not in tables.make_table([res])
    ratio_cell = _row_cells(tables.make_ratio_table([res]))[2]
    assert ratio_cell.startswith(f"{seeds['reduction']['mean']:.1f} [")
    assert ratio_cell.split(" [")[0] != cell.split(" [")[0]  # the two estimators differ on this heavy tail


def test_results_stored_without_round_reductions_show_the_pooled_estimate_and_no_interval():
    res = _as_stored_before_round_reductions(_heavy_tailed(HEAVY))
    table = tables.make_table([res])
    cmp = res["comparisons"]["CT"]["ip"]
    assert _row_cells(table)[2] == f"{cmp['reduction_pct']:.1f} [1]"
    assert "Interval needs a rerun" in table and "every seed has all its 2 rounds paired (6 = 3 × 2)" in table
    # A seed with a round left unpaired: the pooled estimate weights seeds by rounds, and the note says so.
    res = _heavy_tailed(HEAVY)
    res["comparisons"]["CT"]["ip"]["n_rounds"] = 5
    table = tables.make_table([_as_stored_before_round_reductions(res)])
    assert "5 of 3 × 2 paired" in table and "need not equal" in table


def test_the_average_row_of_rows_stored_without_round_reductions_is_pooled_and_unmarked():
    rows = [_as_stored_before_round_reductions(_result("circles", range(5), [10, 20, 30, 40, 50])),
            _result("moons", range(5), [0, 10, 20, 30, 40])]
    stat = tables.average_over_rows(rows, "ip")
    assert stat["mean"] is None and stat["low"] is None
    assert stat["pooled"] == pytest.approx((30 + 20) / 2)
    for row in rows:
        row.update(validity={}, accuracy={})
    avg = next(line for line in tables.make_table(rows).splitlines() if line.startswith("| Avg."))
    assert "| 25.0 [" in avg and "*" not in avg


def test_table2_counts_the_seeds_where_ct_is_less_sensitive():
    res = _result("circles", range(4), [1, 2, 3, 4])
    res.update(protected=["x0"], ig={"CT": {"median": 0.2, "ci_low": 0.1, "ci_high": 0.3, "seed_medians": [0.1, 0.5, 0.2, 0.3]},
                                     "BL": {"median": 0.3, "ci_low": 0.2, "ci_high": 0.4, "seed_medians": [0.2, 0.4, 0.3, 0.4]}},
               ig_difference_over_seeds={"n": 4, "mean": -0.05, "low": -0.2, "high": 0.1, "significant": False})
    table = tables.make_ig_table([res])
    assert "CT < BL in 3 of 4 seeds" in _row_cells(table)[5]
    assert "not distinguishable on circles (CT < BL in 3 of 4 seeds)" in table


def test_settings_that_differ_from_the_paper_row_are_read_from_the_configs():
    from experiments.configs import get_config
    lines = tables.settings_lines([_result("mnist_5k", range(3), [1, 2, 3]), _result("moons", range(3), [1, 2, 3])])
    assert len(lines) == 1 and lines[0].startswith("- mnist_5k:")
    ours, paper = get_config("mnist_5k"), get_config("mnist")
    assert f"train.n_ce {ours.train.n_ce} (paper's mnist row: {paper.train.n_ce})" in lines[0]
    assert f"sensitivity.samples {ours.sensitivity.samples} (paper's mnist row: {paper.sensitivity.samples})" in lines[0]
    # A stored config is read before the current one.
    stored = {**_result("mnist_5k", range(3), [1, 2, 3]), "config": {**ours.to_dict(), "seeds": [7]}}
    assert "seeds [7]" in tables.settings_lines([stored])[0] and "its stored config" in tables.settings_lines([stored])[0]


def test_onehot_effects_print_each_modes_stored_fgsm_accuracy_and_cost():
    rows = []
    for label, categorical, fgsm, reductions in (("adult (relaxed)", "relaxed", 0.7, [1, 2, 3]),
                                                  ("adult (straight-through)", "straight_through", 0.2, [40, 50, 60])):
        res = _result("adult", range(3), reductions, label=label, categorical=categorical, groups=8)
        res["comparisons"]["CT"]["cost"] = res["comparisons"]["CT"]["cost_protected"]
        res["robustness"] = {"CT": {"fgsm": {"epsilon": [0.0, 0.1], "mean": [0.9, fgsm]}}}
        rows.append(res)
    (line,) = tables.onehot_effect_lines(rows + [_result("moons", range(3), [1, 2, 3])])
    assert "adult (relaxed): CT's FGSM accuracy 0.70 at ε = 0.1, Table 8a cost −% 2.0 [" in line
    assert "adult (straight-through): CT's FGSM accuracy 0.20 at ε = 0.1, Table 8a cost −% 50.0 [" in line
    assert tables.onehot_effect_lines(rows[:1]) == []  # one mode alone: no comparison to print
    assert "adult (relaxed): ecco, the reference's training search, one-hot mode relaxed" in tables.training_search_text(
        [{**rows[0], "generator": "ecco"}])


def test_tables_only_rebuilds_the_committed_results_md_from_the_stored_run(tmp_path):
    """The stored reproduction (per-row files, no run folders' configs, figures named by another machine's paths)
    rebuilds RESULTS.md as committed, apart from the lines that name the commit and command of the rebuild."""
    root = pathlib.Path(__file__).resolve().parents[1]
    shutil.copytree(root / "experiments" / "results_store" / "reproduce_v3", tmp_path / "out")
    shutil.copytree(root / "experiments" / "results_figures", tmp_path / "experiments" / "results_figures")
    shutil.copy(root / "RESULTS.md", tmp_path / "RESULTS.md")
    reproduce.main(["--tables-only", "--out", str(tmp_path / "out"), "--results-md", str(tmp_path / "RESULTS.md")])
    keep = lambda text: [line for line in text.splitlines() if "Tables rebuilt from" not in line]
    assert keep((tmp_path / "RESULTS.md").read_text()) == keep((root / "RESULTS.md").read_text())
