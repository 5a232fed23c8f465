"""A lock shared by every process that writes to one Dagster instance's ledger.

The ledger's check-then-write must not interleave between two writers (two daemons, a sensor and a
CLI): on PostgreSQL a session-level advisory lock (`pg_advisory_lock`), held by a connection of its
own; on SQLite, where every writer is on this machine, an `fcntl` lock on a file beside the
instance. Both are released if the holder dies, so a crash cannot leave the ledger locked."""

from __future__ import annotations

import fcntl
import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dagster import DagsterInstance


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def instance_lock(instance: DagsterInstance, name: str) -> Iterator[None]:
    postgres_url = getattr(instance.event_log_storage, "postgres_url", None)
    if postgres_url:
        import psycopg2

        connection = psycopg2.connect(postgres_url.replace("postgresql+psycopg2://", "postgresql://"))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", (_key(name),))
            yield
        finally:
            connection.close()  # ends the session, and with it the lock
        return
    path = Path(instance.root_directory) / f".dpe-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pool_lock(instance: DagsterInstance, pool: str):
    """The lock a pool's controllers act under. A node's removal and its lifetime record happen
    while it is held, so whoever holds it sees a removed node either live or in the ledger."""
    return instance_lock(instance, f"pool:{pool}")
