"""The benchmark command's frame: the quick path of one real section (a real render in a child process),
section choice and failure handling, the table, the JSON, and the long-clip generator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import pytest

from daemon.bench import BenchOptions, Check, Section, SectionResult, format_table, run_bench, write_json
from daemon.bench.core import BenchContext
from daemon.bench.inputs import concat_copies
from daemon.bench.paired_section import REPO, export_tree
from daemon.samples import write_face_clip


def test_quick_example_renders_the_bundled_demo_and_reports_it(tmp_path: Path) -> None:
    results = run_bench(BenchOptions(quick=True, only=("example",), work_dir=tmp_path, quiet_wait=0))
    (section,) = results["sections"]
    assert section["name"] == "example"
    assert "error" not in section
    (row,) = section["rows"]
    assert row["clip"] == "examples/demo"
    assert row["frames"] > 90
    assert row["fps"] > 0
    assert 50 < row["peak_rss_mib"] < 1500
    machine = results["machine"]
    assert machine["cpu_cores"] >= 1
    assert machine["ram_gib"] > 0
    assert "CPUExecutionProvider" in str(machine)
    assert "examples/demo" in format_table(results)
    write_json(results, tmp_path / "results" / "run.json")
    assert json.loads((tmp_path / "results" / "run.json").read_text())["sections"][0]["rows"] == [row]


def test_an_unknown_section_is_refused_by_name(tmp_path: Path) -> None:
    choices = (
        "cluster, e2e, encoder, example, memory, model, musetalk, musetalk-e2e, musetalk-memory, "
        "paired, workers"
    )
    with pytest.raises(ValueError, match=f"unknown bench section nope; choose from {choices}"):
        run_bench(BenchOptions(quick=True, only=("nope",), work_dir=tmp_path))


def fine(ctx: BenchContext) -> SectionResult:
    return SectionResult([{"what": "ok", "value": 1.5}], [Check("speed", ">= 1", "2", True)], ["a note"])


def broken(ctx: BenchContext) -> SectionResult:
    raise RuntimeError("the disk is full")


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    sections = [Section("broken", "Broken", broken), Section("fine", "Fine", fine)]
    results = run_bench(BenchOptions(work_dir=tmp_path), sections)
    first, second = results["sections"]
    assert first["error"] == "RuntimeError: the disk is full"
    assert first["rows"] == []
    assert second["rows"] == [{"what": "ok", "value": 1.5}]
    assert "error" not in second
    table = format_table(results)
    assert "FAILED: RuntimeError: the disk is full" in table
    assert "[met   ] speed: 2 (target >= 1)" in table
    assert "note: a note" in table


def test_missed_targets_stand_out_in_the_table() -> None:
    results = {
        "date": "today",
        "machine": {},
        "sections": [
            {
                "name": "e2e",
                "title": "End to end",
                "rows": [{"size": "1080p", "fps": 7.25}],
                "checks": [{"what": "ratio", "target": ">= 60%", "value": "41%", "met": False}],
                "notes": [],
            }
        ],
    }
    table = format_table(results)
    assert "[MISSED] ratio: 41% (target >= 60%)" in table
    assert "1080p" in table
    assert "7.2" in table


def test_long_clips_are_copies_of_a_segment_back_to_back(tmp_path: Path) -> None:
    segment = write_face_clip(tmp_path / "segment.mp4", 0.4, 25, (64, 64))
    long = concat_copies(segment, tmp_path / "long.mp4", 3)
    with av.open(str(long)) as container:
        frames = [frame.time for frame in container.decode(video=0)]
    assert len(frames) == 30
    assert frames == sorted(frames)
    assert frames[-1] == pytest.approx(frames[0] + 29 / 25)


@pytest.mark.timeout(900)  # a tiny import, three sections, five renders: ~2 min alone, more on a busy box
def test_quick_musetalk_imports_tiny_networks_and_reports_every_part(tmp_path: Path) -> None:
    only = ("musetalk", "musetalk-e2e", "musetalk-memory")
    results = run_bench(BenchOptions(quick=True, only=only, work_dir=tmp_path, quiet_wait=0))
    section, end_to_end, memory = results["sections"]
    for part in results["sections"]:
        assert "error" not in part, part.get("error")
    rows = section["rows"]
    graphs = [row for row in rows if row["part"] == "a graph"]
    assert [row["what"] for row in graphs] == [
        f"{graph} (tiny)" for graph in ("audio_encoder", "vae_encoder", "unet", "vae_decoder")
    ]
    assert all(row["per_s"] > 0 and row["ms_per_batch"] > 0 for row in graphs)
    first, second = (row for row in rows if row["part"] == "b avatar prep")
    # the second render of the same video detects nothing and encodes nothing: the cache holds it all
    assert first["detector_calls"] > 0
    assert first["reused"] == 0
    assert first["vae_s"] > 0
    assert second["detector_calls"] == 0
    assert second["reused"] == second["frames"] == first["frames"]
    assert second["prep_ms_per_frame"] < first["prep_ms_per_frame"]
    (e2e,) = end_to_end["rows"]
    assert e2e["part"] == "c end to end"
    assert e2e["frames"] == 10
    assert e2e["per_s"] > 0
    assert e2e["peak_rss_mib"] > 50
    short, long = memory["rows"]
    assert (short["frames"], long["frames"]) == (20, 40)
    assert short["peak_rss_mib"] > 50
    ((cache_check,), (memory_check,)) = section["checks"], memory["checks"]
    assert cache_check["met"]
    assert "10%" in memory_check["target"]
    assert "ONNX vs PyTorch max abs difference: audio_encoder.onnx" in section["notes"][0]
    assert (tmp_path / "models" / "musetalk-tiny" / "model.json").is_file()  # kept for the next run
    assert "c end to end" in format_table(results)


def test_quick_workers_section_renders_one_job_with_one_and_two_worker_processes(tmp_path: Path) -> None:
    """Real `lipsyncd render --slot N` processes on a fresh share: both runs render the two videos."""
    results = run_bench(BenchOptions(quick=True, only=("workers",), work_dir=tmp_path, quiet_wait=0))
    (section,) = results["sections"]
    assert "error" not in section, section.get("error")
    one, two = section["rows"]
    assert (one["what"], two["what"]) == ("1 worker, 256x256, baseline", "2 workers, 256x256, baseline")
    for row in (one, two):
        assert row["frames"] == 2 * 25  # two videos of 1 s at 25 fps
        assert row["per_s"] > 0
        assert len(row["per_video_fps"]) == 2  # one video_rendered line per video


def test_the_paired_section_runs_a_commit_as_its_own_tree(tmp_path: Path) -> None:
    """The reference side is the commit's own files (exported once), not this checkout's."""
    tree = export_tree("HEAD", tmp_path / "trees")
    assert tree.label == "reference"
    assert tree.root == tmp_path / "trees" / tree.commit
    assert (tree.root / "daemon" / "cli.py").read_bytes() == subprocess.run(
        ["git", "show", f"{tree.commit}:daemon/cli.py"], capture_output=True, check=True, cwd=REPO
    ).stdout
    assert not [p for p in (tmp_path / "trees").iterdir() if p.name.startswith(".")]  # no temp left
    assert export_tree("HEAD", tmp_path / "trees") == tree  # made once
    with pytest.raises(ValueError, match="--against no-such-commit: not a commit of this repository"):
        export_tree("no-such-commit", tmp_path / "trees")
