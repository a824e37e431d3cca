"""The README's first command: `make demo` runs `python -m daemon.demo` from the repository root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av

from tests.e2e.harness import REPO


def test_demo_renders_and_shares_the_bundled_example(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")  # a clean root: nothing rendered before
    result = subprocess.run(
        [sys.executable, "-m", "daemon.demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sha256 matches the render: True" in result.stdout
    assert "links can be opened by only this machine (127.0.0.1 is loopback)" in result.stdout
    video = tmp_path / "outputs" / "latest_batch" / "demo" / "anchor.mp4"
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.duration is not None
        seconds = float(container.duration) / av.time_base
    assert abs(seconds - 3.96) <= 0.04 + 1 / 25  # the speech clip's length, within one frame
    shared = json.loads((tmp_path / "outputs" / "latest_batch" / "demo-shared" / "links.json").read_text())
    assert shared["videos"][0]["status"] == "ready"
    assert shared["videos"][0]["local_copy"] is False
