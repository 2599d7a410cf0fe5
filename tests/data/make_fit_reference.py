"""Writes tests/data/fit_reference.npz: params of tiny fit / fit_many runs on main's code (d535aaf)."""
import jax, jax.numpy as jnp, numpy as np
from ctrain.data import load_dataset
from ctrain.models import make_model
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_state, create_train_states, fit, fit_many

data = load_dataset("moons").subsample(240, seed=0)
SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)
CONFIGS = {
    "per_epoch": TrainConfig(search=SEARCH, epochs=3, batch_size=30, n_ce=60, shuffle=True),
    "per_batch": TrainConfig(search=SEARCH, epochs=2, batch_size=30, n_ce=60, schedule="per_batch", seed=3),
    "vanilla": TrainConfig(objective="vanilla", epochs=3, batch_size=30, shuffle=True),
    "burnin": TrainConfig(search=SEARCH, epochs=4, batch_size=40, n_ce=40, burnin=0.5),
}
out = {}
for name, cfg in CONFIGS.items():
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    state, hist = fit(create_train_state(apply_fn, params), data, cfg, progress=False)
    for i, leaf in enumerate(jax.tree.leaves(state.params)):
        out[f"fit/{name}/{i}"] = np.asarray(leaf)
    out[f"fit/{name}/loss"] = np.array([h["loss"] for h in hist])
apply_fn, _ = make_model("mlp", 2, 2, jax.random.key(0))
inits = [make_model("mlp", 2, 2, jax.random.key(s))[1] for s in (3, 4)]
states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits))
many, hists = fit_many(states, data, CONFIGS["per_epoch"], seeds=[3, 4], progress=False)
for i, leaf in enumerate(jax.tree.leaves(many.params)):
    out[f"fit_many/per_epoch/{i}"] = np.asarray(leaf)
np.savez("tests/data/fit_reference.npz", **out)
print(sorted(out))
