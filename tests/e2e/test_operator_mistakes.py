"""Mistakes operators make for real, done with real processes: many `lipsyncd submit`s at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.harness import REPO, Daemon, Share, wait_for

PARALLEL_SUBMITS = 30


def test_parallel_submits_of_one_name_each_keep_their_manifest_and_media(tmp_path: Path) -> None:
    """30 submits started at once, same --name, each with its own presenter file of the same file name
    (different bytes) from outside the share: every one gets its own manifest pointing at its own copy.
    Before the fix: 30 exits of 0 but fewer manifests, and copies of one second shared one folder."""
    share = Share(tmp_path / "shared")
    outside = tmp_path / "outside"
    sources = []
    for i in range(PARALLEL_SUBMITS):
        folder = outside / f"user{i}"
        folder.mkdir(parents=True)
        presenter = folder / "anchor.mp4"  # submit checks only that the file exists; bytes tell them apart
        presenter.write_bytes(f"presenter of submit {i}\n".encode() * 64)
        sources.append(presenter)
    audio = outside / "speech.wav"
    audio.write_bytes(b"speech")

    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon",
                "--config",
                str(share.config),
                "submit",
                str(audio),
                str(presenter),
                "--name",
                "promo",
                "--distribute",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for presenter in sources
    ]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]

    assert [rc for _, rc in results] == [0] * PARALLEL_SUBMITS, [err for (_, err), _ in results]
    printed = [Path(out.strip()) for (out, _), _ in results]
    written = sorted(share.inbox.glob("promo*.yaml"))
    crossed = [m for m, presenter in zip(printed, sources, strict=True) if not _renders(m, presenter)]
    print(f"{PARALLEL_SUBMITS} parallel submits -> {len(set(printed))} distinct paths printed, "
          f"{len(written)} manifests written, {len(crossed)} render another submit's presenter")  # fmt: skip
    assert len(set(printed)) == PARALLEL_SUBMITS
    assert sorted(printed) == written
    assert crossed == []
    leftovers = [p for p in share.inbox.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_submitted_manifest_is_taken_at_once_and_renders(tmp_path: Path, media: dict[str, Path]) -> None:
    """The no-replace publish is still a rename: with a minute's settle time the daemon takes the
    manifest within seconds (a hard link would look like a new file and wait), and reads the copies."""
    share = Share(tmp_path / "shared", {"inbox": {"settle_time": "60s", "rescan_interval": "2s"}})
    daemon = Daemon(share, "render")
    try:  # watching first: a file found by the start-up scan is not known to have been renamed in
        wait_for(lambda: any(e["event"] == "render_ready" for e in daemon.events()), 60, "ready", daemon)
        done = share.lipsyncd("submit", str(media["speech"]), str(media["face"]), "--name", "quick")
        assert done.returncode == 0, done.stderr
        manifest = Path(done.stdout.strip())
        wait_for(lambda: not manifest.exists(), 20, "the manifest taken before its settle time", daemon)
        wait_for(lambda: (doc := share.links("quick")) and doc["status"] == "done", 120, "job done", daemon)
    finally:
        daemon.terminate()


def _renders(manifest: Path, presenter: Path) -> bool:
    """The manifest's one video is a copy of this presenter, and its audio is the speech."""
    document = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    (video,) = document["videos"]
    return (
        Path(video).read_bytes() == presenter.read_bytes()
        and Path(document["audio"]).read_bytes() == b"speech"
    )
