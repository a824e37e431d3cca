"""A real systemd-journald (started here when none runs) receives the daemon's log events.

A child Python process configures the journald sink and logs; `journalctl -D /run/log/journal` reads
the fields back. Needs root (journald binds /run/systemd/journal) and the systemd package.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

JOURNALD = Path("/lib/systemd/systemd-journald")
SOCKET = "/run/systemd/journal/socket"
STDOUT_SOCKET = "/run/systemd/journal/stdout"
JOURNAL_DIR = "/run/log/journal"
REPO = Path(__file__).resolve().parents[2]
SIGNATURE = "5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766554433221100"
PRESIGNED = (
    "https://127.0.0.1:8333/lipsyncd/promo/a.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential=AKIDEXAMPLE%2F20261124&X-Amz-Expires=3600&X-Amz-Signature={SIGNATURE}"
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="journald must bind /run/systemd/journal: needs root"),
    pytest.mark.skipif(
        not JOURNALD.exists() or not shutil.which("journalctl"), reason="systemd not installed"
    ),
]


def _journald_alive() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"", SOCKET)  # an empty datagram is ignored by journald
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise
            return False
    return True


@pytest.fixture(scope="module")
def journald() -> Iterator[list[str]]:
    """Use the running journald, or start one by hand and stop it afterwards. Yields where journalctl
    should read: the host's own journal, or the volatile one the hand-started journald writes."""
    if _journald_alive():
        yield []
        return
    proc = subprocess.Popen([str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _journald_alive():
            assert proc.poll() is None, (
                f"journald exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "journald did not open its socket within 10 s"
            time.sleep(0.05)
        yield ["-D", JOURNAL_DIR]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def read_journal(where: list[str], match: str, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    """Entries matching FIELD=value, polling until `count` arrived (journald writes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["journalctl", *where, match, "-o", "json", "--all", "--no-pager"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


CHILD = """
import os, sys, structlog
from daemon.ops.logging import configure_logging
url = os.environ["TEST_URL"]  # not in argv: journald records every command line as _CMDLINE
configure_logging(sys.argv[1], "info", identifier="lipsyncd-test")
structlog.contextvars.bind_contextvars(job=sys.argv[2], video="anchor_a", stage="encode", model="baseline")
log = structlog.get_logger("child")
log.info("video_rendered", frames=96, url=url, secret_key="hunter2")
log.debug("not_at_info_level")
try:
    raise OSError("upload refused: " + url)
except OSError:
    log.exception("upload_failed", attachment="x" * 300_000)
print("plain stderr line", sys.argv[2], file=sys.stderr)
"""


def run_child(tmp_path: Path, fmt: str, job: str, **popen: object) -> None:
    """Runs CHILD from a file: journald records command lines (_CMDLINE); -c would log the script."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEST_URL": PRESIGNED}
    env.pop("JOURNAL_STREAM", None)
    env.update(popen.pop("env", {}))  # type: ignore[call-overload]
    proc = subprocess.run(
        [sys.executable, str(script), fmt, job],
        env=env,
        timeout=60,
        **popen,  # type: ignore[call-overload]
    )
    assert proc.returncode == 0


def test_events_reach_journald_with_their_fields(journald: list[str], tmp_path: Path) -> None:
    job = f"jtest-{uuid.uuid4().hex[:12]}"
    run_child(tmp_path, "journald", job, stderr=subprocess.DEVNULL)
    entries = read_journal(journald, f"JOB={job}", 2)
    assert [e["EVENT"] for e in entries] == ["video_rendered", "upload_failed"]
    ok, failed = entries
    assert (ok["JOB"], ok["VIDEO"], ok["STAGE"], ok["MODEL"]) == (job, "anchor_a", "encode", "baseline")
    assert (ok["PRIORITY"], failed["PRIORITY"]) == ("6", "3")
    assert ok["SYSLOG_IDENTIFIER"] == "lipsyncd-test"
    assert ok["FRAMES"] == "96"
    assert ok["SECRET_KEY"] == "[redacted]"
    assert str(ok["MESSAGE"]).startswith("video_rendered frames=96")
    assert "OSError: upload refused" in str(failed["EXCEPTION"])
    assert len(str(failed["ATTACHMENT"])) == 300_000  # too big for a datagram: went through a sealed memfd
    raw = json.dumps(entries)
    assert SIGNATURE not in raw
    assert "hunter2" not in raw
    assert "AKIDEXAMPLE" not in raw


def _journal_stream(identifier: str) -> socket.socket:
    """What systemd gives a service as stdout/stderr: a stream connection to journald."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(STDOUT_SOCKET)
    sock.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())  # id, unit, priority, level prefix, forwards
    sock.shutdown(socket.SHUT_RD)
    return sock


def test_auto_format_uses_journald_when_stderr_is_the_journal(journald: list[str], tmp_path: Path) -> None:
    job = f"jauto-{uuid.uuid4().hex[:12]}"
    with _journal_stream("lipsyncd-test") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        run_child(tmp_path, "auto", job, stderr=stream.fileno(), env=env)
    entries = read_journal(journald, f"JOB={job}", 2)
    assert [e["_TRANSPORT"] for e in entries] == ["journal", "journal"]  # native fields, not stream lines
    [plain] = read_journal(
        journald, f"MESSAGE=plain stderr line {job}", 1
    )  # ordinary stderr lines still arrive
    assert (plain["_TRANSPORT"], plain["SYSLOG_IDENTIFIER"]) == ("stdout", "lipsyncd-test")
