"""The experiment suite. Each study lives in experiments/studies/<name>/; the top level holds what several share.

Modules that moved into a study folder fail with the command that replaces them, instead of a bare
"No module named": `python -m experiments.units` names `python -m experiments.studies.units.study`.
"""
from __future__ import annotations

import importlib.abc
import sys

# Old module path -> the module that replaced it (issue 31: a study is a folder).
MOVED_MODULES = {
    "experiments.units": "experiments.studies.units.study",
    "experiments.tuning": "experiments.studies.grids.tuning",
}


def moved_error(fullname: str) -> ModuleNotFoundError:
    """Returns the error for importing the moved module `fullname`, naming the module and command that replace it."""
    new = MOVED_MODULES[fullname]
    return ModuleNotFoundError(f"{fullname} moved to {new}: run `python -m {new}` (or import {new})", name=fullname)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Refuses the import of a moved module (`import experiments.units`, `python -m experiments.units`)."""

    def find_spec(self, fullname, path=None, target=None):
        """Returns None for any module that did not move (the other finders look); raises for one that did."""
        if fullname in MOVED_MODULES:
            raise moved_error(fullname)
        return None


def __getattr__(name: str):
    """Raises the moved-module error for `from experiments import units` (which would say only "cannot import")."""
    if f"{__name__}.{name}" in MOVED_MODULES:
        raise moved_error(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, MovedModuleFinder())
