"""The ledger on PostgreSQL (store.url): opened from the configuration, its password never in the YAML,
and the parts that only a shared server has: claims from many connections at once, leases on the
database's clock."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
import yaml

import daemon.store
from daemon.cli import EXIT_FAILED, EXIT_OK, main
from daemon.store import SCHEMA_VERSION, JobStore, StoreError, _passfile, is_network_fs, mount_type
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


def test_an_sqlite_store_from_before_versions_is_migrated_to_version_1(tmp_path: Path) -> None:
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
    assert JobStore(state).schema_found == 1


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
    assert sorted(found) == [0, 1, 1, 1]


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
