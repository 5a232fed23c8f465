"""The summary line is the last line of `make test-reliability` and of `make test`, and names every
key, also one that nothing counted (a 0 is a result; a missing key reads as "not measured")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.reliability import summary

ROOT = Path(__file__).resolve().parents[2]
# A cheap reliability selection that measures nothing: every count in its line must be 0.
CHEAP = "-k bad_label_values -q -p no:cacheprovider"


def last_line(target: str) -> str:
    result = subprocess.run(["make", "-s", target, f"PYTEST_ARGS={CHEAP}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("target", ["test-reliability", "test"])
def test_make_target_ends_with_the_summary_line_and_every_key_even_at_zero(target):
    line = last_line(target)
    assert line.startswith("reliability: faults injected "), line
    for key in ("runs completed", "nodes leaked", "records lost", "records duplicated",
                "interruption warnings handled", "pools failed while others sized"):
        assert f"; {key} 0" in line, (key, line)


def test_an_unknown_key_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="interruption warnings handled") as error:
        summary.add(interruption_warnings_handeld=1)
    assert "interruption warnings handeld" in str(error.value)
    assert summary.MEASURED["interruption warnings handeld"] == 0
