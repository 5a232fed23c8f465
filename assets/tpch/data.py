"""Where the TPC-H tables and query results live, and how the tables are generated."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

TABLES = ("customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier")


def _tpchgen() -> str:
    beside_python = Path(sys.executable).parent / "tpchgen-cli"
    found = str(beside_python) if beside_python.exists() else shutil.which("tpchgen-cli")
    if not found:
        raise RuntimeError("tpchgen-cli is not installed; it comes with the project (`make demo` installs it)")
    return found


class TpchData(ConfigurableResource):
    scale_factor: float = Field(description="TPC-H scale factor: 1 is about 1 GB of raw data")
    root: str = Field(description="Folder that holds one subfolder per scale factor")

    @property
    def folder(self) -> Path:
        return Path(self.root) / f"sf{self.scale_factor:g}"

    def table(self, name: str) -> str:
        return str(self.folder / "tables" / f"{name}.parquet")

    def result(self, query: str) -> str:
        return str(self.folder / "results" / f"{query}.parquet")

    def generate(self) -> dict[str, int]:
        """Generate the tables with tpchgen-cli unless they are already there; returns file sizes."""
        tables = self.folder / "tables"
        if not all((tables / f"{t}.parquet").exists() for t in TABLES):
            staging = self.folder / "tables.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            subprocess.run(
                [_tpchgen(), "parquet", "-s", f"{self.scale_factor:g}", f"--output-dir={staging}"],
                check=True, capture_output=True, text=True,
            )
            shutil.rmtree(tables, ignore_errors=True)
            staging.replace(tables)  # readers never see half a data set
        return {t: (tables / f"{t}.parquet").stat().st_size for t in TABLES}
