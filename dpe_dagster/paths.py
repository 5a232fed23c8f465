"""Where dpe keeps its local state: `DPE_HOME`, by default `.dpe/` in the project folder."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def dpe_home() -> Path:
    return Path(os.environ.get("DPE_HOME") or PROJECT_ROOT / ".dpe").resolve()


def dagster_home() -> Path:
    """The Dagster instance folder: `DAGSTER_HOME` when set, else `$DPE_HOME/dagster`."""
    return Path(os.environ.get("DAGSTER_HOME") or dpe_home() / "dagster").resolve()
