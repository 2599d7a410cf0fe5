"""Marked sections of RESULTS.md: text that one command owns, between <!-- name:start --> and <!-- name:end -->.

`experiments.reproduce` rewrites RESULTS.md as a whole and keeps every marked section that other commands
(e.g. `experiments.studies.units.study --results-md RESULTS.md`) wrote there, so regenerating one part never drops another.
"""
from __future__ import annotations

import os
import re

from ctrain.storage import write_atomic

_SECTION = re.compile(r"<!-- (?P<name>[\w.-]+):start -->\n.*?\n<!-- (?P=name):end -->", re.S)


def marked_sections(text: str) -> list[str]:
    """Returns every marked section block of `text` (markers included), in order of appearance."""
    return [m.group(0) for m in _SECTION.finditer(text)]


def write_section(path: str, name: str, text: str) -> None:
    """Writes `text` into the file at `path` between <!-- name:start --> / <!-- name:end --> markers (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body and end in body:
        body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    write_atomic(path, body)


def interval_text(stat: dict, digits: int = 1) -> str:
    """Returns "mean [low, high]*" of a `ctrain.evaluate.seed_interval` ("mean" alone without an interval, "–" empty)."""
    if stat.get("mean") is None:
        return "–"
    if stat.get("low") is None or stat.get("high") is None:
        return f"{stat['mean']:.{digits}f}"
    return (f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"
            f"{'*' if stat.get('significant') else ''}")
