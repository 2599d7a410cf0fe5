"""Training speed: compiled epoch times per dataset, full 100-epoch CT runs, and K runs vmapped vs sequential.

    python -m experiments.benchmarks.training [--datasets circles adult --seeds 10 --json out.json]

Every figure is post-compile unless it says "compile"; each is min/median/max over repeats.
`fit_many_scaling` (K = 1 … 1000 seeds through `fit_many`) and `long_run` (one `fit`) time whole calls,
compilation included, for the device check.
"""
from __future__ import annotations

import argparse
import sys
import statistics
import time

import jax
import jax.numpy as jnp

from ctrain.data import load_dataset
from ctrain.models import make_model
from ctrain.objective import positive_pool
from ctrain.train import create_train_state, create_train_states, fit, fit_many, make_train_epoch
from experiments.benchmarks.common import block, check_arguments, fmt, measure, write_json
from experiments.configs import SYNTHETIC_NAMES, get_config
from experiments.pipeline import free_schema, loss_weights, run_command, train_config


def _setup(name: str, objective: str):
    config = get_config(name)
    data = free_schema(load_dataset(name, **dict(config.data.kwargs)))
    tc = train_config(config, objective)
    nb = len(data.x_train) // tc.batch_size
    tc = tc.replace(ce_per_batch=-(-tc.n_ce // nb)) if tc.needs_counterfactuals else tc
    apply_fn, params = make_model("mlp", data.num_features, data.num_classes, jax.random.key(0))
    pool = positive_pool(data.x_train, data.y_train, data.num_classes)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    return config, data, tc, apply_fn, params, pool, x, y


def epoch_times(name: str, repeats: int) -> dict:
    """Returns compile and steady-state epoch times of BL and CT, and a whole 100-epoch CT run, for one dataset."""
    out = {"dataset": name}
    for objective in ("vanilla", "full"):
        config, data, tc, apply_fn, params, pool, x, y = _setup(name, objective)
        epoch = jax.jit(make_train_epoch(tc, data.constraints()), static_argnums=(6,))
        state = create_train_state(apply_fn, params, weights=loss_weights(config),
                                learning_rate=config.learning_rate)
        key = jax.random.key(0)
        use_ct = objective != "vanilla"
        t0 = time.perf_counter()
        block(epoch(state, x, y, pool, key, 0, use_ct))
        label = "ct" if use_ct else "vanilla"
        out[f"{label}_compile_s"] = time.perf_counter() - t0
        out[f"{label}_epoch_s"] = measure(lambda: epoch(state, x, y, pool, key, 1, use_ct), repeats=repeats)
        out["steps_per_epoch"] = len(data.x_train) // tc.batch_size
        if use_ct:
            def full_run():
                s = state
                for e in range(config.train.epochs):
                    s, _ = epoch(s, x, y, pool, key, e, True)
                return s.params
            out["ct_full_run_s"] = measure(full_run, repeats=max(1, repeats // 3), warmup=0)
            out["epochs"] = config.train.epochs
    out["ct_over_vanilla_epoch"] = out["ct_epoch_s"]["median"] / out["vanilla_epoch_s"]["median"]
    return out


def many_vs_sequential(name: str, k: int, epochs: int, repeats: int) -> dict:
    """Returns the time of k CT runs as one vmapped program vs k runs one after another (same compiled epoch)."""
    config, data, tc, apply_fn, params, pool, x, y = _setup(name, "full")
    epoch = make_train_epoch(tc, data.constraints())
    one = jax.jit(epoch, static_argnums=(6,))
    many = jax.jit(jax.vmap(lambda s, kk, e: epoch(s, x, y, pool, kk, e, True), in_axes=(0, 0, None)))
    inits = [make_model("mlp", data.num_features, data.num_classes, jax.random.key(s))[1] for s in range(k)]
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits), weights=loss_weights(config),
                                learning_rate=config.learning_rate)
    singles = [create_train_state(apply_fn, p, weights=loss_weights(config),
                                learning_rate=config.learning_rate) for p in inits]
    keys = jnp.stack([jax.random.key(s) for s in range(k)])

    def vmapped():
        s = states
        for e in range(epochs):
            s, _ = many(s, keys, e)
        return s.params

    def sequential():
        outs = []
        for i in range(k):
            s = singles[i]
            for e in range(epochs):
                s, _ = one(s, x, y, pool, keys[i], e, True)
            outs.append(s.params)
        return outs

    t0 = time.perf_counter()
    block(many(states, keys, 0))
    compile_many = time.perf_counter() - t0
    t_many = measure(vmapped, repeats=repeats)
    t_seq = measure(sequential, repeats=repeats)

    # End to end, as a researcher runs it: `fit` once per seed (each compiles its own program and
    # evaluates every epoch) vs one `fit_many` call, both for the config's full number of epochs.
    full = tc.replace(epochs=config.train.epochs)
    fit_seq = measure(lambda: [fit(s, data, full.replace(seed=i), progress=False)[0].params
                               for i, s in enumerate(singles)], repeats=1, warmup=0)
    fit_vmap = measure(lambda: fit_many(states, data, full, seeds=range(k), progress=False)[0].params,
                       repeats=1, warmup=0)
    return {"dataset": name, "k": k, "epochs": epochs, "vmapped_s": t_many, "sequential_s": t_seq,
            "vmapped_compile_s": compile_many, "speedup": t_seq["median"] / t_many["median"],
            "fit_epochs": config.train.epochs, "fit_sequential_s": fit_seq, "fit_many_s": fit_vmap,
            "fit_speedup": fit_seq["median"] / fit_vmap["median"]}


def _stacked_params(apply_init, k: int):
    # One jitted, vmapped initialisation: K = 1000 separate inits would cost seconds of dispatch.
    return jax.jit(jax.vmap(apply_init))(jax.random.split(jax.random.key(0), k))


def _epoch_seconds(history: list[dict], k: int) -> list[float]:
    """Returns each epoch's wall time of a fit_many call (its logs give every run an equal share, time_s)."""
    return [h["time_s"] * k for h in history]


def fit_many_scaling(name: str, ks, epochs: int, subsample: int | None = None,
                     deadline: float | None = None) -> list[dict]:
    """Returns one row per K: wall times of `fit_many` on K seeds of a CT run of `name` (the paper's settings).

    Each row holds the first epoch (compilation included), the median later epoch, the whole call and the
    projected 100-epoch call.

    With a `deadline` (time.perf_counter() value), a K whose projected call would pass it runs fewer epochs
    (at least 2), and is skipped when even that would not fit.
    """
    config, data, tc, apply_fn, params, pool, x, y = _setup(name, "full")
    if subsample:
        data = data.subsample(subsample, seed=0)
    init = lambda key: make_model("mlp", data.num_features, data.num_classes, key)[1]
    rows, last = [], None
    for k in ks:
        run_epochs = epochs
        if deadline is not None and last is not None:
            left = deadline - time.perf_counter()
            # Linear in K from the last K: pessimistic where the device has room to spare.
            per_epoch = (last["epoch_s"] or last["first_epoch_s"]) * k / last["k"]
            run_epochs = min(epochs, int((left - 2 * last["first_epoch_s"]) / max(per_epoch, 1e-9)))
            if run_epochs < min(2, epochs):
                rows.append({"k": k, "skipped": f"would not finish before the deadline ({left:.0f} s left)"})
                continue
        states = create_train_states(apply_fn, _stacked_params(init, k), weights=loss_weights(config),
                                     learning_rate=config.learning_rate)
        t0 = time.perf_counter()
        _, histories = fit_many(states, data, tc.replace(epochs=run_epochs, ce_per_batch=None), seeds=range(k),
                                progress=False)
        total = time.perf_counter() - t0
        times = _epoch_seconds(histories[0], k)
        steady = statistics.median(times[1:]) if len(times) > 1 else None  # the first epoch holds the compile
        last = {"k": k, "epochs": run_epochs, "first_epoch_s": times[0], "epoch_s": steady, "total_s": total,
                "projected_100_epochs_s": None if steady is None else times[0] + 99 * steady,
                "epoch_ms_per_run": None if steady is None else 1e3 * steady / k,
                "train_size": len(data.x_train), "batch_size": tc.batch_size, "n_ce": tc.n_ce}
        rows.append(last)
    return rows


def long_run(name: str, epochs: int, subsample: int | None = None) -> dict:
    """Returns the wall time of one `fit` CT run of `name` (the paper's settings), compilation included.

    Also its first and median later epoch, final test accuracy and share of converged counterfactuals.
    """
    config, data, tc, apply_fn, params, pool, x, y = _setup(name, "full")
    if subsample:
        data = data.subsample(subsample, seed=0)
    state = create_train_state(apply_fn, params, weights=loss_weights(config), learning_rate=config.learning_rate)
    t0 = time.perf_counter()
    _, history = fit(state, data, tc.replace(epochs=epochs, ce_per_batch=None), progress=False)
    total = time.perf_counter() - t0
    times = [h["time_s"] for h in history]
    return {"dataset": name, "epochs": epochs, "total_s": total, "first_epoch_s": times[0],
            "epoch_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "test_accuracy": history[-1].get("test_accuracy"), "converged": history[-1].get("converged")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SYNTHETIC_NAMES),
                        help='datasets whose fit is timed (default: the synthetic sets)')
    parser.add_argument("--seeds", type=int, default=10, help="K for the vmapped-vs-sequential comparison")
    parser.add_argument("--many-epochs", type=int, default=10,
                        help='epochs of the fit_many comparison (default: %(default)s)')
    parser.add_argument("--many-dataset", default="circles",
                        help='dataset of the fit_many comparison (default: %(default)s)')
    parser.add_argument("--repeats", type=int, default=3,
                        help='timed runs per case (default: %(default)s)')
    parser.add_argument("--json", default=None,
                        help='also write the rows to this JSON file')
    args = parser.parse_args(argv)
    check_arguments([*args.datasets, args.many_dataset], args.json)
    rows = []
    for name in args.datasets:
        try:
            rows.append(epoch_times(name, args.repeats))
        except FileNotFoundError as err:
            print(f"{name}: skipped ({str(err).splitlines()[0][:120]})")
    print("| dataset | steps/epoch | BL epoch ms | CT epoch ms | CT/BL | compile BL s | compile CT s "
          "| 100-epoch CT run s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['steps_per_epoch']} | {fmt(r['vanilla_epoch_s'])} | {fmt(r['ct_epoch_s'])} "
              f"| {r['ct_over_vanilla_epoch']:.1f} | {r['vanilla_compile_s']:.2f} | {r['ct_compile_s']:.2f} "
              f"| {fmt(r['ct_full_run_s'], 1)} |")
    many = many_vs_sequential(args.many_dataset, args.seeds, args.many_epochs, args.repeats)
    print(f"\n{many['k']} CT runs x {many['epochs']} epochs on {many['dataset']}: vmapped {fmt(many['vmapped_s'], 1)} s, "
          f"sequential {fmt(many['sequential_s'], 1)} s, speed-up {many['speedup']:.1f}x "
          f"(vmapped compile {many['vmapped_compile_s']:.1f} s)")
    print(f"End to end, {many['fit_epochs']} epochs each: {many['k']} x fit() {fmt(many['fit_sequential_s'], 1)} s, "
          f"one fit_many() {fmt(many['fit_many_s'], 1)} s, speed-up {many['fit_speedup']:.1f}x")
    payload = {"epochs": rows, "many_vs_sequential": many}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
