"""PostgreSQL for the tests: the production storage, on 127.0.0.1:5432 (trust auth, database `test`)."""

from __future__ import annotations

import os
from contextlib import closing

import pytest

POSTGRES_URL = os.environ.get("DPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_or_skip() -> str:
    """PostgreSQL tests skip on a machine without it, but CI sets DPE_REQUIRE_POSTGRES=1 so that
    they can never be skipped there."""
    try:
        import psycopg2

        with closing(psycopg2.connect(POSTGRES_URL, connect_timeout=3)):
            return POSTGRES_URL
    except Exception as error:  # noqa: BLE001 - any failure to connect means "absent"
        message = f"PostgreSQL is not reachable at {POSTGRES_URL} ({error.__class__.__name__}: {error})"
        if os.environ.get("DPE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + "; DPE_REQUIRE_POSTGRES=1 makes it mandatory")
        pytest.skip(message)
