"""The reliability suite (`make test-reliability`): AWS faults, daemon crashes, spot loss, two
controllers, bad input and secrets. Ends with one summary line of what it measured."""

from __future__ import annotations

import pytest

from tests.support.postgres import postgres_or_skip
from tests.reliability import summary
from tests.reliability.harness import KEY_ID, REGION, SECRET


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """The summary line is the last line of the output (after pytest's own "N passed" line), whenever
    a reliability test was collected: `make test-reliability` and `make test` alike."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and getattr(config, "_reliability_items", None):
        terminal.write_line(summary.line())


def pytest_collection_modifyitems(session, config, items):
    config._reliability_items = [item for item in items if "tests/reliability/" in str(item.fspath)]


@pytest.fixture
def measured():
    """Tests report what they measured through this."""
    return summary


@pytest.fixture
def deploy(tmp_path, monkeypatch):
    """Makes a real aws-sim deployment (moto behind the fault injector, PostgreSQL, daemons);
    everything it started is stopped at the end, also on failure."""
    from tests.reliability.daemons import Deployment

    postgres_or_skip()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    made: list = []

    def make(rates, **kwargs):
        made.append(Deployment(tmp_path / f"deployment-{len(made)}", rates, **kwargs))
        return made[-1]

    yield make
    for deployment in made:
        deployment.close()
