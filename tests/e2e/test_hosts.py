"""`lipsyncd run` with two render workers and an upload worker: each registers in the store, beats, and
shows in `lipsyncd hosts --json` under this host; a clean stop marks each stopped. Their log lines carry
the host and the worker (HOST and WORKER under journald)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.e2e.harness import Daemon, Share, wait_for

HOST = socket.gethostname()
NAMES = {f"{HOST}:render@0", f"{HOST}:render@1", f"{HOST}:upload@0"}


def workers(share: Share) -> dict[str, dict[str, Any]]:
    done = share.lipsyncd("hosts", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return {w["name"]: w for h in json.loads(done.stdout)["hosts"] for w in h["workers"]}


def test_run_with_two_render_workers_shows_them_beating_in_hosts(
    tmp_path: Path, external: dict[str, Any]
) -> None:
    share = Share(
        tmp_path / "shared",
        {"storage": external, "render": {"workers": 2, "lease_seconds": "3s"}, "upload": {"workers": 1}},
    )
    run = Daemon(share, "run")
    try:

        def beating() -> dict[str, dict[str, Any]] | None:
            found = workers(share)  # each has beaten since it registered, and lately
            fresh = {
                name: w
                for name, w in found.items()
                if w["state"] == "running" and w["last_beat"] > w["started"] and w["beat_age_s"] < 3
            }
            return found if set(fresh) == NAMES else None

        found = wait_for(beating, 120, "three workers beating in `lipsyncd hosts`", run)
        assert {w["host"] for w in found.values()} == {HOST}
        assert {name: w["kind"] for name, w in found.items()} == {
            f"{HOST}:render@0": "render",
            f"{HOST}:render@1": "render",
            f"{HOST}:upload@0": "upload",
        }
        assert len({w["pid"] for w in found.values()}) == 3, "one process each"
        assert run.proc.pid not in {w["pid"] for w in found.values()}
    finally:
        assert run.terminate() == 0
    after = workers(share)
    assert {name: w["state"] for name, w in after.items()} == dict.fromkeys(NAMES, "stopped")
    registered = [e for e in run.events() if e.get("event") == "worker_registered"]
    assert sorted(e["worker"] for e in registered) == sorted(NAMES)
    assert {e["host"] for e in registered} == {HOST}
    # every line of the run and its workers names the host; every line of a worker names the worker
    events = run.events()
    assert events
    assert all(e.get("host") == HOST for e in events), [e for e in events if e.get("host") != HOST][:3]
    ready = [e for e in events if e.get("event") in ("render_ready", "upload_ready")]
    assert sorted(e["worker"] for e in ready) == sorted(NAMES)
