"""The ledger's cursor is exact: under run writers whose clocks disagree, and under a run-finished
event committed after a later one was read, every ended run gets one record, none two (real
Dagster instances on SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
import sqlalchemy
from dagster import DagsterEventType, build_sensor_context
from dagster._core.events import DagsterEvent
from dagster._core.events.log import EventLogEntry
from dagster._core.test_utils import create_run_for_test, freeze_time

from dpe_dagster.config import parse_environment
from dpe_dagster.pools import PoolError
from dpe_dagster.pools.local.standalone import LocalSparkPool
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import read_run_usage
from dpe_dagster.usage.sensor import LATE_COMMIT_S, ReadCursor, build_ledger_sensor, parse_cursor
from tests.support.postgres import postgres_or_skip

ENV = parse_environment("local", {"pools": {"spot-etl": {
    "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 0.36,
}}})


def tick(instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    build_ledger_sensor(ENV)(context)
    return context.cursor


def end_run(instance, clock: float | None = None) -> str:
    """A run on the pool, canceled by a writer whose clock reads `clock` (now if None)."""
    run = create_run_for_test(instance, job_name="nightly", tags=pool_tags("spot-etl"))
    if clock is None:
        instance.report_run_canceled(run)
    else:
        with freeze_time(clock):
            instance.report_run_canceled(run)
    return run.run_id


def records(instance) -> Counter:
    return Counter(r.run_id for r in read_run_usage(instance))


def test_a_run_ended_by_a_writer_whose_clock_is_behind_is_not_skipped(instance):
    first = end_run(instance)
    cursor = tick(instance, None)
    assert records(instance) == Counter({first: 1})

    # A second daemon whose clock is ten minutes behind ends a run after the ledger moved on.
    behind = end_run(instance, clock=time.time() - 600)
    later = end_run(instance)
    assert instance.get_run_record_by_id(behind).update_timestamp.timestamp() < time.time() - 590
    for _ in range(3):
        cursor = tick(instance, cursor)
    assert records(instance) == Counter({first: 1, behind: 1, later: 1})

    # A replay from scratch (a cursor lost in a crash) and a clock running ahead double nothing.
    ahead = end_run(instance, clock=time.time() + 600)
    tick(instance, None)
    cursor = tick(instance, cursor)
    assert records(instance) == Counter({first: 1, behind: 1, later: 1, ahead: 1})


def test_a_finish_event_committed_after_a_later_one_was_read_is_not_skipped(tmp_path):
    """On PostgreSQL a run-finished event gets its storage id when inserted and is seen only once
    its transaction commits: here a run's event is held uncommitted while another run's event,
    with a higher id, is committed and read."""
    from dagster import instance_for_test

    url = postgres_or_skip()
    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster"),
                           overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        instance.wipe()
        engine = sqlalchemy.create_engine(url)
        try:
            slow = create_run_for_test(instance, job_name="nightly", tags=pool_tags("spot-etl"))
            event = DagsterEvent(event_type_value=DagsterEventType.RUN_CANCELED.value, job_name=slow.job_name,
                                 message="canceled by a writer whose commit is slow")
            entry = EventLogEntry(error_info=None, level=logging.INFO, user_message="", run_id=slow.run_id,
                                  timestamp=time.time(), dagster_event=event)
            with engine.connect() as held:
                transaction = held.begin()
                held.execute(instance.event_log_storage.prepare_insert_event(entry))  # its id is taken now
                fast = end_run(instance)
                cursor = tick(instance, None)
                assert records(instance) == Counter({fast: 1})
                transaction.commit()
            # ... then, as Dagster does after storing a run event, the run's status.
            instance.run_storage.handle_run_event(slow.run_id, event)
            cursor = tick(instance, cursor)
            assert records(instance) == Counter({fast: 1, slow.run_id: 1})
        finally:
            engine.dispose()
            instance.wipe()


def test_ids_read_are_read_again_until_late_commits_are_past():
    cursor = ReadCursor().advanced(started=100.0, finished=100.5, highest=7, handled={3, 7})
    assert cursor.after is None, "the first read's rows may still have late neighbours below them"
    assert cursor.handled == {3, 7}, "rows handled are not handled again"
    cursor = cursor.advanced(started=100.0 + LATE_COMMIT_S / 2, finished=101.0 + LATE_COMMIT_S / 2, highest=9,
                             handled={5, 9})
    assert cursor.after is None and cursor.handled == {3, 5, 7, 9}
    cursor = cursor.advanced(started=100.5 + LATE_COMMIT_S, finished=101.0 + LATE_COMMIT_S, highest=9, handled=set())
    assert cursor.after == 7 and cursor.handled == {9}, "rows up to 7 were all committed before this read began"
    cursor = cursor.advanced(started=200.0 + LATE_COMMIT_S, finished=201.0 + LATE_COMMIT_S, highest=None,
                             handled=set())
    assert (cursor.after, cursor.reads, cursor.handled) == (9, (), frozenset())
    assert ReadCursor.from_json(cursor.to_json()) == cursor


def test_a_cursor_from_before_storage_ids_reads_everything_again_and_doubles_nothing(instance):
    run_id = end_run(instance)
    tick(instance, None)
    assert parse_cursor("1796230804.5") == {}
    tick(instance, '{"spot-etl": 1796230804.5}')
    assert records(instance) == Counter({run_id: 1})
    with pytest.raises(ValueError, match="dpe_usage_ledger cursor"):
        parse_cursor('["spot-etl"]')


def test_a_bug_fails_the_tick_and_moves_no_cursor_while_a_pool_error_only_delays_the_pool(sqlite_instance,
                                                                                           monkeypatch):
    run_id = end_run(sqlite_instance)

    def broken(self):
        raise KeyError("a bug, not a pool's failure")

    monkeypatch.setattr(LocalSparkPool, "nodes", broken)
    context = build_sensor_context(instance=sqlite_instance, cursor=None)
    with pytest.raises(KeyError, match="a bug"):
        build_ledger_sensor(ENV)(context)
    assert context.cursor is None and records(sqlite_instance) == Counter()

    def failing(self):
        raise PoolError("pool spot-etl: the provider is down")

    monkeypatch.setattr(LocalSparkPool, "nodes", failing)
    context = build_sensor_context(instance=sqlite_instance, cursor=None)
    result = build_ledger_sensor(ENV)(context)
    assert "pool spot-etl failed" in result.skip_message and "the provider is down" in result.skip_message
    assert records(sqlite_instance) == Counter()

    monkeypatch.undo()
    tick(sqlite_instance, context.cursor)
    assert records(sqlite_instance) == Counter({run_id: 1})
