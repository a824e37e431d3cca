"""Several hosts on one shared inbox: each has its own Inbox, Intake and JobStore connection (as a host
would), all on one inbox folder and one store file. The store's take decides which one makes the job;
the others leave the file alone. Barriers put every host at the racy step at the same moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.inbox import Inbox, watch
from daemon.intake import Intake, IntakeThread
from daemon.store import TAKE_LEASE_S, Effect, JobStore, ManifestTaken, Take

HOSTS = 4
VALID = "audio: s.wav\nvideos: [f.mp4]\n"


class Share:
    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root, self.url = root, url  # url: a PostgreSQL ledger shared by the hosts; None: SQLite
        self.inbox = root / "share" / "inbox"
        self.state = root / "state"
        self.inbox.mkdir(parents=True)
        (self.inbox / "s.wav").write_bytes(b"s")
        (self.inbox / "f.mp4").write_bytes(b"f")
        self.stores: list[JobStore] = []

    def host(self, name: str) -> Intake:
        store = JobStore(self.state, url=self.url)
        self.stores.append(store)
        return Intake(
            Inbox(self.inbox, settle_time=0.0),
            store,
            shared=self.root / "share",
            outputs_dir=self.root / "out",
            locks_dir=self.root / "locks",
            webhooks=(),
            models=lambda: ["baseline"],
            taker=name,
        )

    def drop(self, name: str, text: str = VALID) -> Path:
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_text(text)
        os.rename(tmp, self.inbox / name)
        return self.inbox / name

    def listing(self, sub: str) -> list[str]:
        return sorted(p.name for p in (self.inbox / sub).iterdir())


@pytest.fixture
def share(tmp_path: Path, ledger_url: str | None) -> Iterator[Share]:
    s = Share(tmp_path, ledger_url)
    yield s
    for store in s.stores:
        store.close()


def _at_once(hosts: list[Intake], step: Callable[[Intake], object]) -> None:
    """Run `step` on every host in its own thread; re-raise the first error."""
    errors: list[BaseException] = []

    def run(host: Intake) -> None:
        try:
            step(host)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


def _meet_before(store: JobStore, method: str, barrier: threading.Barrier) -> None:
    """Every host reaches `method` (past its own "has this a job?" check) before any goes on."""
    real = getattr(store, method)

    def waiting(*args: Any, **kwargs: Any) -> Any:
        barrier.wait(timeout=10)
        return real(*args, **kwargs)

    setattr(store, method, waiting)


def test_hosts_racing_on_the_inbox_make_one_job_each(share: Share) -> None:
    hosts = [share.host(f"host{i}") for i in range(HOSTS)]
    for n in range(5):
        path = share.drop(f"m{n}.yaml")
        for host in hosts:  # each host's watcher saw the rename
            host.inbox.note(path, moved=True)
        _at_once(hosts, lambda h: h.sweep(rescan=True))
    jobs = share.stores[0].jobs()
    assert sorted(j.id for j in jobs) == [f"m{n}" for n in range(5)]
    assert share.listing(".claimed") == [f"m{n}.yaml" for n in range(5)]
    assert all(Path(j.claimed_path).exists() for j in jobs)
    assert share.listing("failed") == []
    assert [p.name for p in share.inbox.glob("*.yaml")] == []


def test_a_claimed_manifest_every_host_retakes_at_once_is_one_job(share: Share) -> None:
    """The case the rename cannot settle: the manifest is in .claimed/ with no job (the renaming host was
    killed, or its rename reported failure after it happened), and every host's rescan retakes it."""
    hosts = [share.host(f"host{i}") for i in range(HOSTS)]
    barrier = threading.Barrier(HOSTS)
    for host in hosts:
        _meet_before(host.store, "add_job", barrier)
    (share.inbox / ".claimed" / "promo.yaml").write_text(VALID)
    with capture_logs() as logs:
        _at_once(hosts, lambda h: h.sweep(rescan=True))
    (job,) = share.stores[0].jobs()
    assert job.id == "promo"
    assert share.listing(".claimed") == ["promo.yaml"]
    assert share.listing("failed") == []
    lost = [e for e in logs if e["event"] == "manifest_taken_elsewhere"]
    assert len(lost) == HOSTS - 1
    assert {e["job"] for e in lost} == {"promo"}
    ((name, holder, taker),) = share.stores[0].takes()
    assert (name, holder) == ("promo.yaml", "promo")
    assert {e["taker"] for e in lost} == {taker}  # each loser's one line names the winner
    # every later rescan sees the job and leaves the file alone
    _at_once(hosts, lambda h: h.sweep(rescan=True))
    assert len(share.stores[0].jobs()) == 1


def test_a_bad_manifest_every_host_retakes_at_once_is_filed_once(share: Share) -> None:
    hosts = [share.host(f"host{i}") for i in range(HOSTS)]
    barrier = threading.Barrier(HOSTS)
    for host in hosts:
        _meet_before(host.store, "take_rejection", barrier)
    (share.inbox / ".claimed" / "bad.yaml").write_text("audio: missing.wav\nvideos: [f.mp4]\n")
    _at_once(hosts, lambda h: h.sweep(rescan=True))
    assert share.stores[0].jobs() == []
    assert share.listing("failed") == ["bad.error.txt", "bad.yaml"]
    assert share.listing(".claimed") == []
    assert share.stores[0].takes() == []  # let go once filed: the same file dropped again is filed again


def test_a_dangling_symlink_as_manifest_is_still_filed(share: Share) -> None:
    host = share.host("a")
    (share.inbox / "gone.yaml").symlink_to(share.root / "nowhere.yaml")
    host.inbox.note(share.inbox / "gone.yaml", moved=True)  # the watcher saw it
    host.sweep(rescan=False)
    assert share.listing("failed") == ["gone.error.txt", "gone.yaml"]
    assert "symbolic link" in (share.inbox / "failed" / "gone.error.txt").read_text()


def test_a_rename_that_reports_failure_after_it_happened_still_makes_the_job(
    share: Share, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS: the client retries a RENAME whose reply was lost; the retry finds the source gone."""
    host, other = share.host("a"), share.host("b")
    path = share.drop("nfs.yaml")
    real = os.rename

    def lost_reply(src: Any, dst: Any) -> None:
        real(src, dst)
        raise FileNotFoundError(2, "No such file or directory", str(src))

    monkeypatch.setattr("daemon.inbox.os.rename", lost_reply)
    for h in (host, other):
        h.inbox.note(path, moved=True)
    host.sweep(rescan=False)
    other.sweep(rescan=False)  # its rename finds the source gone too: the store says it is taken
    (job,) = share.stores[0].jobs()
    assert (job.id, Path(job.claimed_path).name) == ("nfs", "nfs.yaml")
    assert share.listing(".claimed") == ["nfs.yaml"]


_HOST_PROCESS = """
import sys, time
from pathlib import Path
from daemon.inbox import Inbox
from daemon.intake import Intake
from daemon.store import JobStore

inbox, state, shared, meet, name, hosts, url = sys.argv[1:8]
store = JobStore(Path(state), url=url or None)
real = store.add_job

def add_job_when_all_are_here(*args, **kwargs):
    # every host has found the manifest without a job and read it: now all record it at once
    (Path(meet) / name).touch()
    deadline = time.monotonic() + 20
    while len(list(Path(meet).iterdir())) < int(hosts) and time.monotonic() < deadline:
        time.sleep(0.005)
    return real(*args, **kwargs)

store.add_job = add_job_when_all_are_here
intake = Intake(Inbox(Path(inbox), settle_time=0.0), store, shared=Path(shared),
                outputs_dir=Path(shared) / "out", locks_dir=Path(shared) / "locks", webhooks=(),
                models=lambda: ["baseline"], taker=name)
intake.sweep(rescan=True)
"""


def test_host_processes_retaking_a_claimed_manifest_at_once_make_one_job(share: Share) -> None:
    """As above with real processes, each with its own connection to the ledger and its own locks."""
    share.host("setup")  # the folders and the store's schema exist before the hosts race to open them
    (share.inbox / ".claimed" / "proc.yaml").write_text(VALID)
    meet = share.root / "meet"
    meet.mkdir()
    args = [str(share.inbox), str(share.state), str(share.root / "share"), str(meet)]
    hosts = [
        subprocess.Popen(
            [sys.executable, "-c", _HOST_PROCESS, *args, f"proc{i}", str(HOSTS), share.url or ""],
            stderr=subprocess.PIPE,
        )
        for i in range(HOSTS)
    ]
    for host in hosts:
        _, err = host.communicate(timeout=60)
        assert host.returncode == 0, err.decode()
    assert len(list(meet.iterdir())) == HOSTS  # every host did try to record it
    store = share.stores[0]
    assert [j.id for j in store.jobs()] == ["proc"]
    assert [name for name, _, _ in store.takes()] == ["proc.yaml"]
    assert share.listing(".claimed") == ["proc.yaml"]
    assert share.listing("failed") == []


_KILLED_IN_THE_TAKE = """
import os, signal, sys
from pathlib import Path
from daemon.inbox import Inbox
from daemon.intake import Intake
from daemon.store import JobStore

inbox, state, shared = map(Path, sys.argv[1:4])
store = JobStore(state, url=sys.argv[4] or None)
real = store._take

def take_then_die(db, take, job_id):
    real(db, take, job_id)
    os.kill(os.getpid(), signal.SIGKILL)  # after the take's INSERT, before the job's

store._take = take_then_die
intake = Intake(Inbox(inbox, settle_time=0.0), store, shared=shared, outputs_dir=shared / "out",
                locks_dir=shared / "locks", webhooks=(), models=lambda: ["baseline"], taker="doomed")
intake.inbox.note(inbox / "late.yaml", moved=True)
intake.sweep(rescan=False)
sys.exit("the take never ran")
"""


def test_a_kill_between_take_and_job_loses_nothing(share: Share) -> None:
    share.drop("late.yaml")
    args = [str(share.inbox), str(share.state), str(share.root / "share"), share.url or ""]
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_THE_TAKE, *args], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert share.listing(".claimed") == ["late.yaml"]  # it had renamed the manifest
    survivor = share.host("survivor")
    assert survivor.store.takes() == []  # the take died with the transaction
    assert survivor.store.jobs() == []
    survivor.recover()  # a restart (or any host's rescan) takes it
    (job,) = survivor.store.jobs()
    assert job.id == "late"
    assert survivor.store.takes() == [("late.yaml", "late", "survivor")]


def test_the_same_manifest_dropped_again_is_a_new_job_before_and_after_filing(share: Share) -> None:
    host = share.host("a")
    store = host.store

    def drop() -> None:
        host.inbox.note(share.drop("again.yaml"), moved=True)
        host.sweep(rescan=False)

    drop()
    drop()  # while the first still runs: a second job, as before shared intake
    assert sorted(j.id for j in store.jobs()) == ["again", "again.2"]
    store.fail_job("again", "stopped by the test")  # finished: asks for its filing
    first = store.job("again")
    assert first is not None
    host.inbox.file_job(first, store.videos("again"))  # what the reconciler does, then it says so
    store.applied(*store.pending(Effect.FILE))
    drop()  # the first one is filed: its name in .claimed/ is free, its take is over
    assert sorted(j.id for j in store.jobs()) == ["again", "again-2", "again.2"]
    assert store.job("again-2").claimed_path == store.job("again").claimed_path  # type: ignore[union-attr]


def test_a_take_holds_while_its_job_runs(share: Share, monkeypatch: pytest.MonkeyPatch) -> None:
    host = share.host("a")
    store = host.store
    claimed = share.inbox / ".claimed" / "x.yaml"
    claimed.write_text(VALID)
    manifest = _manifest(host, claimed)

    def add(sha256: str, file_id: str, taker: str) -> str:
        take = Take("x.yaml", sha256, file_id, taker)
        return store.add_job(manifest, claimed_path=claimed, base_dir=share.inbox, take=take).id

    assert add("abc", "7", "a") == "x"
    with pytest.raises(ManifestTaken) as lost:  # running: the same file is refused
        add("abc", "7", "b")
    assert (lost.value.job_id, lost.value.taker) == ("x", "a")
    assert add("abc", "8", "b") == "x-2"  # the same name and content in another file: a new drop
    assert add("other", "7", "b") == "x-3"  # the file was written again
    store.fail_job("x", "stopped")
    with pytest.raises(ManifestTaken):  # finished moments ago: a late intake is still refused
        add("abc", "7", "b")
    later = store.clock() + TAKE_LEASE_S + 1  # the ledger's clock: PostgreSQL's on a shared ledger
    monkeypatch.setattr(store, "_now", lambda _db: later)
    assert add("abc", "7", "b") == "x-4"  # finished and long over (an inode number used again)
    with pytest.raises(ManifestTaken):  # x-2 still runs, however old its take
        add("abc", "8", "c")
    # a rejection's take: held while its taker files it; a crashed taker's lapses
    store.take_rejection(Take("bad.yaml", "def", "9", "a"))
    with pytest.raises(ManifestTaken):
        store.take_rejection(Take("bad.yaml", "def", "9", "b"))
    monkeypatch.setattr(store, "_now", lambda _db: later + TAKE_LEASE_S + 1)
    store.take_rejection(Take("bad.yaml", "def", "9", "b"))
    monkeypatch.undo()
    assert ("bad.yaml", "", "b") in store.takes()


def test_takes_that_hold_nothing_are_forgotten_as_new_ones_come(
    share: Share, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The takes table keeps what is in flight, not every manifest ever dropped: a finished job's take and
    a crashed taker's rejection go once past the lease; a running job's and recent ones stay."""
    host = share.host("a")
    store = host.store
    claimed = share.inbox / ".claimed" / "x.yaml"
    claimed.write_text(VALID)
    manifest = _manifest(host, claimed)

    def add(file_id: str) -> str:
        take = Take("x.yaml", "abc", file_id, "a")
        return store.add_job(manifest, claimed_path=claimed, base_dir=share.inbox, take=take).id

    add("1")
    add("2")
    store.fail_job("x", "stopped")  # finished: its take holds nothing once past the lease
    store.take_rejection(Take("bad.yaml", "def", "9", "a"))  # its taker crashed before filing it
    later = store.clock() + TAKE_LEASE_S + 1
    monkeypatch.setattr(store, "_now", lambda _db: later)
    add("3")
    assert sorted(job for _, job, _ in store.takes()) == ["x-2", "x-3"]


def _manifest(host: Intake, path: Path) -> Any:
    from daemon.manifest import load_manifest

    return load_manifest(path, base_dir=host.inbox.folder, shared=host.shared, models=["baseline"])


_WRITER = """
import os, sys
target, text = sys.argv[1:3]
with open(target + ".tmp", "w") as f:
    f.write(text)
os.rename(target + ".tmp", target)
"""


def test_polling_intake_takes_a_manifest_another_process_wrote(share: Share) -> None:
    host = share.host("a")
    stop, swept = threading.Event(), threading.Event()
    thread = IntakeThread(host, stop, rescan_interval=3600, polling=True, poll_interval=0.1, beat=swept.set)
    thread.start()
    try:
        assert swept.wait(10)  # its one rescan is over: only the poller can find what comes now
        target = str(share.inbox / "polled.yaml")
        subprocess.run([sys.executable, "-c", _WRITER, target, VALID], check=True, timeout=60)
        deadline = time.monotonic() + 15
        while not host.store.jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [j.id for j in host.store.jobs()] == ["polled"]
    finally:
        stop.set()
        thread.join(timeout=10)


def test_polling_watch_lists_at_the_configured_interval(tmp_path: Path) -> None:
    observer = watch(Inbox(tmp_path, settle_time=0), threading.Event(), polling=True, poll_interval=0.3)
    try:
        assert type(observer).__name__ == "PollingObserver"
        assert observer.timeout == 0.3
    finally:
        observer.stop()
        observer.join(timeout=5)
