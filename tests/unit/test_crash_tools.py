"""The crash suite's own parts: naming the stage from thread stacks, and the links.json reader's alarms."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.crash_checks import LinksReader
from tests.e2e.crash_probe import frozen, look, py_spy, stages_of

WAITING_DECODER = ("render-decode", ("Condition.wait", "Queue.put", "_put", "VideoRender._decode"))
ENCODING = ("MainThread", ("VideoEncoder.write", "VideoRender._encode", "RenderDaemon.run_forever", "main"))


def test_a_thread_waiting_on_a_queue_is_in_no_stage() -> None:
    assert stages_of(
        [WAITING_DECODER, ("MainThread", ("Event.wait", "RenderDaemon.run_forever", "main"))]
    ) == {"idle"}


def test_stages_of_every_busy_thread_count() -> None:
    inferring = (
        "render-infer",
        ("run", "LipSyncModel.infer", "VideoRender._faces_for", "VideoRender._infer"),
    )
    assert stages_of([WAITING_DECODER, ENCODING, inferring]) == {"encode", "inference"}


def test_a_links_write_inside_eviction_is_both() -> None:
    evicting = (
        "upload_0",
        ("write_json_atomic", "write_links", "Reconciler._views", "Reconciler._evict"),
    )
    assert stages_of([evicting]) == {"eviction", "links.json write"}


def test_importing_before_serving_is_startup() -> None:
    importing = ("MainThread", ("_find_and_load", "<module>", "_render", "main", "<module>"))
    assert stages_of([importing]) == {"startup"}


def write_links(folder: Path, status: str, *, local_copy: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "job": folder.name,
        "status": "rendered",
        "videos": [{"output": "a.mp4", "status": status, "sha256": "ab" * 32, "local_copy": local_copy}],
    }
    tmp = folder / ".links.json.x.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, folder / "links.json")  # a new inode, as the daemon's writes
    return folder / "links.json"


def problems(reader: LinksReader) -> list[str]:
    return [p for history in reader.videos.values() for p in history.problems]


def test_reader_flags_a_missing_local_copy_before_ready(tmp_path: Path) -> None:
    reader = LinksReader(tmp_path)
    path = write_links(tmp_path / "job", "uploading")
    (tmp_path / "job" / "a.mp4").write_bytes(b"video")
    reader.read(path)
    assert problems(reader) == []
    (tmp_path / "job" / "a.mp4").unlink()
    reader.read(path)  # the same links.json, not parsed again, but the file is looked for again
    assert problems(reader) == ["local file missing while uploading"]


def test_reader_flags_local_copy_false_before_ready_and_leaving_ready(tmp_path: Path) -> None:
    reader = LinksReader(tmp_path)
    write_links(tmp_path / "job", "rendered", local_copy=False)
    (tmp_path / "job" / "a.mp4").write_bytes(b"video")
    reader.read(write_links(tmp_path / "job", "rendered", local_copy=False))
    reader.read(write_links(tmp_path / "job", "ready", local_copy=False))
    reader.read(write_links(tmp_path / "job", "uploading"))
    assert problems(reader) == ["local_copy false while rendered", "went from ready back to uploading"]


def test_reader_records_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "links.json").write_text('{"job": "jo')
    reader = LinksReader(tmp_path)
    reader.read(tmp_path / "job" / "links.json")
    assert len(reader.invalid) == 1
    assert reader.reads == 1


@pytest.mark.skipif(py_spy() is None, reason="py-spy (test extra) not installed")
def test_look_reads_the_stacks_of_a_frozen_process() -> None:
    """A real Python process parked in a named function; py-spy must see it there while it is stopped."""
    code = "import threading, time\ndef VideoRender_decode_stand_in():\n    print('up', flush=True)\n"
    code += "    while True: time.sleep(0.01)\nVideoRender_decode_stand_in()\n"
    proc: subprocess.Popen[Any] = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "up\n"
        binary = py_spy()
        assert binary is not None
        with frozen(proc.pid):
            sight = look(proc.pid, binary)
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in "tT", "the process must be stopped while it is looked at"
        frames = dict(sight.threads)["MainThread"]
        assert "VideoRender_decode_stand_in" in frames
        assert sight.stages == {"idle"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
