"""A throwaway PostgreSQL schema per test, at the CI server on 127.0.0.1:5432.

``FEDLIB_TEST_POSTGRES`` overrides the connection string. Tests skip with a clear
message when no server answers.
"""

from __future__ import annotations

import os
import uuid

PG_URL = os.environ.get("FEDLIB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_unavailable() -> str | None:
    """``None`` when the test server answers, else why not (the skip message)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install fedlib[postgres])"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return (
            f"no PostgreSQL answers at {PG_URL} ({type(e).__name__}: {e}); set FEDLIB_TEST_POSTGRES"
        )
    return None


def fresh_schema() -> str:
    return "fedlib_test_" + uuid.uuid4().hex[:12]


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
