"""The throwaway PostgreSQL server the store tests run on: it starts in the test run (as
root too), listens on no network port, gives fresh databases, and goes away afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsm.testing.layout import HarnessError
from hsm.testing.postgres import PostgresServer, postgres_server


def test_a_fresh_database_per_test_is_empty_and_usable(hsm_postgres_url: str) -> None:
    """Each test gets its own empty database, reachable through SQLAlchemy and psycopg."""
    import sqlalchemy as sa

    engine = sa.create_engine(hsm_postgres_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text(
                "select count(*) from information_schema.tables "
                "where table_schema = 'public'")).scalar() == 0
            conn.execute(sa.text("create table t (x int primary key)"))
            conn.execute(sa.text("insert into t values (1)"))
    finally:
        engine.dispose()


def test_the_server_listens_on_a_socket_only(hsm_postgres: PostgresServer) -> None:
    """The server is reached through a unix socket in its own directory, never over TCP."""
    if os.environ.get("HSM_TEST_POSTGRES_URL"):
        pytest.skip("an existing server was named: its network settings are its own")
    import sqlalchemy as sa

    assert "?host=/" in hsm_postgres.base_url
    engine = sa.create_engine(hsm_postgres.url("postgres"))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("show listen_addresses")).scalar() == ""
    finally:
        engine.dispose()


def test_a_server_of_its_own_is_removed_afterwards() -> None:
    """A server started and stopped leaves no directory behind."""
    if os.environ.get("HSM_TEST_POSTGRES_URL"):
        pytest.skip("an existing server was named: nothing is started")
    with postgres_server() as server:
        socket_dir = Path(server.base_url.split("host=", 1)[1])
        assert socket_dir.is_dir()
    assert not socket_dir.parent.exists()


def test_missing_postgresql_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PostgreSQL's binaries the error says to install postgresql."""
    monkeypatch.delenv("HSM_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setattr("hsm.testing.postgres.Path.glob", lambda self, pattern: iter(()))
    monkeypatch.setattr("hsm.testing.postgres.shutil.which", lambda name: None)
    with pytest.raises(HarnessError, match="apt-get install postgresql"), postgres_server():
        pass
