"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, a unix socket, no TCP.

``TASKBED_POSTGRES_DSN`` points the tests at an existing server instead (each test then gets
its own schema there, dropped afterwards). Otherwise the cluster is started from the
PostgreSQL binaries found in ``TASKBED_PG_BIN``, on PATH, or under /usr/lib/postgresql/*/bin
(Debian's packages). As root, the server runs as the unprivileged user ``nobody``:
``initdb`` refuses to run as root.

Also a script, for benchmarks and manual runs: ``python tests/pgcluster.py`` starts a cluster,
prints its DSN and stops it on Enter.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import grp
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "taskbed"


def find_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    configured = os.environ.get("TASKBED_PG_BIN")
    if configured:
        return Path(configured)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(found[0]).parent if found else None


class Cluster:
    """A PostgreSQL server in a temp dir, reachable only through its unix socket there."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="taskbed-pg-"))
        self.data = self.dir / "data"
        self.port = 5432  # only names the socket file: the server listens on no TCP port
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as nobody
            shutil.chown(self.dir, "nobody", "nogroup" if _has_group("nogroup") else None)
            self._as = ["runuser", "-u", "nobody", "--"]
        self.dsn = f"host={self.dir} port={self.port} user={SUPERUSER} dbname=postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                + self.log_tail()
            )

    def log_tail(self) -> str:
        log = self.dir / "server.log"
        try:
            return log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-locale",
        )  # fmt: skip
        options = (
            f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if not self.dir.exists():
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                    "-w", "stop",
                )  # fmt: skip
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The DSN of a server to test against: the configured one, or a throwaway cluster.

    Raises:
        LookupError: no DSN is configured and no PostgreSQL binaries are installed.
    """
    configured = os.environ.get("TASKBED_POSTGRES_DSN")
    if configured:
        yield configured
        return
    bin_dir = find_bin()
    if bin_dir is None:
        raise LookupError(
            "no PostgreSQL: install it (Debian: apt-get install postgresql-15) or set "
            "TASKBED_POSTGRES_DSN to a server the tests may create schemas on"
        )
    cluster = Cluster(bin_dir)
    atexit.register(cluster.stop)  # also when a caller never gets to the finally below
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


def with_schema(dsn: str, schema: str) -> str:
    """*dsn* with ``search_path`` set to *schema* (libpq's ``options``)."""
    return f"{dsn} options=-csearch_path={schema}"


@contextlib.contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """A new empty schema on the server, as a DSN; dropped with everything in it afterwards."""
    import psycopg  # noqa: PLC0415 - only the tests that use PostgreSQL need psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield with_schema(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


if __name__ == "__main__":
    with server() as dsn:
        print(dsn, flush=True)
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input()
