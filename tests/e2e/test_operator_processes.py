"""Operator mistakes with processes (issue 16, findings 2, 3, 4 and 8), through real `lipsyncd` processes,
real signals and the real embedded SeaweedFS: a command run beside the daemon must not kill its
storage, a second copy of something single refuses in plain words, Ctrl-C always ends everything, and
`lipsyncd run` restarts a child that died and leaves nothing behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import REPO, Daemon, Share, wait_for

FAST_STOP = {"storage": {"embedded_stop_timeout": "1s"}}  # SeaweedFS survives SIGKILL; keep tests short
CTRL_C_TRIES = int(os.environ.get("LIPSYNCD_CTRL_C_TRIES", "3"))  # the README's figure used 20


def processes(needle: str) -> dict[int, str]:
    """pid -> command line of every process whose command line contains needle."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in argv and not _is_zombie(entry):
            found[int(entry.name)] = argv
    return found


def _is_zombie(entry: Path) -> bool:
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def child_pid(share: Share, role: str) -> int | None:
    pids = [pid for pid, argv in processes(str(share.config)).items() if argv.rstrip().endswith(f" {role}")]
    return pids[0] if len(pids) == 1 else None


def weed_pids(share: Share) -> list[int]:
    return list(processes(f"-dir={share.state}/embedded-s3/data"))


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def start_run(share: Share) -> Daemon:
    """`lipsyncd run` in a session of its own, as a terminal would start it; returns once all is up."""
    run = Daemon(share, "run", new_session=True)
    try:
        wait_for(lambda: events(run, "upload_ready"), 90, "upload watcher and storage up", run)
        wait_for(lambda: events(run, "render_ready"), 60, "render watcher up", run)
    except BaseException:  # a failed start must not leave the tree running after the test
        run.terminate(timeout=90)
        raise
    return run


def nothing_left(share: Share) -> bool:
    return not processes(str(share.config)) and not weed_pids(share)


def distributed_job(share: Share, run: Daemon, media: dict[str, Path], name: str) -> dict[str, Any]:
    for key in ("face", "speech"):
        if not (share.inbox / "media" / media[key].name).exists():
            shutil.copy(media[key], share.inbox / "media")
    share.drop(
        f"{name}.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": True}
    )
    finished: dict[str, Any] = wait_for(
        lambda: (doc := share.links(name)) and doc["status"] in ("done", "partial", "failed") and doc,
        120,
        name,
        run,
    )
    return finished


def download_sha256(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return hashlib.sha256(response.read()).hexdigest()


def test_bucket_lifecycle_beside_the_daemon_uses_its_storage(tmp_path: Path, media: dict[str, Path]) -> None:
    """Finding 2: the command SIGKILLed the daemon's SeaweedFS as 'stale' and ended in a traceback."""
    share = Share(tmp_path / "shared", FAST_STOP)
    run = start_run(share)
    try:
        before = distributed_job(share, run, media, "before")
        video = before["videos"][0]
        assert video["status"] == "ready", before
        servers = weed_pids(share)
        for args in (("bucket", "lifecycle"), ("bucket", "lifecycle", "--apply"), ("bucket", "lifecycle")):
            result = share.lipsyncd(*args, timeout=120)
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr + result.stdout
        assert "lipsyncd-expire" in result.stdout, "the applied policy is shown by the running server"
        assert weed_pids(share) == servers, "the daemon's storage must not be stopped or replaced"
        assert download_sha256(video["url"]) == video["sha256"], "links issued before still work"
        after = distributed_job(share, run, media, "after")
        assert [v["status"] for v in after["videos"]] == ["ready"], "the daemon kept uploading"
        assert not events(run, "embedded_s3_down")
        assert not events(run, "child_died")
    finally:
        assert run.terminate(timeout=90) == 0
    wait_for(lambda: nothing_left(share), 30, "every process gone")


def test_second_instances_refuse_in_plain_words_and_jobs_are_not_harmed(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    """Finding 3: two `run`s killed each other's storage; `run` + `render` failed jobs whose videos were
    ready. Now the second of anything single refuses, names the first and says how to stop it."""
    share = Share(tmp_path / "shared", FAST_STOP)
    first, second = Daemon(share, "run"), Daemon(share, "run")  # started together
    refused = wait_for(lambda: [d for d in (first, second) if d.proc.poll() is not None], 60, "one refusal")
    assert len(refused) == 1
    assert refused[0].proc.returncode == 75
    run = second if refused[0] is first else first
    wait_for(lambda: events(run, "storage_ready") and events(run, "render_ready"), 90, "winner up", run)
    message = refused[0].output()
    assert f"pid {run.proc.pid}" in message
    assert "kill -TERM" in message
    assert "Traceback" not in message
    try:
        for role in ("render", "upload", "storage", "run"):
            result = share.lipsyncd(role, timeout=60)
            assert result.returncode == 75, (role, result.stderr)
            assert "already running" in result.stderr
            assert "Traceback" not in result.stderr
        assert len(weed_pids(share)) == 1
        jobs = [distributed_job(share, run, media, f"dup{n}") for n in (1, 2)]
        assert [doc["status"] for doc in jobs] == ["done", "done"], jobs
        assert not events(run, "child_died")
    finally:
        assert run.terminate(timeout=90) == 0
    wait_for(lambda: nothing_left(share), 30, "every process gone")


def test_ctrl_c_always_ends_everything(tmp_path: Path) -> None:
    """Finding 4: a watcher deadlocked in its own signal handler when Ctrl-C reached it twice. Each try
    sends SIGINT to the process group, as a terminal does, and a burst of SIGINT/SIGTERM to every child
    (the nested-handler case); every process must be gone within 30 s."""
    share = Share(tmp_path / "shared", FAST_STOP)
    exits = []
    for attempt in range(CTRL_C_TRIES):
        run = start_run(share)
        children = [pid for pid in processes(str(share.config)) if pid != run.proc.pid]
        began = time.monotonic()
        os.killpg(os.getpgid(run.proc.pid), signal.SIGINT)
        for _ in range(20):
            for pid in children:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    _signal(pid, signum)
        try:
            code = run.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stuck = processes(str(share.config))
            for pid in stuck:
                _signal(pid, signal.SIGKILL)
            raise AssertionError(f"try {attempt + 1}: still running 30 s after Ctrl-C: {stuck}") from None
        wait_for(lambda: nothing_left(share), 30, "every process gone after Ctrl-C")
        exits.append(round(time.monotonic() - began, 1))
        assert code == 0, run.output()[-3000:]
    print(f"Ctrl-C: {len(exits)} tries, {len(exits)} clean exits, longest {max(exits)} s: {exits}")


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def test_run_restarts_a_dead_child_and_leaves_nothing_behind(tmp_path: Path, media: dict[str, Path]) -> None:
    """Finding 8: a killed upload watcher stopped the render watcher too, `run` exited without naming
    it and SeaweedFS was left running."""
    share = Share(tmp_path / "shared", FAST_STOP)
    run = start_run(share)
    try:
        render, storage, servers = child_pid(share, "render"), child_pid(share, "storage"), weed_pids(share)
        upload = child_pid(share, "upload")
        assert render
        assert storage
        assert upload
        assert len(servers) == 1
        os.kill(upload, signal.SIGKILL)
        died = wait_for(lambda: events(run, "child_died"), 30, "the death logged", run)
        assert died[0]["child"] == "upload"
        assert died[0]["how"] == "signal SIGKILL"
        wait_for(lambda: len(events(run, "upload_ready")) == 2, 60, "upload watcher restarted", run)
        assert child_pid(share, "render") == render, "the render watcher was not disturbed"
        assert weed_pids(share) == servers, "the storage was not disturbed"
        assert distributed_job(share, run, media, "after-upload-crash")["status"] == "done"

        os.kill(storage, signal.SIGKILL)  # its SeaweedFS lives on, orphaned: the new owner replaces it
        wait_for(lambda: len(events(run, "storage_ready")) == 2, 90, "storage restarted", run)
        assert distributed_job(share, run, media, "after-storage-crash")["status"] == "done"
        assert len(weed_pids(share)) == 1
    finally:
        assert run.terminate(timeout=90) == 0
    wait_for(lambda: nothing_left(share), 30, "every process gone")
    assert {e["child"] for e in events(run, "child_stopped")} == {"render", "upload", "storage"}


def test_a_killed_run_takes_its_children_with_it(tmp_path: Path) -> None:
    """kill -9 of `lipsyncd run` itself: the kernel tells its children (PR_SET_PDEATHSIG), which stop,
    the storage stopping its SeaweedFS; nothing is left holding the state directory."""
    share = Share(tmp_path / "shared", FAST_STOP)
    run = start_run(share)
    run.kill9()
    wait_for(lambda: nothing_left(share), 40, "every child and SeaweedFS gone")
    again = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(share.config), "render", "--once"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("burst", [50])
def test_signal_bursts_never_block_the_handler(tmp_path: Path, burst: int) -> None:
    """The relay itself: a process whose main thread hammers an Event gets signal bursts; the old
    handler (Event.set inside the signal handler) could deadlock here, the relay cannot."""
    script = tmp_path / "burst.py"
    script.write_text(
        "import os, signal, threading\n"
        "from daemon.ops.signals import SignalRelay\n"
        "stop = threading.Event(); hits = []\n"
        "relay = SignalRelay.install()\n"
        "relay.on(signal.SIGUSR1, lambda: (hits.append(1), stop.set()))\n"
        f"for n in range({burst}):\n"
        "    stop.clear()\n"
        "    for _ in range(3): os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    while not stop.wait(0.001): stop.is_set()\n"
        "print('ok', len(hits) >= 1)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok True", result.stderr
