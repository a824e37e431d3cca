"""The ledger on PostgreSQL (store.url): opened from the configuration, its password never in the YAML,
and the parts that only a shared server has: claims from many connections at once, leases on the
database's clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon.cli import EXIT_FAILED, EXIT_OK, main
from daemon.store import JobStore, _passfile
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
