"""README.md's commands still run as written: its API tour executes, and CI finds its two set-up commands."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_api_tour_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python block"
    exec(compile(blocks[0], "README.md (API tour)", "exec"), {})
    assert "'valid'" in capsys.readouterr().out  # the tour ends by printing explain's summary


def test_the_two_setup_commands_are_there_and_ci_runs_the_second():
    lines = [line for line in README.read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(lines) == 2 and "experiments.reproduce" in lines[0] and "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    found = subprocess.run(["bash", "-c", re.search(r"cmd=\$\((.*)\)", ci).group(1)], cwd=README.parent,
                           capture_output=True, text=True).stdout.strip()
    assert found == lines[1]


def test_the_main_jobs_command_line_is_accepted():
    out = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--help"], cwd=README.parent,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--full" in out.stdout


def test_the_custom_loop_reproduces_fit_bit_for_bit():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "epoch_keys" in b]
    assert len(blocks) == 1, "README.md's custom-loop block (the one using epoch_keys) is missing"
    namespace = {}
    exec(compile(blocks[0], "README.md (custom loop)", "exec"), namespace)
    import chex
    chex.assert_trees_all_equal(namespace["state"].params, namespace["fitted"].params)
    assert int(namespace["state"].step) == int(namespace["fitted"].step) > 0
