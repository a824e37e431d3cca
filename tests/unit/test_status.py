"""`lipsyncd status` as an operator reads it: states as words (not eaten by rich markup), why a job
failed, whole links, a percentage, JSON, --failed, --since, --full, and manifests the inbox refused."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from daemon.cli import EXIT_FAILED, EXIT_OK, main
from daemon.manifest import Manifest, MediaRef
from daemon.status import parse_since, print_table
from daemon.store import JobState, JobStore, VideoState
from tests.poke import set_job, set_video

LONG_ERROR = "the audio 'speech.wav' cannot be used: " + "the decoder said something long " * 5 + "END"
URL = "https://files.example.com/renders/promo/face.mp4?X-Amz-Signature=" + "a1b2" * 60


def _manifest(tmp_path: Path, name: str, videos: tuple[str, ...]) -> Manifest:
    return Manifest(
        source=tmp_path / f"{name}.yaml",
        name=name,
        audio=MediaRef("speech.wav", tmp_path / "speech.wav"),
        videos=tuple(MediaRef(v, tmp_path / v) for v in videos),
        distribute=True,
    )


@pytest.fixture
def config(tmp_path: Path) -> str:
    """A queued job, one rendering at 45%, a failed one, a ready one with a long link, and a manifest
    the inbox refused."""
    shared, state = tmp_path / "shared", tmp_path / "state"
    store = JobStore(state)

    def add(name: str, *videos: str) -> None:
        store.add_job(_manifest(tmp_path, name, videos), claimed_path=tmp_path / name, base_dir=tmp_path)

    add("waiting", "a.mp4")
    add("busy", "b.mp4")
    set_job(store, "busy", JobState.RENDERING)
    set_video(store, "busy", "b.mp4", VideoState.RENDERING, progress=0.45)
    add("broken", "c.mp4")
    set_video(store, "broken", "c.mp4", VideoState.FAILED, error=LONG_ERROR)
    set_job(store, "broken", JobState.FAILED, error=LONG_ERROR)
    add("shared", "face.mp4")
    set_video(store, "shared", "face.mp4", VideoState.RENDERING)
    set_video(store, "shared", "face.mp4", VideoState.RENDERED)
    set_video(store, "shared", "face.mp4", VideoState.UPLOADING)
    set_video(store, "shared", "face.mp4", VideoState.READY, url=URL, expires_at=time.time() + 3600)
    store.close()
    failed = shared / "inbox" / "failed"
    failed.mkdir(parents=True)
    (failed / "typo.yaml").write_text("name: typo\n")
    (failed / "typo.error.txt").write_text(
        "lipsyncd could not start a job from typo.yaml.\n\nWhat is wrong:\n"
        "  - 'videos' is missing: list one or more avatar videos (or images)\n\nHow to fix it: ...\n"
    )
    paths = {"shared": str(shared), "inbox": str(shared / "inbox"), "state": str(state)}
    path = tmp_path / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump({"paths": {**paths, "models": str(tmp_path / "models")}}))
    return str(path)


def _status(config: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["--config", config, "status", *args]) == EXIT_OK
    return capsys.readouterr().out


def test_table_words_percent_links_and_refused(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: cells on one line each
    out = _status(config, capsys)
    assert "[]" not in out
    assert "queued" in out
    assert "45%" in out
    assert URL in out.splitlines()[-1]  # the whole link on one line, ready to copy (before: cut at 80)
    assert "refused" in out
    assert "(not a job) typo" in out
    assert "'videos' is" in out
    assert "cannot be used" in out
    assert "END" not in out
    assert "--full" in out


def test_full_shows_whole_errors(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _status(config, capsys, "--full")
    assert "END" in out.replace("│", "").replace("\n", "").replace(" ", "")


def test_json_failed_and_since(config: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    every = json.loads(_status(config, capsys, "--json"))
    assert [d["job"] for d in every] == ["waiting", "busy", "broken", "shared", None]
    assert every[-1]["status"] == "refused"
    assert "'videos' is missing" in every[-1]["error"]
    failed = json.loads(_status(config, capsys, "--json", "--failed"))
    assert [d["job"] or d["manifest"] for d in failed] == ["broken", "typo.yaml"]
    with sqlite3.connect(tmp_path / "state" / "lipsyncd.db") as db:  # 'waiting' last changed 3 hours ago
        for table, key in (("jobs", "id"), ("videos", "job_id")):
            db.execute(f"UPDATE {table} SET updated = ? WHERE {key} = 'waiting'", (time.time() - 3 * 3600,))
    recent = json.loads(_status(config, capsys, "--json", "--since", "2h"))
    assert "waiting" not in [d["job"] for d in recent]
    assert "busy" in [d["job"] for d in recent]
    assert main(["--config", config, "status", "--since", "yesterday"]) == EXIT_FAILED
    assert "--since 'yesterday'" in capsys.readouterr().err


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-12-01") == parse_since("2026-12-01T00:00:00+00:00")
    with pytest.raises(ValueError, match="ISO date"):
        parse_since("soon")


def test_unknown_states_and_fields_are_shown_as_they_come() -> None:
    """Another state (a 'partial' job) or field ('summary') is printed as it is, without a crash."""
    doc = {
        "job": "mixed",
        "manifest": "mixed.yaml",
        "status": "partial",
        "error": None,
        "summary": "2 of 3 videos ready",
        "updated_at": "2026-12-02T00:00:00Z",
        "videos": [{"output": "x.mp4", "status": "skipped", "progress": 0.5, "error": None, "url": None}],
    }
    console = Console(record=True, width=120)
    print_table([doc], console)
    text = console.export_text()
    assert "partial" in text
    assert "skipped" in text
    assert "2 of 3 videos ready" in text
    assert "[]" not in text
