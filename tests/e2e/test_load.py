"""Load on the inbox through a real `lipsyncd render` process: 200 manifests dropped at once into an inbox
that already holds 10,000 unrelated files, and the lost-event cases where watchdog delivers nothing and the
periodic rescan is all that is left.

Figures are printed (run with `-s` to see them) and recorded as test properties.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import sandbox
from tests.e2e.harness import Share, wait_for

JOBS = 200
CLUTTER = 10_000


def manifest(media: str) -> dict[str, object]:
    return {"audio": "media/voice.wav", "videos": [f"media/{media}"]}


def clutter(inbox: Path, media: dict[str, Path], count: int) -> int:
    """Unrelated files a busy share collects: documents, media, dot-files, editor locks, AppleDouble
    twins of manifests, old manifests in sub-folders. None of them is a manifest in the inbox itself."""
    kinds: list[Callable[[int], Path]] = [
        lambda i: inbox / f"notes-{i}.txt",
        lambda i: inbox / f".hidden-{i}",
        lambda i: inbox / f"._job-{i}.yaml",  # macOS AppleDouble file beside a manifest
        lambda i: inbox / f"~$job-{i}.yaml",  # an editor's lock file
        lambda i: inbox / f"take-{i}.mp4",
        lambda i: inbox / "media" / f"clip-{i}.mp4",
        lambda i: inbox / "media" / f"still-{i}.png",
        lambda i: inbox / "archive" / str(i % 20) / f"old-{i}.yaml",  # not directly in the inbox
    ]
    sources = {".mp4": media["clip"], ".png": media["still"]}
    for i in range(count):
        path = kinds[i % len(kinds)](i)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in sources:
            os.link(sources[path.suffix], path)  # real media bytes without 10,000 copies
        else:
            path.write_text(f"unrelated file {i}\n")
    return count


def claimed_within(path: Path, timeout: float) -> float:
    """Seconds until `path` leaves the folder (the daemon's claim is an atomic rename)."""
    began = time.monotonic()
    while path.exists():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{path.name} was not claimed within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - began


def drop_renamed(folder: Path, name: str, text: str) -> Path:
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    os.rename(tmp, folder / name)
    return folder / name


def yaml_text(media: str) -> str:
    return f"audio: media/voice.wav\nvideos: [media/{media}]\n"


def test_200_manifests_at_once_into_an_inbox_of_10000_unrelated_files(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    share = Share(tmp_path / "shared", {"inbox": {"settle_time": "0.5s", "rescan_interval": "2s"}})
    media = sandbox.tiny_media(share.inbox / "media")
    clutter(share.inbox, media, CLUTTER)
    untouched = sandbox.listing(share.inbox)
    started = time.monotonic()
    daemon = sandbox.LaunchedDaemon(share, [], "render")
    try:
        sandbox.ready(daemon)
        ready_s = time.monotonic() - started
        names = [f"load-{i:03d}" for i in range(JOBS)]
        dropped = time.monotonic()
        for i, name in enumerate(names):
            share.drop(f"{name}.yaml", manifest("face.mp4" if i % 2 else "face.png"))
        wait_for(lambda: not list(share.inbox.glob("load-*.yaml")), 60, "all 200 claimed", daemon)
        all_claimed_s = time.monotonic() - dropped
        wait_for(lambda: len(list((share.inbox / "done").glob("load-*"))) >= 20, 120, "20 jobs done", daemon)
        renamed = claimed_within(drop_renamed(share.inbox, "probe-a.yaml", yaml_text("face.mp4")), 10)
        (share.inbox / "probe-b.yaml").write_text(yaml_text("face.png"))  # written in place, not renamed
        in_place = claimed_within(share.inbox / "probe-b.yaml", 10)
        busy = len(list((share.inbox / "done").glob("load-*"))) < JOBS
        expected = {*names, "probe-a", "probe-b"}
        wait_for(lambda: done_names(share) >= expected, 180, "every job done", daemon)
        all_done_s = time.monotonic() - dropped
    finally:
        assert daemon.terminate() == 0
    figures = {
        "ready_s": round(ready_s, 2),
        "all_200_claimed_s": round(all_claimed_s, 2),
        "probe_claim_renamed_s": round(renamed, 3),
        "probe_claim_written_in_place_s": round(in_place, 3),
        "all_done_s": round(all_done_s, 1),
        "jobs_per_s": round((JOBS + 2) / all_done_s, 2),
    }
    print(f"\nload figures: {figures}")
    for key, value in figures.items():
        record_property(key, value)
    assert busy, "the probes must be dropped while the load is still rendering"
    assert renamed < 3.0, f"the inbox must stay responsive under load: {figures}"
    assert in_place < 3.0, f"the inbox must stay responsive under load: {figures}"
    assert_each_job_once(share, daemon, expected)
    assert sandbox.listing(share.inbox, skip=[share.inbox / d for d in ("done", ".claimed")]) == {
        **untouched,
        "done": "dir",
        ".claimed": "dir",
        "failed": "dir",
    }, "the 10,000 unrelated files must stay exactly as they were"


def done_names(share: Share) -> set[str]:
    return {p.name.removesuffix(".yaml") for p in (share.inbox / "done").iterdir()}


def assert_each_job_once(share: Share, daemon: sandbox.LaunchedDaemon, expected: set[str]) -> None:
    """One job per manifest, one render per video, every manifest filed once under its own name."""
    assert sorted(p.name for p in (share.inbox / "done").iterdir()) == sorted(f"{n}.yaml" for n in expected)
    assert list((share.inbox / "failed").iterdir()) == []
    assert list((share.inbox / ".claimed").iterdir()) == []
    jobs = sandbox.store_rows(share.state, "SELECT id, state FROM jobs")
    assert sorted(jobs) == sorted((name, "done") for name in expected), "a job is missing or was made twice"
    events = daemon.events()
    for kind in ("job_queued", "video_rendered", "job_rendered"):
        counts = Counter(e["job"] for e in events if e["event"] == kind)
        assert counts == Counter(expected), f"{kind} must happen exactly once per job"
    for name in expected:
        links = share.links(name)
        assert links is not None
        assert [v["status"] for v in links["videos"]] == ["rendered"]


# -- lost events --------------------------------------------------------------------------------------


def test_rescan_alone_picks_up_manifests_when_no_event_arrives(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The share is mounted over the inbox after the daemon started watching it (a network share that
    came up late, an automount): inotify still watches the covered folder, so not one event arrives for
    the files users drop. The mount is made inside the daemon's own mount namespace."""
    if not sandbox.can_mount(tmp_path):
        pytest.skip("needs root with CAP_SYS_ADMIN to mount (unshare, nsenter)")
    rescan = 3.0
    share = Share(tmp_path / "shared", {"inbox": {"settle_time": "0.5s", "rescan_interval": f"{rescan}s"}})
    sandbox.tiny_media(share.inbox / "media")
    remote = tmp_path / "remote-share-inbox"  # what the late mount shows at the inbox path
    shutil.copytree(share.inbox / "media", remote / "media")
    for folder in (".claimed", "done", "failed"):  # as the daemon left them there on an earlier run
        (remote / folder).mkdir()
    daemon = sandbox.in_private_mounts(share, "render")
    try:
        sandbox.ready(daemon)
        control = claimed_within(drop_renamed(share.inbox, "control.yaml", yaml_text("face.png")), 10)
        wait_for(lambda: (share.inbox / "done" / "control.yaml").exists(), 30, "control job done", daemon)
        sandbox.mount_in(daemon, "--bind", str(remote), str(share.inbox))
        latencies = []
        for i in range(6):
            time.sleep(0.4 + (i * 0.77) % rescan)  # spread the drops over the rescan cycle
            path = drop_renamed(remote, f"lost-{i}.yaml", yaml_text("face.mp4"))
            latencies.append(claimed_within(path, rescan + 10))
        expected = {f"lost-{i}.yaml" for i in range(6)}
        wait_for(
            lambda: {p.name for p in (remote / "done").iterdir()} >= expected, 60, "lost jobs done", daemon
        )
    finally:
        assert daemon.terminate() == 0
    figures = {
        "event_claim_s": round(control, 3),
        "rescan_claim_max_s": round(max(latencies), 2),
        "rescan_claim_mean_s": round(sum(latencies) / len(latencies), 2),
    }
    print(f"\nlost-event figures (rescan_interval {rescan} s, settle 0.5 s): {figures}")
    for key, value in figures.items():
        record_property(key, value)
    assert control < 1.0, "with events a renamed manifest is taken at once"
    assert max(latencies) <= rescan + 0.5 + 1.5, "the rescan must pick everything up within its interval"
    assert max(latencies) > 1.0, "some pick-ups must have waited for a rescan (else events still arrived)"
    assert list(share.inbox.glob("lost-*")) == [], (
        "the files went to the mounted share, not the covered folder"
    )


def test_rescan_still_runs_when_inotify_is_unavailable(tmp_path: Path) -> None:
    """Event delivery off for real: the daemon runs in a user namespace whose inotify instance limit is 0,
    so inotify_init() fails as it does on a host that ran out of inotify instances."""
    if not sandbox.is_root() or not shutil.which("unshare"):
        pytest.skip("needs root to write the user namespace's inotify limit")
    share = Share(tmp_path / "shared", {"inbox": {"settle_time": "0.5s", "rescan_interval": "2s"}})
    sandbox.tiny_media(share.inbox / "media")
    daemon = sandbox.without_inotify(share, "render")
    try:
        sandbox.ready(daemon)
        path = drop_renamed(share.inbox, "no-inotify.yaml", yaml_text("face.png"))
        latency = claimed_within(path, 2.0 + 0.5 + 3.0)
        wait_for(lambda: (share.inbox / "done" / "no-inotify.yaml").exists(), 30, "job done", daemon)
    finally:
        assert daemon.terminate() == 0
    print(f"\nwithout inotify (rescan_interval 2 s, settle 0.5 s): claimed after {latency:.2f} s")
    assert any(e["event"] == "inbox_events_unavailable" for e in daemon.events()), "say events are off"


def test_manifests_are_taken_after_the_inbox_folder_is_made_again(tmp_path: Path) -> None:
    """A user deletes the inbox and makes a new one (or a share without .claimed/ is mounted over it): the
    watch is on the old folder, the rescan sees the new one, and claims must still work (they used to fail
    silently, for ever, on the missing .claimed/ folder)."""
    share = Share(tmp_path / "shared", {"inbox": {"settle_time": "0.5s", "rescan_interval": "2s"}})
    daemon = sandbox.LaunchedDaemon(share, [], "render")
    try:
        sandbox.ready(daemon)
        os.rename(share.inbox, tmp_path / "inbox-before")  # a user tidies the share: new empty inbox
        sandbox.tiny_media(share.inbox / "media")
        path = drop_renamed(share.inbox, "again.yaml", yaml_text("face.png"))
        claimed_within(path, 2.0 + 0.5 + 3.0)
        wait_for(lambda: (share.inbox / "done" / "again.yaml").exists(), 30, "job done", daemon)
    finally:
        assert daemon.terminate() == 0
