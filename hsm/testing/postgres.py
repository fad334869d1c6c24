"""A throwaway PostgreSQL server for tests of the metadata store on PostgreSQL.

:func:`postgres_server` starts a private PostgreSQL cluster in a directory of its own:
``initdb`` (trust authentication, no password), a server that listens on a unix socket in
that directory only (``listen_addresses = ''``: nothing on the network), ``fsync`` off
(a test server: speed over durability), started with ``pg_ctl -w`` and stopped with
``pg_ctl stop -m immediate`` afterwards, the directory removed. It yields a
:class:`PostgresServer` whose :meth:`~PostgresServer.new_database` makes a fresh database
(``CREATE DATABASE`` takes tens of milliseconds) and returns its SQLAlchemy URL.

PostgreSQL refuses to run as root. As root the server runs as the ``postgres`` system
user (Debian's ``postgresql`` package creates it), its directory handed to that user;
clients connect as the role ``postgres`` over the socket. As another user it runs as
that user, whose name is then the role.

``HSM_TEST_POSTGRES_URL`` (a ``postgresql://`` URL of an existing server, with a role that
may create databases) makes :func:`postgres_server` start nothing and make the databases
there instead.

The binaries are found under ``/usr/lib/postgresql/<version>/bin`` (newest first), then on
``PATH``. Without them: a :class:`~hsm.testing.harness.HarnessError` saying what to
install (``scripts/test`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hsm.testing.layout import HarnessError

__all__ = ["PostgresServer", "find_postgres_bin", "postgres_server"]

_ENV_URL = "HSM_TEST_POSTGRES_URL"
_START_TIMEOUT_S = 60


def find_postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: _version(p.parent.parent.name), reverse=True)
    if versions:
        return versions[0].parent
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    raise HarnessError("PostgreSQL's server is not installed (no initdb): apt-get install "
                       "postgresql (scripts/test installs it), or set HSM_TEST_POSTGRES_URL "
                       "to an existing server")


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)


@dataclass(frozen=True)
class PostgresServer:
    """A running server: ``base_url`` has no database; :meth:`new_database` makes one."""

    base_url: str  # postgresql+psycopg://ROLE@/?host=SOCKETDIR (or the HSM_TEST_... one)

    def url(self, database: str) -> str:
        head, _, query = self.base_url.partition("?")
        head = head.rsplit("/", 1)[0]
        return f"{head}/{database}" + (f"?{query}" if query else "")

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg  # imported here: the plugin stays light

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(_libpq(self.url("postgres")), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg's own connection string."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def postgres_server(directory: Path | None = None) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the length of the ``with`` (see the module docstring)."""
    existing = os.environ.get(_ENV_URL)
    if existing:
        base = existing.replace("postgresql://", "postgresql+psycopg://", 1)
        yield PostgresServer(base)
        return
    bin_dir = find_postgres_bin()
    owned = directory is None
    root = Path(tempfile.mkdtemp(prefix="hsm-pg-")) if directory is None else directory
    root.mkdir(parents=True, exist_ok=True)
    data, socket_dir = root / "data", root / "run"
    socket_dir.mkdir(exist_ok=True)
    run_as = _server_user()
    if run_as is not None:
        for path in (root, socket_dir):
            os.chown(path, run_as.pw_uid, run_as.pw_gid)
    role = run_as.pw_name if run_as is not None else pwd.getpwuid(os.geteuid()).pw_name
    started = False
    try:
        _run(run_as, [str(bin_dir / "initdb"), "-D", str(data), "-U", role, "-A", "trust",
                      "-E", "UTF8", "--no-sync"], "initdb")
        options = (f"-c listen_addresses='' -c unix_socket_directories='{socket_dir}' "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        _run(run_as, [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t",
                      str(_START_TIMEOUT_S), "-l", str(root / "server.log"), "-o", options,
                      "start"], "pg_ctl start", log=root / "server.log")
        started = True
        yield PostgresServer(f"postgresql+psycopg://{role}@/postgres?host={socket_dir}")
    finally:
        if started:
            # If stopping fails the directory goes anyway: the server dies with its files.
            with contextlib.suppress(HarnessError):
                _run(run_as, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"], "pg_ctl stop")
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise HarnessError("PostgreSQL refuses to run as root and there is no 'postgres' "
                           "user to run it as: apt-get install postgresql creates it") \
            from None


def _run(run_as: pwd.struct_passwd | None, argv: list[str], what: str, *,
         log: Path | None = None) -> None:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    # As the server user: subprocess switches ids in the child itself (no preexec_fn,
    # which is unsafe with threads about).
    ids: dict[str, object] = {}
    if run_as is not None:
        env["HOME"] = run_as.pw_dir
        ids = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                              timeout=_START_TIMEOUT_S + 30, cwd="/", **ids)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"PostgreSQL's {what} failed: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        if log is not None and log.exists():
            detail += log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        tail = " | ".join(detail[-3:]) or "no message"
        raise HarnessError(f"PostgreSQL's {what} failed (exit {done.returncode}): {tail}")
