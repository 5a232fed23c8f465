"""Prometheus' own programs for the tests: `promtool` (the alert rules checked and unit-tested) and
the `prometheus` server (a real one scraping `dpe metrics`). Debian's `prometheus` package installs
both on the PATH.

Where one is missing the tests that need it skip with the reason; with `DPE_REQUIRE_PROMETHEUS=1`
(CI, `.ci/run`, which installs the package) they fail instead."""

from __future__ import annotations

import os
import shutil

import pytest


def _required() -> bool:
    return os.environ.get("DPE_REQUIRE_PROMETHEUS") == "1"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    message = f"`{name}` is not on the PATH (Debian/Ubuntu: apt-get install prometheus)"
    if _required():
        pytest.fail(message + "; DPE_REQUIRE_PROMETHEUS=1 makes it mandatory")
    pytest.skip(message)


def promtool() -> str:
    """The path of `promtool`, or skip (fail under DPE_REQUIRE_PROMETHEUS=1) saying it is missing."""
    return _binary("promtool")


def prometheus_binary() -> str:
    """The path of the `prometheus` server, or skip (fail under DPE_REQUIRE_PROMETHEUS=1) saying it is missing."""
    return _binary("prometheus")
