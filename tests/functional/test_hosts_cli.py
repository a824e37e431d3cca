"""`lipsyncd hosts` and the workers line of `lipsyncd status`, as real CLI processes against a store that
holds registered workers (fresh, silent, stopped) and a claimed video."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from daemon.store import JobStore

REPO = Path(__file__).resolve().parents[2]


def cli(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def setup(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    config = tmp_path / "lipsyncd.yaml"
    paths = {"state": str(state), "inbox": str(tmp_path / "inbox"), "outputs": str(tmp_path / "out")}
    config.write_text(yaml.safe_dump({"paths": paths, "render": {"lease_seconds": "10s"}}))
    store = JobStore(state)
    now = time.time()
    store.register_worker("gpu-a:render@0", "gpu-a", "render", 101)
    store.register_worker("gpu-a:upload@0", "gpu-a", "upload", 102)
    store.worker_stopped("gpu-a:upload@0")
    store.register_worker("gpu-b:render@1", "gpu-b", "render", 201)
    with store._tx() as db:  # gpu-b's worker went silent 40 s ago: more than 3 leases of 10 s
        db.execute("UPDATE workers SET last_beat = ? WHERE name = ?", (now - 40, "gpu-b:render@1"))
        db.execute(
            "INSERT INTO jobs (id, manifest, claimed_path, base_dir, audio, audio_written, distribute,"
            " notify, state, created, updated)"
            " VALUES ('promo', 'promo.yaml', '', '', 'a.wav', 'a.wav', 0, '[]', 'rendering', ?, ?)",
            (now, now),
        )
        db.execute(
            "INSERT INTO videos (job_id, output, position, source, source_written, state, updated, owner,"
            " epoch, lease_until) VALUES ('promo', 'anchor.mp4', 0, 'a.mp4', 'a.mp4', 'rendering', ?,"
            " 'gpu-a:render@0', 1, ?)",
            (now, now + 9),
        )
    store.close()
    return config


def test_hosts_lists_workers_their_beats_holds_and_the_stale_one(tmp_path: Path) -> None:
    started = time.time()  # the stale beat is 40 s before a moment after this
    config = setup(tmp_path)
    document = json.loads(cli(config, "hosts", "--json"))
    hosts = {h["host"]: {w["name"]: w for w in h["workers"]} for h in document["hosts"]}
    assert sorted(hosts) == ["gpu-a", "gpu-b"]
    render, upload = hosts["gpu-a"]["gpu-a:render@0"], hosts["gpu-a"]["gpu-a:upload@0"]
    stale = hosts["gpu-b"]["gpu-b:render@1"]
    assert (render["state"], render["pid"], render["kind"]) == ("running", 101, "render")
    assert render["beat_age_s"] < 30
    assert [(h["job"], h["video"], h["state"]) for h in render["holds"]] == [
        ("promo", "anchor.mp4", "rendering")
    ]
    assert 0 < render["holds"][0]["lease_left_s"] <= 9
    assert (upload["state"], upload["holds"]) == ("stopped", [])
    assert stale["state"] == "stale"
    assert stale["beat_age_s"] >= 40

    table = cli(config, "hosts")
    lines = table.splitlines()
    line = next(x for x in lines if "gpu-b:render@1" in x)
    assert "stale" in line
    # 40 s plus however long the two CLI runs took on a busy machine
    (age,) = (int(a) for a in re.findall(r"\b(\d+)s ago", line))
    assert 40 <= age <= 40 + math.ceil(time.time() - started), line
    assert "promo/anchor.mp4 (rendering, lease" in next(x for x in lines if "gpu-a:render@0" in x)
    assert "1 stale worker(s)" in table

    status = cli(config, "status")
    assert "Workers: 1 running on 1 host(s); 1 stale: gpu-b:render@1 (last beat 4" in status
    assert "; 1 stopped. `lipsyncd hosts` shows them all." in status
    assert "Workers:" not in cli(config, "status", "--json"), "the JSON stays a list of jobs"


def test_hosts_with_no_workers_says_how_to_start_them(tmp_path: Path) -> None:
    config = tmp_path / "lipsyncd.yaml"
    config.write_text(yaml.safe_dump({"paths": {"state": str(tmp_path / "state")}}))
    assert "No workers have registered yet" in cli(config, "hosts")
    assert json.loads(cli(config, "hosts", "--json")) == {"hosts": []}
