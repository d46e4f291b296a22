"""A throwaway PostgreSQL server for the test suite (fixtures `postgres_server`, `postgres_url`, `fresh_postgres_url`).

Why: the state store and the warehouse source must work on a real PostgreSQL, not an
imitation, and CI has no database service. `make test` installs Debian's `postgresql`
package (like chromium for the browser test); this module starts a private server from
its binaries for one test session:

    initdb into a temporary directory (trust auth, no fsync: the data is thrown away)
    pg_ctl start on a free loopback port, with the Unix socket in the same directory
    CREATE DATABASE for the tests, SQLAlchemy URLs `postgresql+psycopg://...`
    pg_ctl stop and the directory removed at the end

initdb refuses to run as root, and tests run as root on the CI machine: there the
server runs as the `postgres` system user (created by the Debian package) through
`runuser -u postgres --`; any other user runs the binaries directly. Where none of this
can be done (no binaries, no psycopg, no `postgres` user for root, a failed start), the
fixtures skip with the reason, never fail: a machine without PostgreSQL still runs the
rest of the suite.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

#: Debian installs each major version's server binaries here (the package puts only wrappers on PATH).
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 60
SYSTEM_USER = "postgres"


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be started here; the message says why (and becomes the skip reason)."""


def find_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: the newest Debian version, else `pg_config --bindir`."""
    candidates = []
    if DEBIAN_BINARIES.is_dir():
        for version_dir in DEBIAN_BINARIES.iterdir():
            bindir = version_dir / "bin"
            if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
                try:
                    candidates.append((float(version_dir.name), bindir))
                except ValueError:
                    continue
    if candidates:
        return max(candidates)[1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            return None
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One private server: `start()`, then `url(database)` / `create_database()`, and `stop()`."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.superuser = "postgres"
        self.port: int | None = None
        self.root: Path | None = None
        self._as_user: list[str] = []

    # ------------------------------------------------------------------ running the binaries

    def _prefix(self) -> list[str]:
        """Run as the `postgres` system user when we are root (initdb refuses root)."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no {SYSTEM_USER!r} system user to run initdb as "
                "(Debian's postgresql package creates it)"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and `runuser` is not available to run initdb as postgres")
        return [runuser, "-u", SYSTEM_USER, "--"]

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=timeout)

    def _log_tail(self) -> str:
        log = self.root / "server.log" if self.root else None
        if log and log.exists():
            return "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "PostgresServer":
        self._as_user = self._prefix()
        self.root = Path(tempfile.mkdtemp(prefix="healthsync-pg-"))
        if self._as_user:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        done = self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", self.superuser, "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(done.stderr or done.stdout).strip()[-800:]}")
        last_error = ""
        for _attempt in range(3):  # another process may take the free port between probe and bind
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"),
                "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start",
            )
            if done.returncode == 0:
                break
            last_error = f"{(done.stderr or done.stdout).strip()[-400:]}\n{self._log_tail()}"
        else:
            raise PostgresUnavailable(f"pg_ctl start failed: {last_error}")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(f"server did not accept connections: {exc}\n{self._log_tail()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    # ------------------------------------------------------------------ databases

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.superuser} dbname={database}"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for `database` on this server."""
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start_server() -> PostgresServer:
    """A started server, or PostgresUnavailable saying why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (pip install -e '.[dev]' installs the postgres extra)") from None
    bindir = find_binaries()
    if bindir is None:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries (initdb, pg_ctl) under {DEBIAN_BINARIES} or from pg_config; "
            "`make test` installs Debian's postgresql package"
        )
    server = PostgresServer(bindir)
    try:
        return server.start()
    except PostgresUnavailable:
        server.stop()
        raise
    except (OSError, subprocess.SubprocessError) as exc:
        server.stop()
        raise PostgresUnavailable(f"could not run the PostgreSQL binaries: {exc}") from None


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres_server():
    """The session's private PostgreSQL server (skips the test when it cannot be started, except in CI).

    CI (`CI=true`, as .ci/run is started) must run the PostgreSQL tests: there a server that
    cannot start is a failure, not a skip, so a broken install step cannot pass unnoticed.
    """
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL must run in CI but cannot start: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg://...`) of one database shared by the session."""
    return postgres_server.create_database("healthsync_test")


@pytest.fixture
def fresh_postgres_url(postgres_server):
    """A SQLAlchemy URL of a new empty database for this test alone (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)
