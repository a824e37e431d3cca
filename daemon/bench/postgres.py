"""A throwaway PostgreSQL cluster for the tests and the `cluster` benchmark: initdb in a temporary folder,
started on a free loopback port with its unix socket inside that folder, one fresh database per test or
run, stopped at the end. (It lives in the package because the benchmark cannot import tests/.)

Uses Debian's `postgresql` package (Makefile TEST_DEB_PACKAGES). initdb and pg_ctl refuse to run as
root, so as root the cluster belongs to the `postgres` user and runs through `runuser`."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30


def _bin_dir() -> Path | None:
    """The newest installed server's binaries (/usr/lib/postgresql/VERSION/bin), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why no cluster can be started here (None when one can)."""
    if _bin_dir() is None:
        return "PostgreSQL is not installed (Debian's `postgresql` package: make system-packages)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb and pg_ctl as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster; `database()` makes a new empty database and returns its URL."""

    root: Path
    port: int
    user: str
    bin_dir: Path
    _names: itertools.count[int]
    options: str = ""  # the server's command-line options (pg_ctl -o)

    def _run(self, *argv: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=START_TIMEOUT_S)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def database(self) -> str:
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (-m fast: every session is ended), stay down `down_s` seconds (connections are refused),
        and start again on the same port with the same options."""
        pg_ctl, data, log = str(self.bin_dir / "pg_ctl"), str(self.root / "data"), str(self.root / "log")
        self._run(pg_ctl, "-D", data, "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self._run(pg_ctl, "-D", data, "-o", self.options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> Cluster:
    """initdb and start a cluster (about 1-2 s); the caller stops it."""
    bin_dir = _bin_dir()
    assert bin_dir is not None, unavailable()
    root = Path(tempfile.mkdtemp(prefix="lipsyncd-pg-"))
    root.chmod(0o755)
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Cluster(root, _free_port(), user, bin_dir, itertools.count(1))
    data = root / "data"
    cluster._run(
        str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"
    )
    cluster.options = (
        f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    cluster._run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        cluster.options,
        "-l",
        str(root / "log"),
        "-w",
        "start",
    )
    return cluster
