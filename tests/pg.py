"""Throwaway PostgreSQL clusters for the tests: initdb + pg_ctl on a free loopback port.

PostgreSQL refuses to run as root, so under root the server runs as the unprivileged 'nobody'.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534
REQUIRE_ENV = "KREPIS_REQUIRE_POSTGRES"
#: ``DIR:PORT`` of a server started by ``python tests/pg.py start DIR``: the tests use it instead
#: of starting their own (a mutation run starts a test session per mutant).
REUSE_ENV = "KREPIS_TEST_POSTGRES"


def binaries_missing() -> str | None:
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if shutil.which(b) is None]
    if shutil.which("postgres") is None and shutil.which("initdb"):
        # Debian keeps postgres beside initdb, not always on PATH
        real = os.path.realpath(shutil.which("initdb") or "")
        if os.path.exists(os.path.join(os.path.dirname(real), "postgres")):
            missing.remove("postgres")
    return ", ".join(missing) or None


def _bindir() -> str:
    return os.path.dirname(os.path.realpath(shutil.which("initdb") or "initdb"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demote() -> None:
    if os.geteuid() == 0:
        os.setgid(NOBODY)
        os.setuid(NOBODY)


class Cluster:
    """One PostgreSQL server in a temporary directory."""

    def __init__(self, base: Path, name: str = "primary", port: int | None = None) -> None:
        self.base = base
        self.data = base / name
        self.port = port or free_port()
        self.log = base / f"{name}.log"

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([os.path.join(_bindir(), args[0]), *args[1:]], preexec_fn=_demote,
                              capture_output=True, text=True, check=check, timeout=timeout,
                              cwd=self.base, env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"})

    def init(self, *, replication: bool = False) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync")
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.base}'",
            "fsync = on",
            "max_connections = 100",
            "shared_buffers = 32MB",
        ]
        if replication:
            conf += ["wal_level = replica", "max_wal_senders = 5", "hot_standby = on",
                     "wal_keep_size = 64MB"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        with open(self.data / "pg_hba.conf", "w") as f:
            f.write("local all all trust\n"
                    "host all krepis_pw 127.0.0.1/32 scram-sha-256\n"
                    "host all all 127.0.0.1/32 trust\n"
                    "host replication all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def kill9(self) -> None:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def url(self, db: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def sql(self, statement: str, db: str = "postgres") -> str:
        import psycopg

        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            rows = cur.fetchall() if cur.description else []
        return "\n".join("|".join(str(c) for c in row) for row in rows)


@contextlib.contextmanager
def temporary_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="krepis-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(base, NOBODY, NOBODY)
    os.chmod(base, 0o700)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)





def create_roles(cluster: Cluster) -> None:
    """The roles the tests log in as."""
    cluster.sql("CREATE ROLE krepis_pw LOGIN PASSWORD 'right-password' SUPERUSER")


if __name__ == "__main__":  # python tests/pg.py start DIR | stop DIR
    import sys

    command, where = sys.argv[1], Path(sys.argv[2])
    if command == "start":
        where.mkdir(parents=True)
        if os.geteuid() == 0:
            os.chown(where, NOBODY, NOBODY)
        os.chmod(where, 0o700)
        server = Cluster(where)
        server.init()
        server.start()
        create_roles(server)
        print(f"export {REUSE_ENV}={where}:{server.port}")
    else:
        port = next(line.split("=")[1].strip() for line in (where / "primary" / "postgresql.conf")
                    .read_text().splitlines() if line.startswith("port ="))
        Cluster(where, port=int(port)).stop("immediate")
