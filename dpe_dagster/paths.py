"""Where dpe keeps its local state: `DPE_HOME`, by default `.dpe/` in the project folder (the
current folder: where `dpe`, `dagster dev` and the daemon are started), never inside the package."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The Dagster project dpe works for: the current folder (its workspace.yaml, pyproject.toml)."""
    return Path.cwd().resolve()


def dpe_home() -> Path:
    return Path(os.environ.get("DPE_HOME") or project_root() / ".dpe").resolve()


def dagster_home() -> Path:
    """The Dagster instance folder: `DAGSTER_HOME` when set, else `$DPE_HOME/dagster`."""
    return Path(os.environ.get("DAGSTER_HOME") or dpe_home() / "dagster").resolve()
