"""Datasets with an actionability schema: `load_dataset(name)` or `from_arrays(x, y, ...)`."""
from ctrain.data.dataset import Dataset, Standardizer, from_arrays, prepare, subsample_arrays
from ctrain.data.schema import Feature, Schema, check_features
from ctrain.data.synthetic import load_synthetic

SYNTHETIC = ("linearly_separable", "overlapping", "circles", "moons")
ALIASES = {"ls": "linearly_separable", "ol": "overlapping", "circ": "circles", "moon": "moons"}


def load_dataset(name: str, **kwargs) -> Dataset:
    """Returns the named Dataset; synthetic sets are generated, real ones read from local files (see loaders)."""
    name = ALIASES.get(name.lower(), name.lower())
    if name in SYNTHETIC:
        return load_synthetic(name, **kwargs)
    loaders = _real_loaders()
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(SYNTHETIC + tuple(loaders))}")
    return loaders[name](**kwargs)


def _real_loaders() -> dict:
    loaders = {}
    try:
        from ctrain.data import tabular
        loaders.update(tabular.LOADERS)
    except ImportError:
        pass
    try:
        from ctrain.data import images
        loaders.update(images.LOADERS)
    except ImportError:
        pass
    return loaders


__all__ = ["Dataset", "Feature", "Schema", "Standardizer", "check_features", "from_arrays", "load_dataset",
           "load_synthetic", "prepare", "subsample_arrays", "SYNTHETIC"]
