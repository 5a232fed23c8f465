"""The `dpe` command as a new user runs it: on a fresh dpe home and Dagster instance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.paths import PROJECT_ROOT

DPE = str(Path(sys.executable).parent / "dpe")


def fresh_environment(folder: Path) -> dict[str, str]:
    """A fresh dpe home and Dagster instance, as on a new machine."""
    return dict(os.environ, DPE_HOME=str(folder / "dpe"), DAGSTER_HOME=str(folder / "dagster"),
                DPE_IDLE_TIMEOUT_S="5", DPE_ENV="local")


def dpe(*args, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([DPE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
