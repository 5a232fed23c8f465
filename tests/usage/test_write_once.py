"""The ledger's one write-once rule (`writes.write_once`), which every ledger writer uses (a run's
record and its asset parts, a node's lifetime, a pod's record, a budget alert): concurrent writers
write what is missing exactly once, and none writes what is already there."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from dagster import AssetKey, AssetObservation, MetadataValue

from dpe_dagster.usage.eventlog import observations
from dpe_dagster.usage.writes import write_once

KEY = AssetKey(["dpe", "test_parts"])
PARTS = {"a", "b", "c"}


def _write_part(instance, part: str) -> None:
    instance.report_runless_asset_event(AssetObservation(asset_key=KEY, metadata={"part": MetadataValue.text(part)}))


def _written(instance) -> Counter:
    return Counter(r.asset_observation.metadata["part"].value for r in observations(instance, KEY))


def test_concurrent_writers_write_each_missing_part_once_and_nothing_twice(instance):
    _write_part(instance, "a")  # written before: never written again

    def writer() -> set[str] | None:
        def unwritten() -> set[str]:
            return PARTS - set(_written(instance))

        def write(missing: set[str]) -> set[str]:
            time.sleep(0.2)  # between the check and the write, where a writer without the rule doubles
            for part in sorted(missing):
                _write_part(instance, part)
            return missing

        return write_once(instance, unwritten, write)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: writer(), range(4)))

    assert _written(instance) == Counter({"a": 1, "b": 1, "c": 1})
    assert sorted(results, key=lambda r: r is not None) == [None, None, None, {"b", "c"}]
    assert writer() is None  # all written: nothing to do, write is not called
