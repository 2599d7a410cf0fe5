"""Progress of long loops (epochs, evaluation searches): a tqdm bar on a terminal, plain lines in a log file.

Redirected output (`python -m experiments.reproduce > log`) gets about PLAIN_LINES lines per loop instead of a
carriage-return frame per update; on a terminal or in a notebook it is a tqdm bar. Only process 0 reports.
"""
from __future__ import annotations

import math
import sys

import jax

# Without a terminal, progress is a plain line every ceil(total / PLAIN_LINES) updates and at the last one.
PLAIN_LINES = 10


def _interactive(stream) -> bool:
    # A notebook's stderr is no TTY, but tqdm.auto draws a widget there rather than carriage-return frames.
    if stream in (sys.stderr, sys.stdout) and "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Progress of one loop of `total` updates: a tqdm bar on a terminal or in a notebook, else plain lines."""

    def __init__(self, stream, total: int, initial: int, desc: str, unit: str = "epoch"):
        self.stream, self.total, self.desc, self.unit = stream, total, desc, unit
        self.every = max(1, math.ceil(total / PLAIN_LINES))
        self.bar = None
        if _interactive(stream):
            from tqdm.auto import tqdm  # imported only when a bar is drawn: a log file gets plain lines
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream)

    def update(self, done: int, fields: dict[str, str], suffix: str = "") -> None:
        """Shows update number `done` (1-based) with `fields`: advances the bar, or writes a line when it is due."""
        if self.bar is not None:
            self.bar.set_postfix(fields)
            self.bar.update(1)
        elif done % self.every == 0 or done == self.total:
            text = "  ".join(f"{k} {v}" for k, v in fields.items())
            self.stream.write(f"{self.desc} {self.unit} {done}/{self.total}  {text}{'  ' + suffix if suffix else ''}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress(setting, total: int, desc: str, *, initial: int = 0, unit: str = "epoch") -> Progress | None:
    """Returns the display `setting` asks for (True: stderr; a text stream: there; False/None: none), or None."""
    if setting is None or setting is False or jax.process_index() != 0:  # multi-host: process 0 reports
        return None
    stream = sys.stderr if setting is True else setting
    if not callable(getattr(stream, "write", None)):
        raise TypeError(f"progress must be True, False or a text stream with .write(), got {type(setting).__name__}")
    return Progress(stream, total, initial, desc, unit)
