"""The HTTP API's figures: reads per second of one job's view, and POST-to-first-link for the demo clip.

`lipsyncd run` (both watchers, the embedded SeaweedFS, the built-in model) and `lipsyncd api` run in a
throw-away shared folder (api.rate_limit raised so the limiter does not cap the figures). Once both are
ready:

  post->link  the bundled demo clip (examples/demo: 4 s, one video) uploaded with POST /v1/jobs
              (multipart, distribute=true); the clock starts before the POST and stops when a long poll
              (GET /v1/jobs/JOB?wait=30 with If-None-Match) first returns a view with a url. The API looks
              at the store every 0.25 s while a client waits, so up to 0.25 s of each figure is that poll.
              The first job also loads the model and detector: reported apart as "cold"; then N warm
              jobs, one at a time, median reported.
  reads/s     GET /v1/jobs/JOB (the finished job's links.json view, with its ETag) REQUESTS times over one
              keep-alive connection (httpx.Client), one after another; then the same spread over 4
              threads with a client each. Reads/s = requests / wall seconds; p50 and p99 per request.
              The load average before and after is recorded: on a shared machine the figures are low.

    .venv/bin/python bench/api.py --json bench/results/cpu-2026-12-02-api.json
    .venv/bin/python bench/api.py --quick      # 1 warm job, 200 reads
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "daemon", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def logged(log: Path, event: str) -> bool:
    return f'"event": "{event}"' in log.read_text(errors="replace")


def wait(what: str, check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def post_to_first_link(client: httpx.Client) -> float:
    files = [
        ("audio", ("speech.wav", (DEMO / "speech.wav").read_bytes())),
        ("videos", ("anchor.mp4", (DEMO / "anchor.mp4").read_bytes())),
    ]
    started = time.perf_counter()
    answer = client.post("/v1/jobs", data={"name": "bench", "distribute": "true"}, files=files)
    answer.raise_for_status()
    job = answer.json()["job"]
    tag = ""
    while True:
        view = client.get(f"/v1/jobs/{job}", params={"wait": 30}, headers={"If-None-Match": tag})
        if view.status_code == 200:
            tag = view.headers["etag"]
            document = view.json()
            if any(v.get("url") for v in document["videos"]):
                return time.perf_counter() - started
            if document["status"] in ("failed", "partial", "cancelled", "refused"):
                raise SystemExit(f"job {job} ended {document['status']}: {document.get('problems')}")


def reads(url: str, token: str, path: str, requests: int, threads: int) -> dict[str, float]:
    each = requests // threads
    times: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        mine = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            for _ in range(each):
                t = time.perf_counter()
                client.get(path).raise_for_status()
                mine.append(time.perf_counter() - t)
        with lock:
            times.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    times.sort()
    return {
        "threads": threads,
        "requests": len(times),
        "reads_per_s": round(len(times) / wall, 1),
        "p50_ms": round(1000 * times[len(times) // 2], 2),
        "p99_ms": round(1000 * times[int(len(times) * 0.99)], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=3, help="warm jobs for POST-to-first-link (median)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    jobs, requests = (1, 200) if args.quick else (args.jobs, args.requests)
    with tempfile.TemporaryDirectory(prefix="lipsyncd-api-bench-") as scratch:
        root = Path(scratch)
        share = root / "shared"
        (share / "inbox").mkdir(parents=True)
        port = free_port()
        config = root / "lipsyncd.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "paths": {
                        "shared": str(share),
                        "inbox": str(share / "inbox"),
                        "outputs": str(share / "outputs"),
                        "state": str(root / "state"),
                        "models": str(root / "models"),
                    },
                    "api": {"listen": f"127.0.0.1:{port}", "rate_limit": 1_000_000, "min_free_bytes": 0},
                    "logging": {"format": "json", "level": "info"},
                }
            )
        )
        add = ["api", "token", "add", "bench", "--can", "all"]
        token = subprocess.run(
            [sys.executable, "-m", "daemon", "--config", str(config), *add],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        run_log, api_log = root / "run.log", root / "api.log"
        run, api = start(config, run_log, "run"), start(config, api_log, "api")
        try:
            wait(
                "both watchers ready",
                lambda: logged(run_log, "render_ready") and logged(run_log, "upload_ready"),
            )
            wait("the API ready", lambda: logged(api_log, "api_ready"))
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300
            ) as client:
                cold = post_to_first_link(client)
                warm = [post_to_first_link(client) for _ in range(jobs)]
                job = client.get("/v1/jobs").json()["jobs"][-1]["job"]
            load_before = os.getloadavg()
            one = reads(url, token, f"/v1/jobs/{job}", requests, 1)
            four = reads(url, token, f"/v1/jobs/{job}", requests, 4)
            load_after = os.getloadavg()
        finally:
            for proc in (api, run):
                proc.send_signal(signal.SIGTERM)
            for proc in (api, run):
                proc.wait(timeout=120)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "post_to_first_link_s": {
            "cold": round(cold, 2),
            "warm": [round(w, 2) for w in warm],
            "warm_median": round(statistics.median(warm), 2),
        },
        "reads": [one, four],
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
