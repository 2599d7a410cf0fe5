"""docs/tutorial.md runs as written: its python blocks, in order, in one namespace."""
import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"

pytest.importorskip("pandas")


def test_the_tutorial_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), re.S)
    assert len(blocks) >= 5, "docs/tutorial.md lost its python blocks"
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/tutorial.md (block {i + 1})", "exec"), namespace)
    out = capsys.readouterr().out
    assert "counterfactual" in out and "standard deviations" in out  # the frame and describe() were printed
    table = namespace["table"]
    assert list(table.index) == ["BL", "CT"] and "valid" in table.columns
    frame = namespace["explanations"]["CT"].to_frame(namespace["data"])
    assert set(frame.xs("counterfactual", level="kind")["race"]) == {"-"}  # immutable, so always unchanged
