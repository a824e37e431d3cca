"""Where the time outside rendering goes, for the bundled demo job (examples/demo: 4 s of 256x256).

    python bench/startup_profile.py once     # `lipsyncd render --once`, fresh root each time
    python bench/startup_profile.py daemon   # drop-to-link with `lipsyncd run` already up
    python bench/startup_profile.py all --repeats 5 --json bench/out/startup.json

Each run happens in a fresh folder under a temp dir (examples/ copied there, embedded storage), with the
daemon from this checkout (PYTHONPATH). Stages are cut at the structured log lines' timestamps; each
figure is the median of the repeats. Run it at normal priority on a quiet machine (`uptime` is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def env() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as deployed
    return {**environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def fresh_root(parent: Path, name: str) -> Path:
    root = parent / name
    root.mkdir()
    shutil.copytree(REPO / "examples", root / "examples")
    return root


def stamp(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        if raw.startswith("{") and '"event"' in raw:
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return lines


def first(lines: list[dict[str, Any]], event: str, **match: Any) -> float | None:
    for line in lines:
        if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
            return stamp(line)
    return None


def import_seconds(stderr: str) -> float:
    """Top-level cumulative import times from -X importtime (those at indent 0)."""
    total = 0
    for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", stderr, re.MULTILINE):
        if not m.group(2).startswith(" "):
            total += int(m.group(1))
    return total / 1e6


def spans(points: list[tuple[str, float | None]]) -> dict[str, float]:
    """Consecutive differences between named points (a missing point merges into the next span)."""
    out: dict[str, float] = {}
    prev_name, prev_t = points[0]
    for name, t in points[1:]:
        if t is None or prev_t is None:
            continue
        out[f"{prev_name}->{name}"] = round(t - prev_t, 3)
        prev_name, prev_t = name, t
    return out


# -- (a) lipsyncd render --once -------------------------------------------------------------------------


def once(root: Path, n: int, settled: bool = False) -> dict[str, float]:
    """One `render --once` of a job just submitted (`lipsyncd submit`, as `make demo` does), in a root
    where an earlier run wrote the built-in model and the avatar cache (the steady state)."""
    demo = ["examples/demo/speech.wav", "examples/demo/anchor.mp4"]
    submit = [PY, "-m", "daemon", "submit", *demo, "--name", f"demo-{n}"]
    subprocess.run(submit, cwd=root, env=env(), check=True, capture_output=True)
    if settled:  # the manifest is older than inbox.settle_time (2 s): start-up alone is measured
        time.sleep(2.2)
    start = time.time()
    done = subprocess.run(
        [PY, "-X", "importtime", "-m", "daemon", "render", "--once"],
        cwd=root, env=env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    end = time.time()
    lines = log_lines(done.stdout + "\n" + done.stderr)
    stages = next((ln for ln in lines if ln["event"] == "render_stages"), {})
    points = [
        ("spawn", start),
        ("first_log", stamp(lines[0]) if lines else None),
        ("job_queued", first(lines, "job_queued")),
        ("audio_loaded", first(lines, "audio_loaded")),
        ("model_loaded", first(lines, "model_loaded")),
        ("video_probed", first(lines, "video_probed")),
        ("video_rendered", first(lines, "video_rendered")),
        ("job_rendered", first(lines, "job_rendered")),
        ("exit", end),
    ]
    figures = spans(points)
    figures["imports_s"] = round(import_seconds(done.stderr), 3)
    figures["render_s"] = float(stages.get("seconds", 0.0))
    figures["encode_s"] = float(stages.get("encode_s", 0.0))
    figures["total_s"] = round(end - start, 3)
    return figures


# -- (b) drop-to-link with the daemon running ------------------------------------------------------------


def manifest_text(root: Path, name: str) -> str:
    demo = root / "examples" / "demo"
    videos = f"videos:\n  - {demo / 'anchor.mp4'}\n"
    return f"name: {name}\naudio: {demo / 'speech.wav'}\n{videos}distribute: true\n"


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(what)


def linked(links: Path) -> bool:
    try:
        doc = json.loads(links.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return bool(doc.get("videos")) and all(v.get("url") for v in doc["videos"])


def daemon_runs(parent: Path, repeats: int, drop: str = "outside") -> list[dict[str, float]]:
    """`drop`: the manifest is written beside the inbox (outside) or as a hidden temp file in it (inside,
    as `lipsyncd submit` does), then renamed to inbox/NAME.yaml."""
    root = fresh_root(parent, "daemon")
    log_path = root / "run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [PY, "-m", "daemon", "run"], cwd=root, env=env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        t0 = time.time()
        wait_for(lambda: all(f'"{e}"' in log_path.read_text() for e in ("upload_ready", "render_ready")),
                 120, "lipsyncd run ready")  # fmt: skip
        ready_s = time.time() - t0
        time.sleep(1.0)
        results = []
        for i in range(repeats):
            name = f"drop-{i}"
            staged = (root if drop == "outside" else root / "inbox") / f".{name}.yaml.tmp"
            staged.write_text(manifest_text(root, name), encoding="utf-8")
            links = root / "outputs" / "latest_batch" / name / "links.json"
            dropped = time.time()
            os.rename(staged, root / "inbox" / f"{name}.yaml")
            wait_for(lambda links=links: linked(links), 120, f"{name} linked")
            linked_at = time.time()
            time.sleep(1.5)  # the log lines after the link (and a quiet daemon before the next drop)
            lines = log_lines(log_path.read_text())
            job = name
            points = [
                ("drop", dropped),
                ("job_queued", first(lines, "job_queued", job=job)),
                ("audio_loaded", first(lines, "audio_loaded", job=job)),
                ("model_loaded", first(lines, "model_loaded", job=job)),
                ("video_probed", first(lines, "video_probed", job=job)),
                ("video_rendered", first(lines, "video_rendered", job=job)),
                ("upload_started", first(lines, "upload_started", job=job)),
                ("video_ready", first(lines, "video_ready", job=job)),
                ("links_json", linked_at),
            ]
            figures = spans(points)
            figures["drop_to_link_s"] = round(linked_at - dropped, 3)
            results.append(figures)
            print(f"  {name}: {figures}", flush=True)
        results[0]["ready_s"] = round(ready_s, 3)
        return results
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r})
    return {k: round(statistics.median(r[k] for r in runs if k in r), 3) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("once", "daemon", "all"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--drop", choices=("outside", "inside"), default="outside")
    parser.add_argument("--settled", action="store_true", help="once: render a manifest already settled")
    args = parser.parse_args()
    report: dict[str, Any] = {"uptime_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="startup-profile-") as tmp:
        parent = Path(tmp)
        if args.what in ("once", "all"):
            root = fresh_root(parent, "once")
            once(root, -1)  # warm-up: writes models/baseline and the avatar cache
            runs = []
            for n in range(args.repeats):
                runs.append(once(root, n, args.settled))
                print(f"  once {n}: {runs[-1]}", flush=True)
            report["once"] = {"median": medians(runs), "runs": runs}
        if args.what in ("daemon", "all"):
            runs = daemon_runs(parent, args.repeats, args.drop)
            report["daemon"] = {"median": medians(runs), "runs": runs}
    report["uptime_after"] = os.getloadavg()
    for section in ("once", "daemon"):
        if section in report:
            print(f"\n{section} (median of {args.repeats}):")
            for k, v in report[section]["median"].items():
                print(f"  {k:32s} {v:8.3f}")
    print(f"load average before {report['uptime_before']}, after {report['uptime_after']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
