"""The markdown of a reproduction: pure functions from stored results (a list of result dicts, and metadata.json's
dict) to text, Table 1, 2, 7, 8a, robustness, ablation, the README headline, the agreement lines, the baselines
table and its study text, Figure 1's sentence and the figure links, and the writers of RESULTS.md, the README's
headline section and the baselines study file that put that text in place.

`experiments.reproduce` runs the rows and stores them; everything here reads what it stored, so
`python -m experiments.reproduce --tables-only` rebuilds the same text from results.json and metadata.json.
"""
from __future__ import annotations

import math
import os

from ctrain.evaluate import seed_interval
from ctrain.storage import write_atomic
from experiments import paper_results, plots
from experiments.configs import CONFIGS, flat_dict, get_config
from experiments.results_md import interval_text, marked_sections, write_section

NOTES = """\
- Seeds: the paper trains one model per configuration (global seed 2025) and its ± and * come from bootstrap
  rounds of one test set for that model. Here every reduction is first taken per training seed (CT against the
  BL of the same seed and initial weights), and the interval and mark are over seeds; the paper's round
  statistic stays beside it, over the seeds' pooled rounds.
- IP* uses a Gaussian kernel with length scale {length_scale} (the reference code's default is 5.0, the
  paper's text says 0.5) and clamps negative estimates at 0, as the reference does.
- Synthetic data are generated in-package with MLJBase's formulas (blob centres drawn in (−10, 10)², moons
  (cos θ + 1, 0.3 − sin θ), noise 0.1) from NumPy seeds; the reference's exact samples (Julia, seed 42)
  cannot be regenerated here.
- One-hot groups (Adult, German): "relaxed" rows follow the reference on three counts: training searches
  the one-hot columns as continuous features, inside the reference's domain (μ ± 2σ widened to the data's
  range, so a column may leave [0, 1]), and the protocol tests with the search state snapped to a category
  after every step ("tested snap-state"), because the reference's test-time data declare their categorical
  features. "straight-through" rows are ctrain's converging mode, trained and tested that way.
- mnist_5k is the paper's MNIST configuration on the 5,000-image subset that ships offline (4,000 train /
  1,000 test instead of 10,000 / 10,000), compared with the paper's MNIST row.
- IG sensitivity (Table 2) scores the models of the actionability runs (BL, and CT trained with the
  protected features), as the reference does, on {ig_rounds} bootstrap rounds of {ig_samples} test rows per
  seed, pooled over seeds.
- The ECCo energy schedule uses b = max(1, round(T/25)); identical to the reference for T = 30 and 50.
- Tabular loaders drop rows with missing values and split by seed; the reference split Adult by row order.
- Cost with protected feature: CT is retrained with the protected features immutable (CT_mut) and both models
  are evaluated with τ = 0.5 under the same constraints. CT_mut's λ's are the reference's recorded mutability
  configs': λ_adv = λ_reg = 0 on the synthetic sets, CT's own elsewhere (experiments/configs.py cites the files).
- Accuracy (paper) for synthetic sets comes from the grid-search tables, for real sets from Fig. 4.
- Table 2 for 2-D data is |ḡ_x0| / (max ḡ − min ḡ), unbounded when the two mean attributions are close: the
  paper's own 95% intervals for BL span 12.9–629 and 8.3–466 on linearly separable and overlapping.
- Actionability (the cost column, Table 2, Figure 1) depends on each data draw's geometry and on the training
  search: experiments/studies/actionability/README.md measures it over 20 draws per blob set, with the
  reason, and tests/test_proposition.py pins Proposition 3.1 down on Gaussian classes.
- MNIST's 5k subset has 4 batches per epoch against MNIST's 10, so 100 epochs make 400 parameter updates instead
  of the reference's 1,000 (`--set train.epochs=250` matches them).
- Robust accuracy is read at ε = 0.1 of each dataset's own units; on the synthetic sets (feature scales of
  several units) no model loses accuracy there, so those rows carry no information about robustness.
"""


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _note(notes: list[str], text: str) -> int:
    """Returns the 1-based number of `text` in `notes`, appending it when it is new (one note serves many cells)."""
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1


def protocol_rounds(res: dict) -> tuple[int, str]:
    """Returns (protocol rounds per seed of a row, where that number comes from): its stored "protocol_rounds", else
    its dataset config's protocol.n_rounds (results stored before rows recorded it)."""
    if res.get("protocol_rounds"):
        return int(res["protocol_rounds"]), "stored"
    return get_config(res["dataset"]).protocol.n_rounds, "the row's config, which the stored row does not record"


def pooled_note(cmp: dict, n_seeds: int, rounds: tuple[int, str]) -> str:
    """Returns the note of a cell stored without per-seed round reductions: what its pooled estimate is, and why."""
    n, (r, source) = cmp.get("n_rounds"), rounds
    where = f"; rounds per seed from {source}" if source != "stored" else ""
    if n == n_seeds * r:
        return (f"stored before the per-seed round reductions: the mean of the per-round reductions over the seeds' "
                f"pooled rounds; every seed has all its {r} rounds paired ({n} = {n_seeds} × {r}{where}), so it "
                "equals the mean over seeds of the per-seed round means. Interval needs a rerun.")
    return (f"stored before the per-seed round reductions: the mean of the per-round reductions over the seeds' pooled "
            f"rounds, {n} of {n_seeds} × {r} paired{where}, and the per-seed counts not stored, so it weights seeds by "
            "their paired rounds and need not equal the mean over seeds of the per-seed round means. Interval needs "
            "a rerun.")


def _cell(cmp: dict | None, notes: list[str], where: str, full: tuple = (0, (0, "stored"))) -> str:
    """Returns the paper's estimator over seeds, "mean [seed interval]* (±round s.e.)"; for results stored without
    it the pooled point estimate with a note (`full` = (seeds, rounds per seed)); or "n/a [note]"."""
    seeds = ((cmp or {}).get("seeds") or {}).get("round_reduction") or {}
    if _finite(seeds.get("mean")):
        se = f" (±{cmp['se_pct']:.1f})" if _finite(cmp.get("se_pct")) else ""
        return interval_text(seeds) + se
    if cmp and _finite(cmp.get("reduction_pct")):  # results saved before per-seed round reductions: no interval
        return f"{cmp['reduction_pct']:.1f} [{_note(notes, pooled_note(cmp, *full))}]"
    notes.append(f"{where}: {(cmp or {}).get('note') or 'not computed'}")
    return f"n/a [{len(notes)}]"


def _full(res: dict) -> tuple[int, tuple[int, str]]:
    return len(res.get("seeds", [])), protocol_rounds(res)


def reduction_stat(cmp: dict | None) -> tuple[dict, str]:
    """Returns (seed interval, its estimator's name): the paper's round estimator, or the ratio of means for results
    stored before it."""
    seeds = (cmp or {}).get("seeds") or {}
    if _finite((seeds.get("round_reduction") or {}).get("mean")):
        return seeds["round_reduction"], "mean of per-round reductions"
    return seeds.get("reduction") or {}, "ratio of means"


def _mean(value):
    if isinstance(value, list):
        value = [v for v in value if _finite(v)]
        return sum(value) / len(value) if value else None
    return value if _finite(value) else None


def _pair(values: dict, key_a: str = "CT", key_b: str = "BL", fmt: str = "{:.3f}") -> str:
    show = lambda v: "n/a" if v is None else fmt.format(v)
    return f"{show(_mean(values.get(key_a)))} / {show(_mean(values.get(key_b)))}"


def _health(res: dict, label: str) -> tuple[float | None, float | None, int | None]:
    """Returns (share of matured training CFs in the last epoch, their mean search steps, updates skipped) of a model."""
    h = res.get("mechanism", {}).get(label)
    if not h:
        return None, None, None
    return _mean(h.get("converged", [])), _mean(h.get("search_steps", [])), int(sum(h.get("nonfinite", [])))


def _mechanism_cell(res: dict, labels=("CT",)) -> str:
    """Returns "mature / steps / skipped" per CF-trained model ("CT 0.98 / 3.1 / 0; CT_mut …" for several)."""
    parts = []
    for label in labels:
        converged, steps, skipped = _health(res, label)
        if converged is None and steps is None:
            continue
        text = (f"{'n/a' if converged is None else f'{converged:.2f}'} / "
                f"{'n/a' if steps is None else f'{steps:.1f}'} / {skipped}")
        parts.append(text if len(labels) == 1 else f"{label} {text}")
    return "; ".join(parts) or "–"


HEALTH_SHORT = "Mature / steps / skipped as in Table 1."
REDUCTION_TEXT = ("Ours: CT vs BL in % (positive = CT better) by the paper's estimator: per training seed the mean "
                  "over that seed's protocol rounds of the per-round reduction −(CT_j / BL_j − 1)·100 (CT against "
                  "the BL of the same seed and initial weights), then the mean over seeds [99% Student-t interval "
                  "over seeds]; * = that interval excludes 0, so the mark and the interval are one statistic. (±): "
                  "the paper's s.e. of the per-round ratio over the seeds' pooled protocol rounds; the rounds "
                  "re-sample one test set for fixed models, so it says nothing about another training seed and "
                  "carries no mark. The per-seed ratio of means, −(mean_j CT_j / mean_j BL_j − 1)·100, is in Table 1b.")
HEALTH_TEXT = ("Mature / steps / skipped: the share of the CF-trained model's training counterfactuals that reached "
               "τ in the last epoch, their mean search steps (means over seeds), and the updates skipped over the "
               "whole run for a non-finite loss or gradient (sum over seeds); CT_mut is CT trained with the protected "
               "features immutable.")


def _with_notes(lines: list[str], notes: list[str]) -> str:
    if notes:
        lines += ["", "Notes:", *(f"[{i}] {note}" for i, note in enumerate(notes, 1))]
    return "\n".join(lines)


def _paper_pair(table: dict, result: dict) -> str:
    value = table.get(paper_results.row(result))
    return "%.2f / %.2f" % value if value else "–"


# Table 1's reduction columns: (comparison key, name, column of paper_results.TABLE1).
REDUCTIONS = (("ip", "IP", 0), ("ip_star", "IP*", 1), ("cost_protected", "cost with protected features", 2))


def average_over_rows(rows: list[dict], metric: str, key: str = "per_seed_round_reduction_pct",
                      model: str = "CT") -> dict:
    """Returns the `seed_interval` of the rows' average reduction: per training seed that every row has, the mean
    over rows of that seed's reduction `key` (each seed trains every row afresh, so it replicates the whole average).

    Rows stored without `key` give no interval: then "pooled" is the mean over rows of their pooled `reduction_pct`
    and every other figure is None.
    """
    per_row = []
    for res in rows:
        seeds = ((res["comparisons"].get(model, {}).get(metric) or {}).get("seeds") or {})
        per_row.append({s: v for s, v in zip(res.get("seeds", []), seeds.get(key) or []) if _finite(v)})
    if per_row and not all(per_row):
        pooled = [(res["comparisons"].get(model, {}).get(metric) or {}).get("reduction_pct") for res in rows]
        out = seed_interval([])
        return {**out, "seeds": [], "rows": len(per_row), "note": f"{key} not stored for every row",
                "pooled": sum(pooled) / len(pooled) if all(_finite(v) for v in pooled) else None}
    common = sorted(set.intersection(*(set(d) for d in per_row))) if per_row else []
    out = seed_interval([sum(d[s] for d in per_row) / len(per_row) for s in common])
    return {**out, "seeds": common, "rows": len(per_row), "pooled": None}


def _average_cell(stat: dict, notes: list[str]) -> str:
    """Returns the Avg. row's cell: the interval over seeds, or the pooled point estimate with its note."""
    if _finite(stat.get("mean")) or not _finite(stat.get("pooled")):
        return interval_text(stat)
    return f"{stat['pooled']:.1f} [{_note(notes, AVERAGE_POOLED_NOTE)}]"


AVERAGE_POOLED_NOTE = ("Avg.: the rows were stored before the per-seed round reductions, so this is the mean over rows "
                       "of their pooled point estimates; interval needs a rerun.")


def paper_average(rows: list[dict], column: int) -> float | None:
    """Returns the mean of the paper's Table 1 reductions in `column` over the paper rows of `rows` (None if none)."""
    values = [paper_results.TABLE1[paper_results.row(r)][column][0] for r in rows
              if paper_results.row(r) in paper_results.TABLE1]
    return sum(values) / len(values) if values else None


def paper_rows(all_results: list[dict]) -> list[dict]:
    """Returns one result per paper data set run: the row of the config's own one-hot modes where there are several."""
    chosen = {}
    for res in all_results:
        key = paper_results.row(res)
        if key not in paper_results.TABLE1:
            continue
        own = get_config(res["dataset"])
        is_own = (not res.get("one_hot_groups")
                  or res.get("categorical") == own.train.search.categorical)
        if key not in chosen or is_own:
            chosen[key] = res
    return [chosen[k] for k in paper_results.TABLE1 if k in chosen]


def _average_line(rows: list[dict], n_columns: int, notes: list[str]) -> str:
    """Returns Table 1's "Avg." row over the paper rows run: ours over seeds beside the paper's over the same rows."""
    stats = {metric: average_over_rows(rows, metric) for metric, _, _ in REDUCTIONS}
    cells = []
    for metric, _, column in REDUCTIONS:
        paper = paper_average(rows, column)
        cells += [_average_cell(stats[metric], notes), "–" if paper is None else f"{paper:.2f}"]
    seeds = len(stats["ip"]["seeds"]) or "–"
    return (f"| Avg. over the {len(rows)} paper rows above | {seeds} | " + " | ".join(cells)
            + " |" + " |" * (n_columns - 8))


PAPER_AVERAGE_TEXT = ("Avg.: ours is the mean over the paper rows run (one per paper data set: its config's own one-hot "
                      "mode), per training seed that every row has, [99% Student-t interval over those seeds]; the "
                      "paper's is its own reductions averaged over the same rows. The paper's average over all nine "
                      "of its rows is {ip:.1f} / {ip_star:.1f} / {cost:.1f} (IP / IP* / cost, protected).")


def paper_all_rows_average() -> dict:
    """Returns the paper's Table 1 averages over its nine rows: {"ip", "ip_star", "cost"}."""
    rows = list(paper_results.TABLE1.values())
    return {name: sum(r[i][0] for r in rows) / len(rows) for i, name in enumerate(("ip", "ip_star", "cost"))}


def make_headline(all_results: list[dict]) -> str:
    """Returns the README's results table: per paper data set run, IP, IP* and cost with protected features, ours
    (over seeds) beside the paper's, the seeds and the mechanism's health; then the average row."""
    rows = paper_rows(all_results)
    if not rows:
        return "No paper data set in these results."
    lines = ["| Data | Seeds | IP −% (ours) | IP −% (paper) | IP* −% (ours) | IP* −% (paper) | Cost, protected −% "
             "(ours) | Cost −% (paper) | Mature / steps / skipped (CT; CT_mut) |", "|" + "---|" * 9]
    notes: list[str] = []
    for res in rows:
        label = res.get("label", res["dataset"])
        if paper_results.row(res) not in (None, res["dataset"]):
            label += f" (the paper's {paper_results.row(res)} row)"
        ct = res["comparisons"].get("CT", {})
        cells = []
        for metric, name, column in REDUCTIONS:
            cells += [_cell(ct.get(metric), notes, f"{label}, {name}", _full(res)),
                      paper_results.reduction(res, column)]
        lines.append(f"| {label} | {len(res.get('seeds', []))} | " + " | ".join(cells)
                     + f" | {_mechanism_cell(res, ('CT', 'CT_mut'))} |")
    lines.append(_average_line(rows, 9, notes))
    lines += ["", REDUCTION_TEXT + " " + PAPER_AVERAGE_TEXT.format(**paper_all_rows_average()) + " " + HEALTH_TEXT
              + " Every table, and where and why ours differ from the paper: RESULTS.md.", "",
              training_search_text(all_results), *([""] + settings_lines(rows) if settings_lines(rows) else [])]
    return _with_notes(lines, notes)


def training_search_text(all_results: list[dict]) -> str:
    """Returns the sentence naming the training search and the one-hot mode of each paper row of the headline."""
    from ctrain.search import SearchConfig
    parts = []
    for res in paper_rows(all_results):
        search = get_config(res["dataset"]).train.search
        reference = search == SearchConfig.reference(threshold=search.threshold, categorical=search.categorical)
        mode = f", one-hot mode {res['categorical']}" if res.get("one_hot_groups") else ""
        parts.append(f"{res.get('label', res['dataset'])}: {res.get('generator', 'n/a')}, "
                     f"{'the reference' if reference else 'not the reference'}'s training search{mode}")
    return ("Training search per row (the stored generator and one-hot mode; the search from the row's config, "
            "`SearchConfig.reference` in experiments/configs.py, not the library default of the API tour): "
            + "; ".join(parts) + ".")


# Paths that a config scaled for its run but that do not change what the paper's row measures.
_NOT_A_SETTING = ("data.name", "expected_minutes")


def settings_differences(res: dict) -> list[str]:
    """Returns "path ours (paper's row: theirs)" for each config setting in which a row differs from its paper row's."""
    row = paper_results.row(res)
    if row == res["dataset"] or row not in CONFIGS:
        return []
    ours = flat_dict(res["config"]) if res.get("config") else flat_dict(get_config(res["dataset"]))
    theirs = flat_dict(get_config(row))
    return [f"{k} {ours[k]} (paper's {row} row: {theirs.get(k)})" for k in sorted(ours)
            if k not in _NOT_A_SETTING and ours[k] != theirs.get(k)]


def settings_lines(all_results: list[dict]) -> list[str]:
    """Returns one line per row run on other data than its paper row's, listing the settings that differ."""
    lines = []
    for res in all_results:
        diff = settings_differences(res)
        if diff:
            source = "its stored config" if res.get("config") else (
                "its config in experiments/configs.py at the tables' commit (the stored row does not record it)")
            lines.append(f"- {res.get('label', res['dataset'])}: settings that differ from the paper's, from {source}: "
                         + "; ".join(diff) + ".")
    return lines


def onehot_effect_lines(all_results: list[dict]) -> list[str]:
    """Returns, per data set stored in several one-hot modes, each mode's CT FGSM accuracy and Table 8a cost reduction."""
    by_dataset: dict[str, list[dict]] = {}
    for res in all_results:
        if res.get("one_hot_groups"):
            by_dataset.setdefault(res["dataset"], []).append(res)
    lines = []
    for dataset, rows in by_dataset.items():
        if len(rows) < 2:
            continue
        parts = []
        for res in rows:
            curve = ((res.get("robustness") or {}).get("CT") or {}).get("fgsm") or {}
            fgsm = (f"CT's FGSM accuracy {curve['mean'][-1]:.2f} at ε = {curve['epsilon'][-1]:g}"
                    if curve.get("mean") else "no FGSM curve stored")
            cost = res["comparisons"].get("CT", {}).get("cost") or {}
            stat, _ = reduction_stat(cost)
            paper_est = ((cost.get("seeds") or {}).get("round_reduction") or {})
            cost_text = (f"Table 8a cost −% {interval_text(paper_est)}" if _finite(paper_est.get("mean")) else
                         f"Table 8a cost −% {cost['reduction_pct']:.1f} (pooled; interval needs a rerun)"
                         if _finite(cost.get("reduction_pct")) else "no Table 8a cost stored")
            parts.append(f"{res.get('label', dataset)}: {fgsm}, {cost_text}")
        lines.append(f"- One-hot modes of {dataset}, from the stored rows (same seeds; they differ in the training one-hot mode "
                     "and the test-time search their labels name): "
                     + "; ".join(parts) + ".")
    return lines


def write_readme_headline(path: str, headline: str, meta: dict) -> None:
    """Rewrites the README's <!-- headline --> section with the headline table and the command that made it."""
    tables = f" (tables by `{meta['tables_command']}`{_tables_commit(meta)})" if meta.get("tables_command") else ""
    text = (f"{headline}\n\nMade by `{meta['command']}`{tables} at commit `{meta['git_commit'][:10]}`"
            f"{' (with uncommitted changes)' if meta.get('git_dirty') else ''} on {meta['started'][:10]}, "
            f"{meta['cpu_count']} CPUs ({meta['device']}).")
    body = open(path).read()
    if "<!-- headline:start -->" not in body or "<!-- headline:end -->" not in body:
        raise ValueError(f"--readme {path!r} has no <!-- headline:start --> / <!-- headline:end --> markers to fill")
    write_section(path, "headline", text)


def make_table(all_results: list[dict]) -> str:
    """Returns the markdown table in the layout of the paper's Table 1, ours beside the paper's, with its notes."""
    head = ("| Data | Seeds | IP −% (ours) | IP −% (paper) | IP* −% (ours) | IP* −% (paper) "
            "| Cost, protected −% (ours) | Cost −% (paper) | Validity CT / BL (ours) | Validity (paper) "
            "| Accuracy CT / BL (ours) | Accuracy (paper) | Mature / steps / skipped, CT "
            "| Mature / steps / skipped, CT_mut |")
    lines, notes = [head, "|" + "---|" * 14], []
    for res in all_results:
        label = res.get("label", res["dataset"])
        ct = res["comparisons"].get("CT", {})
        columns = (("ip", "IP"), ("ip_star", "IP*"), ("cost_protected", "cost with protected features"))
        cells = [_cell(ct.get(m), notes, f"{label}, {name}", _full(res)) for m, name in columns]
        lines.append(
            f"| {label} | {len(res.get('seeds', []))} | {cells[0]} | {paper_results.reduction(res, 0)} | {cells[1]} "
            f"| {paper_results.reduction(res, 1)} | {cells[2]} | {paper_results.reduction(res, 2)} "
            f"| {_pair(res['validity'], fmt='{:.2f}')} | {_paper_pair(paper_results.VALIDITY, res)} "
            f"| {_pair(res['accuracy'])} | {_paper_pair(paper_results.ACCURACY, res)} "
            f"| {_mechanism_cell(res, ('CT',))} | {_mechanism_cell(res, ('CT_mut',))} |")
    rows = paper_rows(all_results)
    if rows:
        lines.append(_average_line(rows, 14, notes))
    lines.append("")
    lines.append(REDUCTION_TEXT + " The paper's columns are its own: its ± and * come from one trained model's "
                 "bootstrap rounds. " + (PAPER_AVERAGE_TEXT.format(**paper_all_rows_average()) + " " if rows else "")
                 + HEALTH_TEXT)
    verdict = cost_verdict(all_results)
    if verdict:
        lines += ["", verdict]
    return _with_notes(lines, notes)


# Table 1b's columns: (model, metric, name); CD and AR only for rows with the ablation.
RATIO_COLUMNS = (("CT", "ip", "IP"), ("CT", "ip_star", "IP*"), ("CT", "cost_protected", "cost, protected"),
                 ("CT", "cost", "cost (Table 8a)"))
RATIO_ABLATION = (("CD", "ip", "IP, CD"), ("AR", "ip", "IP, AR"), ("CD", "ip_star", "IP*, CD"),
                  ("AR", "ip_star", "IP*, AR"))


def make_ratio_table(all_results: list[dict]) -> str:
    """Returns Table 1b: per row the ratio-of-means reductions over seeds of Table 1, Table 8a and the ablation."""
    columns = RATIO_COLUMNS + (RATIO_ABLATION if any(r.get("ablation") for r in all_results) else ())
    lines = ["| Data | Seeds | " + " | ".join(f"{name} −%" for _, _, name in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for res in all_results:
        cells = [interval_text(((res["comparisons"].get(model, {}).get(metric) or {}).get("seeds") or {})
                               .get("reduction") or {}) for model, metric, _ in columns]
        lines.append(f"| {res.get('label', res['dataset'])} | {len(res.get('seeds', []))} | " + " | ".join(cells) + " |")
    rows = paper_rows(all_results)
    if rows:
        cells = [interval_text(average_over_rows(rows, metric, "per_seed_reduction_pct", model)) if model == "CT"
                 and metric != "cost" else "–" for model, metric, _ in columns]
        lines.append(f"| Avg. over the {len(rows)} paper rows | "
                     f"{len(average_over_rows(rows, 'ip', 'per_seed_reduction_pct')['seeds'])} | " + " | ".join(cells)
                     + " |")
    lines += ["", "The ratio of means, not the paper's estimator: per training seed −(mean_j CT_j / mean_j BL_j − 1)·100 "
              "over the seed's paired rounds j, then the mean over seeds [99% Student-t interval over seeds]; * = it "
              "excludes 0. It weights rounds by their BL value, so it and the paper's mean of per-round reductions "
              "(Table 1) differ where the per-round ratio is heavy-tailed. CD and AR: the ablation's models against BL."]
    return "\n".join(lines)


def _ig_cell(entry: dict | None, notes: list[str], where: str) -> str:
    if entry and _finite(entry.get("median")):
        show = lambda v: f"{v:.2f}" if _finite(v) else "∞"
        cell = f"{show(entry['median'])} [{show(entry.get('ci_low'))}, {show(entry.get('ci_high'))}]"
        if entry.get("n_infinite"):
            notes.append(f"{where}: {entry.get('note', '')}")
            cell += f" [{len(notes)}]"
        return cell
    notes.append(f"{where}: {(entry or {}).get('note') or 'not computed'}")
    return f"n/a [{len(notes)}]"


def make_ig_table(all_results: list[dict]) -> str:
    """Returns the paper's Table 2: median standardised IG sensitivity to the protected features [95% CI], CT vs BL."""
    lines = ["| Data | Protected | Seeds | CT (ours) | BL (ours) | CT − BL over seeds (ours) | CT (paper) | BL (paper) "
             "| Mature / steps / skipped, CT_mut |", "|" + "---|" * 9]
    notes: list[str] = []
    for res in all_results:
        if not res.get("ig"):
            continue
        label = res.get("label", res["dataset"])
        paper = paper_results.TABLE2.get(paper_results.row(res))
        fmt = lambda t: f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"
        protected = ", ".join(res["protected"]) if len(res["protected"]) <= 3 else f"{len(res['protected'])} features"
        over_seeds = res.get("ig_difference_over_seeds") or {}
        lower, counted = seeds_lower(res)
        lines.append(f"| {label} | {protected} | {len(res.get('seeds', []))} "
                     f"| {_ig_cell(res['ig'].get('CT'), notes, f'{label}, CT')} "
                     f"| {_ig_cell(res['ig'].get('BL'), notes, f'{label}, BL')} "
                     f"| {interval_text(over_seeds, 2) if _finite(over_seeds.get('mean')) else '–'}"
                     f"{f'; CT < BL in {lower} of {counted} seeds' if counted else ''} "
                     f"| {fmt(paper[0]) if paper else '–'} | {fmt(paper[1]) if paper else '–'} "
                     f"| {_mechanism_cell(res, ('CT_mut',))} |")
    lines += ["", "Median over bootstrap rounds (each: test rows drawn with replacement, a U(−1, 1) baseline per row, "
              "integrated gradients of the true class's logit averaged over the round, standardised across features "
              "— |g| / (max g − min g) for 2-D data, (g − min g) / (max g − min g) otherwise — and averaged over the "
              "protected features) with the 2.5% and 97.5% quantiles, all seeds' rounds pooled; lower = less "
              "sensitive. CT − BL over seeds: the mean over seeds of CT's median minus BL's (each seed's own rounds) "
              "[99% Student-t interval over seeds]; * = it excludes 0. CT is the model trained with the protected "
              "features immutable (CT_mut), as in the reference. " + HEALTH_SHORT, "", table2_verdict(all_results)]
    return _with_notes(lines, notes)


def seeds_lower(res: dict) -> tuple[int, int]:
    """Returns (seeds where CT's median IG sensitivity is below BL's, seeds with both medians) of a row."""
    ig = res.get("ig") or {}
    pairs = [(c, b) for c, b in zip((ig.get("CT") or {}).get("seed_medians") or [],
                                   (ig.get("BL") or {}).get("seed_medians") or []) if _finite(c) and _finite(b)]
    return sum(c < b for c, b in pairs), len(pairs)


def _rows_by_sign(all_results: list[dict], stat_of) -> tuple[list[str], list[str], list[str]]:
    """Returns the labels of rows whose interval over seeds (`stat_of(res)`) lies below 0, above 0, or spans 0."""
    below, above, spans = [], [], []
    for res in all_results:
        stat = stat_of(res) or {}
        if not _finite(stat.get("mean")):
            continue
        label = res.get("label", res["dataset"])
        if stat.get("significant"):
            (below if stat["mean"] < 0 else above).append(label)
        else:
            spans.append(label)
    return below, above, spans


def _names(rows: list[str]) -> str:
    return ", ".join(rows) if rows else "no row"


def cost_verdict(all_results: list[dict]) -> str:
    """Returns a sentence saying on which rows CT_mut's cost with protected features is lower than BL's over seeds."""
    stat_of = lambda res: reduction_stat(res["comparisons"].get("CT", {}).get("cost_protected"))
    dearer, cheaper, unclear = _rows_by_sign(all_results, lambda res: stat_of(res)[0])
    if not (dearer or cheaper or unclear):
        return ""
    names = sorted({stat_of(res)[1] for res in all_results if _finite(stat_of(res)[0].get("mean"))})
    return (f"Against the paper's actionability claim (CT's counterfactuals cost less than BL's with the protected "
            f"features immutable), over seeds (by the {' and '.join(names)} per seed): CT costs less on {_names(cheaper)}, more on {_names(dearer)}, and is "
            f"not distinguishable on {_names(unclear)}. Why the direction depends on the data's geometry, the energy "
            "regulariser and the training search: experiments/studies/actionability/README.md (and "
            "tests/test_proposition.py for Proposition 3.1's known answers).")


def table2_verdict(all_results: list[dict]) -> str:
    """Returns a sentence saying on which rows CT is less sensitive to the protected features than BL, and why not."""
    lower, higher, unclear = _rows_by_sign(all_results, lambda res: res.get("ig_difference_over_seeds"))
    if not (lower or higher or unclear):
        return ""
    counts = {res.get("label", res["dataset"]): seeds_lower(res) for res in all_results if res.get("ig")}
    with_counts = lambda rows: _names([f"{r} (CT < BL in {counts[r][0]} of {counts[r][1]} seeds)" if r in counts
                                       and counts[r][1] else r for r in rows])
    return (f"Against Table 2's claim (CT less sensitive than BL), over seeds: CT is less sensitive on "
            f"{with_counts(lower)}, more sensitive on {with_counts(higher)}, and not distinguishable on "
            f"{with_counts(unclear)}. Why the direction "
            "turns with the data's geometry and the training search: "
            "experiments/studies/actionability/README.md.")


def _raw_cell(cmp: dict | None, notes: list[str], where: str) -> str:
    """Returns "CT / BL [round CI]; Δ mean [interval over seeds]*", or "n/a [note]"."""
    if cmp and _finite(cmp.get("treatment_mean")) and _finite(cmp.get("baseline_mean")):
        ci = (f" [{cmp['ci_low']:.2f}, {cmp['ci_high']:.2f}]"
              if _finite(cmp.get("ci_low")) and _finite(cmp.get("ci_high")) else "")
        diff = ((cmp.get("seeds") or {}).get("difference")) or {}
        over_seeds = f"; Δ {interval_text(diff, 2)}" if _finite(diff.get("mean")) else ""
        return f"{cmp['treatment_mean']:.2f} / {cmp['baseline_mean']:.2f}{ci}{over_seeds}"
    notes.append(f"{where}: {(cmp or {}).get('note') or 'not computed'}")
    return f"n/a [{len(notes)}]"


def make_table7(all_results: list[dict]) -> str:
    """Returns the paper's App. Table 7: raw means CT / BL with the 99% CI of CT − BL for cost (protected), IP*, IP."""
    metrics = (("cost_protected", "Cost, protected"), ("ip_star", "IP*"), ("ip", "IP"))
    head = "| Data | Seeds | " + " | ".join(f"{name} (ours) | {name} (paper)" for _, name in metrics) \
        + " | Mature / steps / skipped |"
    lines, notes = [head, "|" + "---|" * 9], []
    for res in all_results:
        label = res.get("label", res["dataset"])
        paper = paper_results.TABLE7.get(paper_results.row(res), {})
        cells = []
        for metric, name in metrics:
            p = paper.get(metric)
            cells += [_raw_cell(res["comparisons"].get("CT", {}).get(metric), notes, f"{label}, {name}"),
                      f"{p[0]:.2f} / {p[1]:.2f} [{p[2]:.2f}, {p[3]:.2f}]" if p else "–"]
        lines.append(f"| {label} | {len(res.get('seeds', []))} | " + " | ".join(cells)
                     + f" | {_mechanism_cell(res, ('CT', 'CT_mut'))} |")
    lines += ["", "CT / BL means over the bootstrap rounds of valid counterfactuals [99% percentile-bootstrap CI of the "
              "mean of CT − BL over the seeds' pooled rounds: the paper's statistic, which re-samples the test set for "
              "fixed models]; Δ: the mean over seeds of each seed's CT − BL difference [99% Student-t interval over "
              "seeds], * = it excludes 0. Cost, protected: the actionability runs (CT_mut vs BL, τ = 0.5, the "
              "protected features immutable); IP* and IP: the plausibility runs (CT vs BL). " + HEALTH_SHORT]
    return _with_notes(lines, notes)


def make_table8a(all_results: list[dict]) -> str:
    """Returns the paper's App. Table 8a (cost −% without mutability constraints) with the validity of Table 3."""
    lines = ["| Data | Seeds | Cost −% (ours) | Cost −% (paper) | Validity, protected CT / BL (ours) "
             "| Validity, protected (paper) | Mature / steps / skipped |", "|" + "---|" * 7]
    notes: list[str] = []
    for res in all_results:
        label = res.get("label", res["dataset"])
        paper = paper_results.TABLE8A.get(paper_results.row(res))
        paper_cell = f"{paper[0]:.2f}±{paper[1]:.2f}{'*' if paper[2] else ''}" if paper else "–"
        validity = res.get("validity_protected") or {}
        lines.append(f"| {label} | {len(res.get('seeds', []))} "
                     f"| {_cell(res['comparisons'].get('CT', {}).get('cost'), notes, f'{label}, cost', _full(res))} "
                     f"| {paper_cell} | {_pair(validity, fmt='{:.2f}') if validity else '–'} "
                     f"| {_paper_pair(paper_results.VALIDITY_PROTECTED, res)} | {_mechanism_cell(res, ('CT', 'CT_mut'))} |")
    lines += ["", "Cost: CT vs BL in the plausibility runs (no mutability constraints, τ = 0.95). " + REDUCTION_TEXT
              + " Validity, protected: the actionability runs (Table 3, columns 3–4). " + HEALTH_SHORT]
    return _with_notes(lines, notes)


def _robust_cell(robustness: dict, label: str, attack: str, index: int) -> str:
    curve = robustness.get(label, {}).get(attack)
    if not curve:
        return "n/a"
    return f"{curve['mean'][index]:.2f}±{curve['std'][index]:.2f}"


def make_robustness_table(all_results: list[dict]) -> str:
    """Returns robust accuracy (FGSM, PGD) at the largest ε, mean ± sd over seeds, CT and BL beside the paper's Fig. 4."""
    lines = ["| Data | ε | Clean CT / BL (ours) | FGSM CT / BL (ours) | PGD CT / BL (ours) | Clean / FGSM / PGD, CT "
             "(paper) | Clean / FGSM / PGD, BL (paper) | Seeds | Mature / steps / skipped |", "|" + "---|" * 9]
    for res in all_results:
        rob = res.get("robustness") or {}
        if not rob.get("CT") or "fgsm" not in rob["CT"]:
            continue
        label = res.get("label", res["dataset"])
        epsilon = rob["CT"]["fgsm"]["epsilon"]
        i = len(epsilon) - 1
        clean = lambda m: f"{rob[m]['accuracy']['mean']:.2f}±{rob[m]['accuracy']['std']:.2f}" if m in rob else "n/a"
        paper = paper_results.ROBUST.get(paper_results.row(res), {})
        show = lambda t: " / ".join("–" if v is None else f"{v:.2f}" for v in t) if t else "–"
        lines.append(f"| {label} | {epsilon[i]:.2f} | {clean('CT')} / {clean('BL')} "
                     f"| {_robust_cell(rob, 'CT', 'fgsm', i)} / {_robust_cell(rob, 'BL', 'fgsm', i)} "
                     f"| {_robust_cell(rob, 'CT', 'pgd', i)} / {_robust_cell(rob, 'BL', 'pgd', i)} "
                     f"| {show(paper.get('CT'))} | {show(paper.get('BL'))} | {rob['CT'].get('n_seeds', 'n/a')} "
                     f"| {_mechanism_cell(res, ('CT',))} |")
    if len(lines) == 2:
        return ""
    lines += ["", "Accuracy on (up to robust_samples) test rows under white-box FGSM and PGD (40 steps, step 0.01) at the "
              "largest ε of the curve, mean ± sd over the seeds' models; the curves (mean and min–max band over "
              "seeds) are in each dataset's robust_accuracy.png. Paper values are read off its Fig. 4 (±0.03). "
              + HEALTH_SHORT]
    return "\n".join(lines)


def make_ablation_table(all_results: list[dict]) -> str:
    """Returns a markdown table of IP / IP* reductions of CD, AR and CT vs BL (the paper's Fig. 5), with its notes."""
    lines, notes = ["| Data | Seeds | IP −% CD | IP −% AR | IP −% CT | IP −% CD / AR / CT (paper) | IP* −% CD "
                    "| IP* −% AR | IP* −% CT | IP* −% CD / AR / CT (paper) | Mature / steps / skipped |",
                    "|" + "---|" * 11], []
    for res in all_results:
        c = res["comparisons"]
        label = res.get("label", res["dataset"])
        paper = paper_results.FIGURE5.get(paper_results.row(res))
        cells = []
        for index, (metric, name) in enumerate((("ip", "IP"), ("ip_star", "IP*"))):
            cells += [_cell(c.get(m, {}).get(metric), notes, f"{label}, {name} {m}", _full(res))
                      for m in ("CD", "AR", "CT")]
            cells.append(" / ".join(f"{paper[m][index]:g}" for m in ("CD", "AR", "CT")) if paper else "–")
        lines.append(f"| {label} | {len(res.get('seeds', []))} | " + " | ".join(cells)
                     + f" | {_mechanism_cell(res, ('CD', 'AR', 'CT'))} |")
    lines += ["", REDUCTION_TEXT + " Paper: read off its Fig. 5 (±3; a separate run from its Table 1). "
              + HEALTH_SHORT]
    return _with_notes(lines, notes)


BASELINE_MODELS = ("BL", "CT", "PGD-AT", "JEM")
# What a lower (IP, IP*, cost) or higher (validity) value means for CT when it beats a baseline.
_BETTER_IF_LOWER = {"ip": True, "ip_star": True, "cost": True, "validity": False}
_METRIC_NAMES = {"ip": "IP", "ip_star": "IP*", "cost": "cost", "validity": "validity"}


def _verdict(cmp: dict | None, metric: str) -> str:
    """Returns CT's side of a comparison: better / worse (its interval of CT − baseline over seeds excludes 0) / neither."""
    diff = ((cmp or {}).get("seeds") or {}).get("difference") or {}
    if not _finite(diff.get("low")) or not _finite(diff.get("high")):
        note = diff.get("note") or (cmp or {}).get("note")
        return "not computable" + (f" ({note})" if note else "")
    if diff["low"] <= 0 <= diff["high"]:
        return "no significant difference"
    lower = diff["high"] < 0
    return "CT better" if lower == _BETTER_IF_LOWER[metric] else "CT worse"


def versus_sentences(res: dict) -> list[str]:
    """Returns one sentence per baseline of a dataset: CT's differences with their 99% intervals over seeds, and verdicts."""
    out = []
    label = res.get("label", res["dataset"])
    for baseline, cmps in (res.get("versus") or {}).items():
        parts, wins, losses = [], [], []
        for metric in ("ip", "ip_star", "cost", "validity"):
            c = cmps.get(metric) or {}
            verdict = _verdict(c, metric)
            name = _METRIC_NAMES[metric]
            diff = (c.get("seeds") or {}).get("difference") or {}
            if _finite(diff.get("low")) and _finite(diff.get("high")):
                parts.append(f"{name} difference {diff['mean']:+.3g} ({100 * diff.get('level', 0.99):g}% interval over "
                             f"{diff['n']} seeds [{diff['low']:+.3g}, {diff['high']:+.3g}]: {verdict})")
            else:
                parts.append(f"{name}: {verdict}")
            (wins if verdict == "CT better" else losses if verdict == "CT worse" else []).append(name)
        summary = (f"CT beats {baseline} on {', '.join(wins)}" if wins else f"CT does not beat {baseline} on any metric")
        summary += f" and loses on {', '.join(losses)}" if losses else ""
        out.append(f"- **{label}, CT vs {baseline}**: {summary}. " + "; ".join(parts) + ".")
    return out


def make_baselines_table(all_results: list[dict]) -> str:
    """Returns BL, CT, PGD-AT and JEM side by side per dataset (accuracy, robust accuracy, validity, cost, IP, IP*)."""
    lines = ["| Data | Model | Accuracy | FGSM | PGD | ε | Validity | Cost | IP | IP* | Skipped updates |",
             "|" + "---|" * 11]
    sentences = []
    for res in all_results:
        if not res.get("versus"):
            continue
        label = res.get("label", res["dataset"])
        rob, means = res.get("robustness") or {}, res.get("means") or {}
        for model in BASELINE_MODELS:
            if model not in means:
                continue
            m = means[model]
            show = lambda v, f="{:.2f}": "n/a" if not _finite(v) else f.format(v)
            curve = rob.get(model, {})
            eps = curve.get("fgsm", {}).get("epsilon", [])
            lines.append(f"| {label} | {model} | {show(_mean(res['accuracy'].get(model)))} "
                         f"| {_robust_cell(rob, model, 'fgsm', len(eps) - 1) if eps else 'n/a'} "
                         f"| {_robust_cell(rob, model, 'pgd', len(eps) - 1) if eps else 'n/a'} "
                         f"| {show(eps[-1] if eps else None)} | {show(m.get('validity'))} | {show(m.get('cost'))} "
                         f"| {show(m.get('ip'))} | {show(m.get('ip_star'), '{:.4f}')} "
                         f"| {sum((res.get('skipped_updates') or {}).get(model, []))} |")
        sentences += versus_sentences(res)
    if len(lines) == 2:
        return ""
    lines += ["", "Raw means over every seed's protocol rounds (cost, IP and IP* of valid counterfactuals; lower is "
              "better) and test accuracy; FGSM/PGD: robust accuracy at the largest ε of the curve, mean ± sd over "
              "seeds. PGD-AT: Madry et al.'s adversarial training in CT's ε-ball with CT's T steps and λ_adv; JEM: "
              "cross-entropy plus the contrastive energy term (λ_div, λ_reg) on conditional-SGLD samples instead of "
              "counterfactuals. Same seeds, initial weights and protocol rounds as BL and CT. Differences are CT "
              "minus the baseline: per seed, the difference of the two models' means over the rounds where both have "
              "a value (so they can differ from the table's means), then their mean over seeds with a 99% Student-t "
              "interval; a verdict is drawn only when that interval excludes 0 (as Table 1's mark).", "", *sentences]
    return "\n".join(lines)


def baselines_conclusion(all_results: list[dict]) -> str:
    """Returns, per baseline and metric, on how many rows CT is better, worse or not distinguishable over seeds."""
    counts: dict[str, dict[str, list[int]]] = {}
    for res in all_results:
        for baseline, cmps in (res.get("versus") or {}).items():
            for metric in ("ip", "ip_star", "cost", "validity"):
                verdict = _verdict(cmps.get(metric), metric)
                tally = counts.setdefault(baseline, {}).setdefault(metric, [0, 0, 0])
                tally[0 if verdict == "CT better" else 1 if verdict == "CT worse" else 2] += 1
    lines = []
    for baseline, per_metric in counts.items():
        parts = [f"{_METRIC_NAMES[m]} better on {b}, worse on {w}, not distinguishable on {n}"
                 for m, (b, w, n) in per_metric.items()]
        lines.append(f"- CT against {baseline}, over {sum(next(iter(per_metric.values())))} rows: " + "; ".join(parts)
                     + ".")
    return "\n".join(lines)


BASELINES_STUDY = ("experiments", "studies", "baselines", "README.md")


def write_baselines_study(results_md: str, results: list[dict], meta: dict) -> str | None:
    """Returns the path of the baselines study (beside RESULTS.md's folder) after writing it, or None without baselines.

    The baselines are beyond the paper, so they live in their own study file, not in RESULTS.md: its conclusion
    (counts of rows where CT is better / worse over seeds), the command, then the table and one sentence per row.
    """
    versus = make_baselines_table(results)
    if not versus:
        return None
    path = os.path.join(os.path.dirname(results_md) or ".", *BASELINES_STUDY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = ["# Baselines beyond the paper: PGD adversarial training and JEM-style training", "",
            "Generated by `experiments/reproduce.py --baselines` with RESULTS.md; do not edit by hand.", "",
            "## Conclusion", "", "Verdicts are drawn from the 99% interval over training seeds of each row's CT − "
            "baseline difference (lower IP, IP*, cost or higher validity is better for CT):", "",
            baselines_conclusion(results), "",
            "## How to run", "", f"`{meta['command']}`"
            + (f" (tables rebuilt by `{meta['tables_command']}`{_tables_commit(meta)})" if meta.get("tables_command")
               else "")
            + f" at commit `{meta['git_commit'][:10]}`{' (with uncommitted changes)' if meta.get('git_dirty') else ''}"
            f", {meta['cpu_count']} CPUs ({meta['device']}).", "", "## Tables", "", versus, ""]
    write_atomic(path, "\n".join(body))
    return path


def all_tables(results: list[dict], *, ablation: bool, figure1: dict | None = None, baselines: bool = True) -> str:
    """Returns every table of the run as one markdown text (Table 1, 2, 7, 8a, robustness, ablation, Figure 1's numbers,
    and with `baselines` the comparison with PGD-AT and JEM, which RESULTS.md leaves to its own study file)."""
    parts = ["## Table 1: plausibility, actionability, validity, accuracy", "", make_table(results),
             "", "## Table 1b: the ratio of means per seed (not the paper's estimator)", "", make_ratio_table(results)]
    if any(r.get("ig") for r in results):
        parts += ["", "## Table 2: sensitivity to the protected features (integrated gradients)", "",
                  make_ig_table(results)]
    parts += ["", "## Table 7: raw means with confidence intervals", "", make_table7(results),
              "", "## Table 8a: cost without mutability constraints; validity with them", "", make_table8a(results)]
    robust = make_robustness_table(results)
    if robust:
        parts += ["", "## Robust accuracy over seeds (paper Fig. 4)", "", robust]
    if ablation:
        parts += ["", "## Ablation (paper Fig. 5)", "", make_ablation_table(results)]
    versus = make_baselines_table(results) if baselines else ""
    if versus:
        parts += ["", "## Baselines beyond the paper: PGD adversarial training and JEM-style training", "", versus]
    if figure1:
        parts += ["", "## Figure 1: linear models", "", figure1_text(figure1)]
    return "\n".join(parts)


def figure1_text(figure1: dict) -> str:
    """Returns the sentence under Figure 1: each linear model's share of its decision gradient on the protected feature."""
    name = figure1["protected"]
    index = 0  # the protected feature is the data's first (x0), as in the reference's synthetic mutability runs
    shares = ", ".join(f"{label} {values[index]:.2f}" for label, values in figure1["sensitivity"].items())
    return (f"Linear classifiers on {figure1['dataset']}: (a) BL and (b) CT with every feature mutable; (c) BL and "
            f"(d) CT trained with {name} protected, both searched with {name} immutable. Share of each model's "
            f"decision gradient |∂(logit₁ − logit₀)/∂x| that falls on {name}: {shares}. "
            + proposition_sentence(figure1["sensitivity"]["CT_mut"][index], figure1["sensitivity"]["BL"][index],
                                   figure1.get("class_mean_gap_sigma")))


def proposition_sentence(share_ct: float, share_bl: float, gaps: list[float] | None) -> str:
    """Returns whether a protected run's share of the decision gradient on x0 agrees with Proposition 3.1, and why."""
    geometry = ""
    if gaps:
        leads = "x1" if gaps[1] > gaps[0] else "x0"
        geometry = (f" On this draw the class means differ by {gaps[0]:.2f} σ in x0 and {gaps[1]:.2f} σ in x1, so "
                    f"{leads} is the more discriminative feature"
                    + ("; the proposition assumes a discriminative mutable feature, and this draw gives it." if
                       leads == "x1" else "; the proposition's condition (a more discriminative mutable feature) "
                       "does not hold, and there a search with x0 frozen overshoots along x1, which lowers x1's "
                       "coefficient instead."))
    verdict = ("This agrees with Proposition 3.1 (a lower share for CT_mut than for BL)." if share_ct < share_bl else
               "This contradicts Proposition 3.1, which predicts a lower share for CT_mut than for BL.")
    return (verdict + geometry + " Over 20 draws per blob set, and why the direction turns: "
            "experiments/studies/actionability/README.md; the known answers: tests/test_proposition.py.")


def agreement_lines(results: list[dict]) -> list[str]:
    """Returns one line per run saying, for IP, IP* and cost, whether our reduction over seeds has the paper's sign."""
    lines = []
    for res in results:
        d, label = res["dataset"], res.get("label", res["dataset"])
        row = paper_results.row(res)
        if row not in paper_results.TABLE1:
            lines.append(f"- {label}: not in the paper.")
            continue
        parts = []
        for column, (metric, name) in enumerate((("ip", "IP"), ("ip_star", "IP*"), ("cost_protected", "cost"))):
            cmp = res["comparisons"].get("CT", {}).get(metric) or {}
            ours, estimator = reduction_stat(cmp)
            suffix = ""
            if estimator == "ratio of means":
                # Stored before the paper's estimator per seed: the sign is read off the ratio's interval, said so.
                pooled = (f"; the paper's estimator, pooled: {cmp['reduction_pct']:.1f}, its interval needs a rerun"
                          if _finite(cmp.get("reduction_pct")) else "")
                suffix = f"; by the ratio of means per seed{pooled}"
            paper_value, paper_sig = paper_results.TABLE1[row][column]
            paper_text = "paper significant" if paper_sig else "paper not significant"
            if not _finite(ours.get("mean")):
                parts.append(f"{name} n/a — {cmp.get('note') or ours.get('note') or 'not computed'}")
                continue
            if not ours.get("significant"):
                # Over seeds the sign is not established, so no direction is claimed either way.
                parts.append(f"{name} not distinguishable from 0 over seeds ({interval_text(ours)}% vs "
                             f"{paper_value:.1f}%, {paper_text}{suffix})")
                continue
            same = (ours["mean"] > 0) == (paper_value > 0)
            parts.append(f"{name} {'same' if same else 'opposite'} direction ({interval_text(ours)}% vs "
                         f"{paper_value:.1f}%, {paper_text}{suffix})")
        versus = f" (vs the paper's {row} row)" if row != d else ""
        health = [k for k in res.get("mechanism", {}) if _health(res, k)[0] is not None]
        conv_text = ", ".join(f"{k} {_health(res, k)[0]:.2f}" + (f" ({_health(res, k)[1]:.1f} search steps)"
                                                                  if _health(res, k)[1] is not None else "")
                              for k in health)
        lines.append(f"- {label}{versus}: " + "; ".join(parts) + "." + (
            f" Share of training counterfactuals that matured in the last epoch: {conv_text}." if conv_text else ""))
    return lines


# Where the figures linked from RESULTS.md are copied, relative to it: inside experiments/, so that the repository's
# top level stays as the design card lists it.
FIGURES_DIR = ("experiments", "results_figures")


def _figure_links(results: list[dict], meta: dict, out_dir: str) -> list[str]:
    """Returns markdown lines linking the paper's figures, after copying them to out_dir (FIGURES_DIR by RESULTS.md)."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, *[os.pardir] * len(FIGURES_DIR))  # the folder of RESULTS.md
    rel = lambda path: os.path.relpath(path, base).replace(os.sep, "/")
    lines = []

    def copy(src, name):
        dst = os.path.join(out_dir, name)
        if not os.path.exists(src):
            # A stored run names figures by the paths of the machine that made it; a rebuild elsewhere links the
            # copy an earlier build left beside RESULTS.md (tables only: figures are drawn by the run).
            if not os.path.exists(dst):
                raise FileNotFoundError(f"figure {src} is gone and no earlier copy is at {dst}; rerun the row to "
                                        "draw it again")
            return rel(dst)
        with open(src, "rb") as f:
            write_atomic(dst, f.read())
        return rel(dst)

    if meta.get("figure1"):
        lines.append(f"- Figure 1 (linear models, CT vs BL, paths and decision boundary): "
                     f"![Figure 1]({copy(meta['figure1']['path'], 'figure1_linear.png')})")
    ablation = [(res.get("label", res["dataset"]),
                 {m: {metric: ((res["comparisons"].get(m, {}).get(metric) or {}).get("seeds") or {}).get("reduction")
                      or {} for metric in ("ip", "ip_star")} for m in ("CD", "AR", "CT")},
                 {m: dict(zip(("ip", "ip_star"), v))
                  for m, v in paper_results.FIGURE5.get(paper_results.row(res), {}).items()})
                for res in results if res.get("ablation")]
    if ablation:
        plots.plot_ablation(os.path.join(out_dir, "figure5_ablation.png"), ablation)
        lines.append("- Figure 5 (ablation: CD, AR and CT against BL on IP and IP*, the ratio of means per seed "
                     "(Table 1b) with intervals over seeds; red diamonds: "
                     f"the paper's Fig. 5; the table above): ![Figure 5]({rel(os.path.join(out_dir, 'figure5_ablation.png'))})")
    for res in results:
        figs = res.get("figures") or {}
        slug = os.path.basename(os.path.dirname(figs.get("training_curves", ""))) or res["dataset"]
        if "counterfactual_grid" in figs:
            lines.append(f"- Figure 2, {res['label']} (counterfactuals of the same factuals and targets, BL and CT "
                         f"of the first seed): ![Figure 2 {res['label']}]"
                         f"({copy(figs['counterfactual_grid'], f'figure2_counterfactuals_{slug}.png')})")
        if "ig_maps" in figs:
            lines.append(f"- Figure 3, {res['label']} (IG maps per class, CT vs BL): "
                         f"![IG maps {res['label']}]({copy(figs['ig_maps'], f'figure3_ig_{slug}.png')})")
        if "robust_accuracy" in figs:
            lines.append(f"- Robust accuracy over seeds, {res['label']}: "
                         f"![robustness {res['label']}]({copy(figs['robust_accuracy'], f'robust_{slug}.png')})")
    return lines


def _tables_commit(meta: dict) -> str:
    """Returns " at commit `…`" of the code that rebuilt the tables (--tables-only), or "" if not recorded."""
    if not meta.get("tables_commit"):
        return ""
    return f" at commit `{meta['tables_commit']}`" + (" (with uncommitted changes)" if meta.get("tables_dirty") else "")


def write_results_md(path: str, meta: dict, results: list[dict], sensitivity: dict | None = None) -> None:
    """Writes RESULTS.md: the tables beside the paper's, the figures, the command, commit, machine and the differences.

    `sensitivity` is the runs' IG settings (ExperimentConfig.sensitivity as a dict), quoted in the notes. The
    baselines beyond the paper go to their own study file (`write_baselines_study`), linked from here.
    """
    table = all_tables(results, ablation=any(r.get("ablation") for r in results), figure1=meta.get("figure1"),
                       baselines=False)
    study = write_baselines_study(path, results, meta)
    if study:
        table += ("\n\n## Baselines beyond the paper\n\nPGD adversarial training and JEM-style training beside BL "
                  f"and CT, with verdicts over seeds: [{os.path.relpath(study, os.path.dirname(path) or '.')}]"
                  f"({os.path.relpath(study, os.path.dirname(path) or '.')}).")
    scales = sorted({str(r["mmd_length_scale"]) for r in results})
    ig = sensitivity or {}
    body = [
        "# Reproduced results", "",
        "Generated by `experiments/reproduce.py`; do not edit by hand. Refresh with the command below.", "",
        f"- Command: `{meta['command']}`",
        *([f"- Tables rebuilt from that run's results by `{meta['tables_command']}`{_tables_commit(meta)}"]
          if meta.get("tables_command") else []),
        f"- Commit: `{meta['git_commit']}`{' (with uncommitted changes)' if meta.get('git_dirty') else ''}",
        f"- Date: {meta['started']}; wall time {meta['wall_time_s'] / 60:.1f} min",
        f"- Machine: {meta['platform']}, {meta['cpu_count']} CPUs, JAX {meta['versions']['jax']} on "
        f"{meta['backend']} ({meta['device']})",
        f"- Seeds: {sorted({s for r in results for s in r['seeds']})}",
        "- One-hot search mode per row with one-hot groups: "
        + (", ".join(sorted({r["label"] for r in results if r.get("one_hot_groups")})) or "no dataset has one-hot groups"),
        "", table, "",
    ]
    links = _figure_links(results, meta, os.path.join(os.path.dirname(path) or ".", *FIGURES_DIR))
    if links:
        body += ["## Figures", "", *links, ""]
    body += ["## Where this differs from the paper, and why", "",
             NOTES.format(length_scale=", ".join(scales), ig_rounds=ig.get("rounds", "n/a"),
                          ig_samples=ig.get("samples", "n/a")).rstrip("\n"),
             *([f"- The IG settings above are read from {ig['source']}."] if ig.get("source") else []),
             *settings_lines(results), *onehot_effect_lines(results), "- " + training_search_text(results), ""]
    body += ["## Agreement with the paper, column by column", "", *agreement_lines(results), ""]
    if meta.get("skipped"):
        body += ["Datasets not run (their data is not available offline): "
                 + ", ".join(f"{k} ({v})" for k, v in sorted(meta["skipped"].items())), ""]
    # Sections that other commands wrote into the file (the units study, ...) are theirs to refresh: keep them.
    kept = marked_sections(open(path).read()) if os.path.exists(path) else []
    write_atomic(path, "\n".join(body) + "".join(f"\n{block}\n" for block in kept))
