"""`make demo`: the main job on the embedded defaults, run from the repository root.

1. Submit the bundled example (examples/demo/demo.yaml) the way a script would and render it with the
   built-in model: the video stays in outputs/latest_batch/demo*/.
2. Submit it again with distribution on, render it, upload it to the embedded S3 server, and download
   the link from links.json to show the bytes are the rendered ones.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from daemon.cli import main as lipsyncd
from daemon.config import Config
from daemon.store import JobStore

EXAMPLE = Path("examples/demo/demo.yaml")


def submit_example(example: Path = EXAMPLE, *, name: str, distribute: bool = False) -> list[str]:
    """The `lipsyncd submit` arguments for the example manifest (its media paths are relative to it)."""
    manifest = yaml.safe_load(example.read_text(encoding="utf-8"))
    folder = example.parent
    args = ["submit", str(folder / manifest["audio"]), *(str(folder / v) for v in manifest["videos"])]
    return [*args, "--name", name, *(["--distribute"] if distribute else [])]


def step(args: list[str]) -> None:
    print(f"\n$ lipsyncd {' '.join(args)}", flush=True)
    code = lipsyncd(args)
    if code != 0:
        raise SystemExit(code)


def last_job(config: Config) -> dict[str, Any]:
    store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
    job = store.jobs()[-1]  # the one just processed (a second `make demo` makes demo-2, and so on)
    store.close()
    links: dict[str, Any] = json.loads(
        (config.outputs_dir / job.id / "links.json").read_text(encoding="utf-8")
    )
    return links


def upload_and_check(config: Config) -> None:
    """What `lipsyncd upload` does, until idle, then fetch each new link while the server still runs."""
    from daemon.app import UploadDaemon
    from daemon.distribute.reach import reach
    from daemon.ops.runtime import ServiceRuntime
    from daemon.ops.systemd import Notifier

    listen = config.storage.endpoint_url or f"embedded SeaweedFS on {config.storage.embedded_listen}"
    print(f"\n$ lipsyncd upload --once   ({listen})", flush=True)
    print(reach(config).sentence(), flush=True)
    daemon = UploadDaemon.build(config, ServiceRuntime(Notifier(None), threading.Event()))
    try:
        daemon.recover()
        daemon.watcher.run_until_idle()
        for video in last_job(config)["videos"]:
            with urllib.request.urlopen(video["url"], timeout=30) as response:  # noqa: S310 - our own link
                body = response.read()
            same = hashlib.sha256(body).hexdigest() == video["sha256"]
            print(
                f"link for {video['output']}: {len(body)} bytes downloaded, sha256 matches the render: {same}"
            )
            print(f"  {video['url'][:100]}...")
    finally:
        daemon.close()


def run() -> int:
    config = Config()
    step(submit_example(name="demo"))
    step(["render", "--once"])
    kept = last_job(config)
    step(submit_example(name="demo-shared", distribute=True))
    step(["render", "--once"])
    upload_and_check(config)
    step(["status"])
    for video in kept["videos"]:
        print(f"\nrendered: {config.outputs_dir / kept['job'] / video['output']} ({video['frames']} frames)")
    print(f"status and links: {config.outputs_dir}/*/links.json")
    return 0


if __name__ == "__main__":
    sys.exit(run())
