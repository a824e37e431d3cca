"""The ledger on PostgreSQL (store.url): opened from the configuration, its password never in the YAML,
and the parts that only a shared server has: claims from many connections at once, leases on the
database's clock."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

import daemon.store
from daemon.cli import EXIT_FAILED, EXIT_OK, main
from daemon.store import (
    SCHEMA_VERSION,
    Claim,
    JobStore,
    LostClaim,
    Rendered,
    StoreError,
    VideoState,
    _passfile,
    is_network_fs,
    mount_type,
)
from tests.unit.test_store_links import manifest


def test_the_cli_reads_the_ledger_named_by_store_url(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job recorded on PostgreSQL is what `lipsyncd status` shows; the SQLite file is not used."""
    store = JobStore(tmp_path / "elsewhere", url=pg_url)
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    store.close()
    paths = {name: str(tmp_path / name) for name in ("shared", "state", "models")}
    config = tmp_path / "lipsyncd.yaml"
    config.write_text(yaml.safe_dump({"paths": paths, "store": {"url": pg_url}}))
    assert main(["--config", str(config), "status", "promo"]) == EXIT_OK
    assert "promo" in capsys.readouterr().out
    assert not (tmp_path / "state" / "lipsyncd.db").exists()
    config.write_text(yaml.safe_dump({"paths": paths}))  # the same state dir without the URL: SQLite
    assert main(["--config", str(config), "status", "promo"]) == EXIT_FAILED


def test_the_password_comes_from_the_systemd_credential_unless_pgpassfile_is_set(tmp_path: Path) -> None:
    (tmp_path / "pgpass").write_text("db:5432:lipsyncd:lipsyncd:secret\n")
    assert _passfile({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == {"passfile": str(tmp_path / "pgpass")}
    assert _passfile({"CREDENTIALS_DIRECTORY": str(tmp_path), "PGPASSFILE": "/etc/x"}) == {}
    assert _passfile({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) == {}
    assert _passfile({}) == {}


# -- versioned migrations (both backends) -------------------------------------------------------------


def test_store_migrate_brings_a_new_store_to_this_version_once(
    tmp_path: Path, ledger_url: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {name: str(tmp_path / name) for name in ("shared", "state", "models")}
    config = tmp_path / "lipsyncd.yaml"
    config.write_text(yaml.safe_dump({"paths": paths, "store": {"url": ledger_url}}))
    assert main(["--config", str(config), "store", "migrate"]) == EXIT_OK
    assert f"went from schema version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["store", "migrate", "--config", str(config)]) == EXIT_OK
    assert f"is at schema version {SCHEMA_VERSION}, this lipsyncd's: nothing to do" in capsys.readouterr().out


def test_a_store_newer_than_the_code_is_refused_and_left_alone(
    tmp_path: Path, ledger_url: str | None
) -> None:
    store = JobStore(tmp_path / "state", url=ledger_url)
    with store._tx() as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(StoreError) as refused:
        JobStore(tmp_path / "state", url=ledger_url)
    words = str(refused.value)
    assert f"is at schema version {SCHEMA_VERSION + 1}" in words
    assert f"knows versions up to {SCHEMA_VERSION}" in words
    assert "nothing was changed" in words
    with pytest.raises(StoreError):  # still refused: the failed start did not write its own version
        JobStore(tmp_path / "state", url=ledger_url)


def test_an_sqlite_store_from_before_versions_is_migrated_to_this_version(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with closing(sqlite3.connect(state / "lipsyncd.db")) as db:  # an early store: no lease columns
        db.execute(
            "CREATE TABLE videos (job_id TEXT NOT NULL, output TEXT NOT NULL, position INTEGER NOT NULL,"
            " source TEXT NOT NULL, source_written TEXT NOT NULL, state TEXT NOT NULL, progress REAL"
            " NOT NULL DEFAULT 0, error TEXT, model TEXT, frames INTEGER, faceless_frames INTEGER,"
            " size INTEGER, sha256 TEXT, object_key TEXT, url TEXT, expires_at REAL, upload_id TEXT,"
            " rendered_at REAL, evicted INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,"
            " PRIMARY KEY (job_id, output))"
        )
    store = JobStore(state)
    assert store.schema_found == 0
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    claimed = store.claim_next_video("w1", 60.0)
    assert claimed is not None
    assert claimed[1].epoch == 1
    store.close()
    assert JobStore(state).schema_found == SCHEMA_VERSION


def test_a_version_1_store_gains_the_jobs_revision(tmp_path: Path, ledger_url: str | None) -> None:
    """Version 2 added jobs.revision (links.json's order between hosts): a store at 1 gets it, its jobs
    start at 0 and rise with each change."""
    store = JobStore(tmp_path / "state", url=ledger_url)
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    with store._tx() as db:  # back to how version 1 left it
        db.execute("ALTER TABLE jobs DROP COLUMN revision")
        db.execute("UPDATE schema_version SET version = 1")
    store.close()
    again = JobStore(tmp_path / "state", url=ledger_url)
    assert again.schema_found == 1
    job = again.job("promo")
    assert job is not None
    assert job.revision == 0
    again.start_job("promo")
    moved = again.job("promo")
    assert moved is not None
    assert moved.revision == 1
    again.close()


def test_hosts_starting_at_once_on_a_new_database_migrate_it_once(pg_url: str, tmp_path: Path) -> None:
    """Each start migrates under PostgreSQL's advisory lock: no one trips over another's CREATE TABLE."""
    start = threading.Barrier(4)
    found: list[int] = []
    errors: list[BaseException] = []

    def open_one(n: int) -> None:
        start.wait()
        try:
            store = JobStore(tmp_path / f"host{n}", url=pg_url)
            found.append(store.schema_found)
            store.close()
        except Exception as exc:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(found) == [0, SCHEMA_VERSION, SCHEMA_VERSION, SCHEMA_VERSION]


# -- SQLite on a network file system ------------------------------------------------------------------

MOUNTS = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv/share rw,relatime shared:20 - nfs4 files:/export rw,vers=4.2
41 40 8:2 / /srv/share/local rw shared:21 - xfs /dev/sdb1 rw
42 22 0:36 / /mnt/my\\040box rw - fuse.sshfs me@box:/ rw
43 22 0:37 / /mnt/usb rw - fuse.ntfs-3g /dev/sdc1 rw
"""


@pytest.mark.parametrize(
    ("path", "kind", "network"),
    [
        ("/srv/share/state", "nfs4", True),
        ("/srv/share", "nfs4", True),
        ("/srv/share/local/state", "xfs", False),  # a local disk mounted inside the share
        ("/srv/shared", "ext4", False),  # a sibling whose name only starts like the mount point
        ("/mnt/my box/state", "fuse.sshfs", True),
        ("/mnt/usb/state", "fuse.ntfs-3g", False),
    ],
)
def test_the_state_dirs_file_system_is_read_from_mountinfo(path: str, kind: str, network: bool) -> None:
    assert mount_type(Path(path), MOUNTS) == kind
    assert is_network_fs(kind) is network


def test_sqlite_on_a_network_file_system_is_refused_in_plain_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = (tmp_path / "state").resolve()
    fake = tmp_path / "mountinfo"
    fake.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 22 0:35 / {state} rw - cifs //nas/x rw\n")
    monkeypatch.setattr(daemon.store, "MOUNTINFO", fake)
    with pytest.raises(StoreError) as refused:
        JobStore(state)
    words = str(refused.value)
    assert f"the state directory {state} is on a network file system (cifs)" in words
    assert "set store.url to a PostgreSQL database" in words
    assert not (state / "lipsyncd.db").exists()
    fake.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")  # the same folder on a local disk: fine
    JobStore(state).close()


# -- claims and leases on one PostgreSQL ledger -------------------------------------------------------

CLAIMER = """
import json, sys, time
from pathlib import Path
from typing import Any
from daemon.store import JobStore
url, state, go, name = sys.argv[1:]
store = JobStore(Path(state), url=url)
while not Path(go).exists():
    time.sleep(0.005)
got = []
while (claimed := store.claim_next_video(name, 60.0)) is not None:
    got.append([claimed[0].job_id, claimed[0].output, claimed[1].epoch])
store.close()
print(json.dumps(got))
"""


def test_threads_and_processes_claiming_at_once_each_get_different_videos(
    pg_url: str, tmp_path: Path
) -> None:
    """Four threads (each its own connection) and two processes claim from one ledger at the same moment
    (claims run side by side on PostgreSQL, each skipping the rows others hold locked): every video is
    claimed exactly once, each with epoch 1, each job moves to rendering once, and nothing is left."""
    setup = JobStore(tmp_path / "setup", url=pg_url)
    for n in range(3):
        videos = [f"v{i}.mp4" for i in range(12)]
        setup.add_job(
            manifest(tmp_path, *videos, name=f"job{n}"), claimed_path=tmp_path / f"{n}", base_dir=tmp_path
        )
    expected = {(v.job_id, v.output) for n in range(3) for v in setup.videos(f"job{n}")}
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, pg_url, str(tmp_path / f"p{n}"), str(go), f"proc{n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    stores = [JobStore(tmp_path / f"t{n}", url=pg_url) for n in range(4)]
    got: list[tuple[str, str, int]] = []
    start = threading.Barrier(len(stores))

    def claim_all(store: JobStore, name: str) -> None:
        start.wait()
        go.touch()
        while (claimed := store.claim_next_video(name, 60.0)) is not None:
            got.append((claimed[0].job_id, claimed[0].output, claimed[1].epoch))

    threads = [threading.Thread(target=claim_all, args=(s, f"thread{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in processes:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        got.extend(tuple(item) for item in json.loads(out))
    assert len(got) == len(expected)  # none claimed twice
    assert {(job, output) for job, output, _ in got} == expected
    assert {epoch for _, _, epoch in got} == {1}
    assert setup.counters()[("lipsyncd_jobs_total", "rendering")] == 3, "each job moved to rendering once"
    assert all(v.owner and v.state == VideoState.RENDERING for n in range(3) for v in setup.videos(f"job{n}"))
    for s in [setup, *stores]:
        s.close()


def db_now(store: JobStore) -> float:
    return store._now(store._db)


def test_leases_run_on_the_database_clock(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock runs an hour ahead takes over no live lease; a renewed lease outlives its first
    term; once it lapses (by the database's clock) another host takes the video and the fence refuses
    the old owner's late write."""
    one, two = JobStore(tmp_path / "one", url=pg_url), JobStore(tmp_path / "two", url=pg_url)
    one.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    claimed = one.claim_next_video("host1", 1.0)
    assert claimed is not None
    video, claim = claimed
    real = time.time
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: real() + 3600)
        assert two.claim_next_video("host2", 60.0) is None
    assert one.renew("promo", "a.mp4", claim, 60.0)
    first_term = video.lease_until
    assert first_term is not None
    deadline = real() + 10
    while db_now(one) <= first_term + 0.1:  # the first term is over, by the server's clock
        assert real() < deadline
        time.sleep(0.05)
    assert two.claim_next_video("host2", 60.0) is None  # renewed: still held
    with one._tx() as db:  # the lease lapses (its worker paused past it)
        db.execute("UPDATE videos SET lease_until = ? WHERE output = ?", (db_now(one) - 1, "a.mp4"))
    taken = two.claim_next_video("host2", 60.0)
    assert taken is not None
    assert taken[1] == Claim("host2", 2)
    assert not one.renew("promo", "a.mp4", claim, 60.0)
    with pytest.raises(LostClaim):
        one.video_rendered("promo", "a.mp4", Rendered(10, 0, 5, "ab" * 32, "m", 0.4, None), claim)
    after = two.video("promo", "a.mp4")
    assert after is not None
    assert (after.owner, after.epoch, after.state) == ("host2", 2, VideoState.RENDERING)
    one.close()
    two.close()


def work_rolled_back(store: JobStore) -> None:
    with store._tx() as db:
        store._work_appeared(db)
        raise RuntimeError("rolled back")


def test_idle_workers_are_woken_when_work_appears_elsewhere(pg_url: str, tmp_path: Path) -> None:
    """LISTEN/NOTIFY: a job queued or a video rendered by another process wakes a listening worker at
    once; a change rolled back wakes nobody. (Polling stays the fallback.)"""
    worker, other = JobStore(tmp_path / "w", url=pg_url), JobStore(tmp_path / "o", url=pg_url)
    wake = threading.Event()
    stop = worker.wake_on_work(wake)
    try:
        with pytest.raises(RuntimeError):
            work_rolled_back(other)
        assert not wake.wait(1.0)
        other.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
        assert wake.wait(10.0)
        wake.clear()
        claimed = other.claim_next_video("host2", 60.0)  # claiming is no new work: nobody is woken
        assert claimed is not None
        assert not wake.wait(1.0)
        other.video_rendered("promo", "a.mp4", Rendered(10, 0, 5, "ab" * 32, "m", 0.4, None), claimed[1])
        assert wake.wait(10.0)  # the upload workers' turn
    finally:
        stop()
    worker.close()
    other.close()


def test_the_multipart_upload_journal_works_on_both_backends(tmp_path: Path, ledger_url: str | None) -> None:
    """Its upserts were SQLite's INSERT OR REPLACE: a restarted upload or a part sent again replaces."""
    store = JobStore(tmp_path / "state", url=ledger_url)
    store.start("k/a.mp4", "up-1", 5 * 2**20)
    store.part_done("k/a.mp4", 1, "e1", 10, "c1")
    store.part_done("k/a.mp4", 1, "e1b", 11, "c1b")  # sent again after a timeout
    store.part_done("k/a.mp4", 2, "e2", 12, "c2")
    state = store.load("k/a.mp4")
    assert state is not None
    assert (state.upload_id, [(p.part_number, p.etag) for p in state.parts]) == (
        "up-1",
        [(1, "e1b"), (2, "e2")],
    )
    store.start("k/a.mp4", "up-2", 5 * 2**20)  # started over: the old parts are gone
    again = store.load("k/a.mp4")
    assert again is not None
    assert (again.upload_id, again.parts) == ("up-2", ())
    assert store.upload_ids() == {"up-2"}
    store.finish("k/a.mp4")
    assert store.load("k/a.mp4") is None
    store.close()


def test_a_dropped_connection_is_opened_again_between_transactions(pg_url: str, tmp_path: Path) -> None:
    """The server restarted or an administrator ended the session: the next read or change goes through on
    a new connection (a transaction cut midway fails instead: it may have been half sent)."""
    store, admin = JobStore(tmp_path / "a", url=pg_url), JobStore(tmp_path / "b", url=pg_url)
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)

    def cut() -> None:
        pid = store._db.execute("SELECT pg_backend_pid()").fetchone()[0]
        admin._db.execute("SELECT pg_terminate_backend(?)", (pid,))

    cut()
    assert [j.id for j in store.jobs()] == ["promo"]
    cut()
    claimed = store.claim_next_video("w1", 60.0)
    assert claimed is not None
    assert claimed[1].epoch == 1
    store.close()
    admin.close()


def test_a_claim_rolled_back_for_a_deadlock_claims_again(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL picks one of two deadlocked claims and rolls it back: that worker simply claims again
    (other errors still reach the caller)."""
    import psycopg

    store = JobStore(tmp_path / "state", url=pg_url)
    store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
    real_now = store._now
    failures: list[psycopg.Error] = [psycopg.errors.DeadlockDetected("deadlock detected")]

    def now_once_deadlocked(db: Any) -> float:
        if failures:
            raise failures.pop()
        return real_now(db)

    monkeypatch.setattr(store, "_now", now_once_deadlocked)
    claimed = store.claim_next_video("w1", 60.0)
    assert claimed is not None
    assert claimed[1].epoch == 1  # the rolled-back try left nothing behind
    failures.append(psycopg.errors.UndefinedTable("no such table"))
    with pytest.raises(psycopg.errors.UndefinedTable):
        store.claim_next_video("w2", 60.0)
    store.close()


def test_an_unreachable_ledger_is_said_in_plain_words_and_used_again_once_back(
    pg_url: str, tmp_path: Path
) -> None:
    """Cut off from PostgreSQL (a relay the test cuts): reads and changes raise LedgerUnreachable, a
    StoreError naming store.url; restored, the same store claims again. The log says the outage once
    when it starts and once when it ends, however many calls failed in between."""
    from urllib.parse import urlsplit

    from daemon.store import LedgerUnreachable
    from tests.tcp_relay import Relay

    server = urlsplit(pg_url)
    relay = Relay((server.hostname or "127.0.0.1", server.port or 5432)).start()
    url = pg_url.replace(server.netloc.split("@")[-1], f"{relay.address[0]}:{relay.port}")
    store = JobStore(tmp_path / "a", url=url)
    try:
        store.add_job(manifest(tmp_path, "a.mp4"), claimed_path=tmp_path / "p.yaml", base_dir=tmp_path)
        relay.cut()
        with capture_logs() as logs:
            with pytest.raises(LedgerUnreachable, match=rf"store.url \(postgresql://.*:{relay.port}/"):
                store.jobs()
            for _ in range(3):
                with pytest.raises(LedgerUnreachable):
                    store.claim_next_video("w1", 60.0)
            relay.restore()
            claimed = store.claim_next_video("w1", 60.0)
            store.jobs()
        assert claimed is not None
        assert claimed[1].epoch == 1
        outage = [e for e in logs if e["event"] in ("ledger_unreachable", "ledger_reachable")]
        assert [e["event"] for e in outage] == ["ledger_unreachable", "ledger_reachable"]
        assert f":{relay.port}/" in outage[0]["url"]
        assert outage[0]["reason"]
        assert outage[1]["down_s"] >= 0
    finally:
        store.close()
        relay.close()
