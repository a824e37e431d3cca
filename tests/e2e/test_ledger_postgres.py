"""`lipsyncd run` on a PostgreSQL ledger (store.url): its render and upload worker processes claim,
render, upload and link through the shared database, and no SQLite file is made."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from daemon.store import JobStore
from tests.e2e.harness import Daemon, Share, statuses, wait_for


def test_run_with_store_url_finishes_a_job_on_postgresql(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any], pg_url: str
) -> None:
    share = Share(
        tmp_path / "shared",
        {"storage": external, "store": {"url": pg_url}, "render": {"workers": 2}, "upload": {"workers": 1}},
    )
    names = ["v0.mp4", "v1.mp4"]
    for name in names:
        shutil.copy(media["face_b"], share.inbox / "media" / name)
    shutil.copy(media["speech"], share.inbox / "media" / "speech.wav")
    run = Daemon(share, "run")
    try:
        wait_for(lambda: sum(e.get("event") == "render_ready" for e in run.events()) == 2, 90, "ready", run)
        started = time.monotonic()
        share.drop(
            "team.yaml",
            {"audio": "media/speech.wav", "videos": [f"media/{n}" for n in names], "distribute": True},
        )
        links = wait_for(
            lambda: (d := share.links("team")) and d["status"] == "done" and d, 120, "the job done", run
        )
        took = time.monotonic() - started
    finally:
        assert run.terminate() == 0
    assert statuses(links) == ["ready"] * 2
    ledger = JobStore(tmp_path / "reader", url=pg_url)
    assert [(v.output, v.state.value, v.epoch) for v in ledger.videos("team")] == [
        (n, "ready", 2)
        for n in names  # one render claim, one upload claim each
    ]
    ledger.close()
    assert share.state.is_dir()
    assert not list(share.state.rglob("lipsyncd.db*")), "no SQLite ledger beside the PostgreSQL one"
    print(f"job of {len(names)} videos done {took:.1f} s after the drop")
