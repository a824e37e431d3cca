"""Drop-to-first-link latency: from renaming a manifest into the inbox to the first `url` in links.json.

`lipsyncd run` (both watchers, the embedded SeaweedFS, the built-in model; only paths and JSON logs set)
runs in a throw-away shared folder. Once both watchers say they are ready, short jobs (the bundled 4 s
demo clip, distribute: true) are dropped one at a time, the way a careful user drops them: written beside
the inbox, then renamed in. The clock starts just before the rename and stops when a poll of links.json
(every 10 ms) first sees a url. The daemons' JSON logs split each drop into stages:

  claim     rename -> job_queued            (watch event, claim rename, manifest checks, job store)
  prepare   job_queued -> render start      (render watcher wakes, audio decoded, model/detector ready;
                                             also the renderer's sha256 + links.json after the render)
  render    the video's own render seconds  (video_rendered.seconds: decode, faces, model, encode)
  handoff   video_rendered -> upload_started (upload watcher wakes, reads the store, sha256 and HEAD)
  upload    upload_started -> upload_done   (PUT with Content-MD5, HEAD to verify)
  sign+links upload_done -> video_ready     (presign, job store, links.json rewritten)
  observe   video_ready -> url seen         (this script's poll)

The first drop also loads the model and detector; it is reported apart as "cold".

    .venv/bin/python bench/latency.py            # 1 cold + 6 warm drops
    .venv/bin/python bench/latency.py --quick    # 1 cold + 2 warm drops
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

DEMO = REPO / "examples" / "demo"
POLL_S = 0.01
STAGES = ("claim", "prepare", "render", "handoff", "upload", "sign_links", "observe")


@dataclass(frozen=True)
class Drop:
    """One manifest dropped and its link seen; times in seconds since the rename."""

    job: str
    total_s: float
    stages: dict[str, float]


@dataclass(frozen=True)
class Share:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "shared" / "inbox"

    @property
    def outputs(self) -> Path:
        return self.root / "shared" / "outputs" / "latest_batch"

    @property
    def config(self) -> Path:
        return self.root / "lipsyncd.yaml"

    @property
    def log(self) -> Path:
        return self.root / "run.log"


def make_share(root: Path) -> Share:
    """Paths and JSON logs in the config; everything else at its defaults (embedded storage included)."""
    share = Share(root)
    (share.inbox / "media").mkdir(parents=True)
    for name in ("anchor.mp4", "speech.wav"):
        shutil.copy(DEMO / name, share.inbox / "media" / name)
    paths = {"shared": "shared", "inbox": "shared/inbox", "outputs": "shared/outputs/latest_batch"}
    paths |= {"state": "state", "models": "models"}
    config = {"paths": {k: str(root / v) for k, v in paths.items()}, "logging": {"format": "json"}}
    share.config.write_text(yaml.safe_dump(config))
    return share


# -- the daemon ----------------------------------------------------------------------------------------


@contextmanager
def running(
    share: Share, ready_timeout: float = 120.0, repo: Path = REPO
) -> Iterator[subprocess.Popen[bytes]]:
    """`lipsyncd run` (the one in `repo`) in the background, logs to share.log; yields once both watchers
    are ready."""
    command = [sys.executable, "-m", "daemon", "--config", str(share.config), "run"]
    with share.log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ready(share), ready_timeout, "both watchers to be ready", proc, share)
        yield proc
    finally:
        _stop(proc)


def _ready(share: Share) -> bool:
    names = {e.get("event") for e in events(share)}
    return {"render_ready", "upload_ready"} <= names


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)  # the embedded storage takes ~15 s to stop cleanly
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes],
    share: Share,
    poll: float = 0.1,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"lipsyncd exited ({proc.returncode}) waiting for {what}:\n{_tail(share)}")
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}:\n{_tail(share)}")


def _tail(share: Share) -> str:
    return share.log.read_text(errors="replace")[-3000:]


def events(share: Share) -> list[dict[str, Any]]:
    return json_lines(share.log)


def json_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a log file (other lines, and a line cut short, are skipped)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


# -- one drop ------------------------------------------------------------------------------------------


def drop(
    share: Share, job: str, proc: subprocess.Popen[bytes], timeout: float = 300.0, outside: bool = False
) -> Drop:
    """Written as a hidden temp file in the inbox and renamed (as `lipsyncd submit` does), or with
    `outside`, written beside the inbox and moved in (as `mv` from another folder of the share does)."""
    manifest = {"name": job, "audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": True}
    tmp = (share.root if outside else share.inbox) / f".{job}.yaml.tmp"
    tmp.write_text(yaml.safe_dump(manifest))
    started = time.time()
    os.rename(tmp, share.inbox / f"{job}.yaml")
    wait_for(lambda: _has_url(share, job), timeout, f"a link for {job}", proc, share, poll=POLL_S)
    seen = time.time()
    time.sleep(0.3)  # the last log lines of this job (eviction) are flushed
    return Drop(job, round(seen - started, 3), stages(events(share), job, started, seen))


def _has_url(share: Share, job: str) -> bool:
    try:
        doc = json.loads((share.outputs / job / "links.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(video.get("url") for video in doc.get("videos", []))


def stages(found: list[dict[str, Any]], job: str, started: float, seen: float) -> dict[str, float]:
    """Stage lengths from the first event of each kind for this job."""
    at = {name: _first(found, job, name) for name in ("job_queued", "video_rendered", "upload_started")}
    at |= {name: _first(found, job, name) for name in ("upload_done", "video_ready")}
    rendered = next(e for e in found if e.get("job") == job and e["event"] == "video_rendered")
    render_start = at["video_rendered"] - float(rendered["seconds"])
    marks = [started, at["job_queued"], render_start, at["video_rendered"], at["upload_started"]]
    marks += [at["upload_done"], at["video_ready"], seen]
    return {name: round(b - a, 3) for name, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}


def _first(found: list[dict[str, Any]], job: str, name: str) -> float:
    for event in found:
        if event.get("event") == name and event.get("job") == job:
            return datetime.fromisoformat(event["timestamp"]).timestamp()
    raise RuntimeError(f"no {name} event for job {job} in the daemon's log")


# -- summary -------------------------------------------------------------------------------------------


def summarise(drops: list[Drop]) -> dict[str, Any]:
    cold, warm = drops[0], drops[1:] or drops
    totals = [d.total_s for d in warm]
    return {
        "cold": asdict(cold),
        "warm_drops": len(warm),
        "median_s": round(statistics.median(totals), 3),
        "min_s": min(totals),
        "max_s": max(totals),
        "stdev_s": round(statistics.stdev(totals), 3) if len(totals) > 1 else 0.0,
        "stages_median_s": {s: round(statistics.median(d.stages[s] for d in warm), 3) for s in STAGES},
        "drops": [asdict(d) for d in drops],
    }


def print_table(summary: dict[str, Any], drops: list[Drop]) -> None:
    """Totals in seconds, stages in milliseconds."""
    print(f"\n{'drop':<12}{'total s':>9}" + "".join(f"{s + ' ms':>14}" for s in STAGES))
    for i, d in enumerate(drops):
        label = "cold" if i == 0 else d.job
        print(f"{label:<12}{d.total_s:>9.3f}" + "".join(f"{d.stages[s] * 1000:>14.0f}" for s in STAGES))
    med = summary["stages_median_s"]
    print(
        f"{'median warm':<12}{summary['median_s']:>9.3f}" + "".join(f"{med[s] * 1000:>14.0f}" for s in STAGES)
    )
    print(
        f"warm drops: {summary['warm_drops']}, median {summary['median_s']:.3f} s, "
        f"min {summary['min_s']:.3f}, max {summary['max_s']:.3f}, stdev {summary['stdev_s']:.3f}"
    )


# -- entry points --------------------------------------------------------------------------------------


def run(
    quick: bool, warm_drops: int | None = None, *, repo: Path = REPO, outside: bool = False
) -> dict[str, Any]:
    """Start `lipsyncd run` (the one in `repo`: the paired bench times another commit's tree with this
    script), drop 1 + N jobs one after another, return the latency figures."""
    count = 1 + (warm_drops if warm_drops is not None else (2 if quick else 6))
    with tempfile.TemporaryDirectory(prefix="lipsyncd-latency-") as tmp:
        share = make_share(Path(tmp))
        began = time.monotonic()
        with running(share, repo=repo) as proc:
            startup = round(time.monotonic() - began, 2)
            drops = [drop(share, f"latency-{i:02d}", proc, outside=outside) for i in range(count)]
    summary = summarise(drops)
    print_table(summary, drops)
    return {"clip": "examples/demo/anchor.mp4 (4 s) + speech.wav", "startup_s": startup, **summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two warm drops instead of six")
    p.add_argument("--drops", type=int, default=None, help="warm drops after the cold one")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/upload-DATE.json")
    args = p.parse_args(argv)
    result = run(args.quick, args.drops)
    if not args.no_save:
        from bench.upload_speed import save

        print(f"wrote {save('latency', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
