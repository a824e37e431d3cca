"""The `cluster` benchmark section: real render worker processes on a throwaway PostgreSQL ledger with the
fixed-cost stand-in render, and the stand-in itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from daemon.bench import BenchOptions, format_table, postgres, run_bench
from daemon.bench.cluster_section import QUICK
from daemon.bench.standin import StandInRender
from daemon.render.pipeline import Interrupted


def test_the_stand_in_spends_its_cost_frame_by_frame_and_copies_the_source(tmp_path: Path) -> None:
    source = tmp_path / "v.mp4"
    source.write_bytes(b"not decoded, only copied")
    seen: list[float] = []
    started = time.monotonic()
    result = StandInRender(source, tmp_path / ".e1.v.mp4", threading.Event(), seen.append, 0.2).run()
    assert time.monotonic() - started >= 0.2
    assert result.output.read_bytes() == source.read_bytes()
    assert (result.frames, result.faceless_frames, result.fps) == (5, 0, 25.0)
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # a progress report each frame, as a render


def test_the_stand_in_stops_when_its_render_would(tmp_path: Path) -> None:
    """A stop, a cancel or a lost claim (the render's stop event) ends it without an output."""
    source = tmp_path / "v.mp4"
    source.write_bytes(b"x")
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        StandInRender(source, tmp_path / "out.mp4", stop, lambda fraction: None, 10.0).run()
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.skipif(postgres.unavailable() is not None, reason=f"no PostgreSQL: {postgres.unavailable()}")
def test_quick_cluster_section_measures_hosts_on_one_postgresql_ledger(tmp_path: Path) -> None:
    """1 then 2 stand-in hosts render every job (links.json checked inside the section); a host killed
    holding a claim loses it only once its lease lapses; each host's connections are counted."""
    results = run_bench(BenchOptions(quick=True, only=("cluster",), work_dir=tmp_path, quiet_wait=0))
    (section,) = results["sections"]
    assert "error" not in section, section.get("error")
    one, two, latency, takeover = section["rows"]
    assert (one["hosts"], two["hosts"]) == (1, 2)
    for row in (one, two):
        assert row["jobs"] == QUICK.jobs
        assert sum(row["videos_per_host"].values()) == QUICK.jobs  # each video claimed once
        assert row["jobs_per_min"] > 0
        assert row["claim_ms_p50"] > 0
        assert len(row["db_connections_per_host"]) == row["hosts"]  # every host seen by its name
        assert all(n >= 1 for n in row["db_connections_per_host"])
    assert latency["jobs"] == QUICK.latency_jobs
    assert 0 < latency["ms_p50"] < 5000
    # no host took the video while the killed one's lease ran: takeover >= what was left of it
    assert takeover["seconds"] >= takeover["lease_left_at_kill_s"] - 0.1
    assert takeover["seconds"] < QUICK.lease_s + 5
    assert "takeover after kill -9" in format_table(results)
