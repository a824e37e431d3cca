"""`make demo`: submit the bundled example (examples/demo/demo.yaml) the way a script would, render it
on the built-in defaults, and show where the results are. Run from the repository root."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from daemon.cli import main as lipsyncd
from daemon.config import Config
from daemon.store import JobStore

EXAMPLE = Path("examples/demo/demo.yaml")


def submit_example(example: Path = EXAMPLE, *, name: str = "demo", distribute: bool = False) -> list[str]:
    """The `lipsyncd submit` arguments for the example manifest (its media paths are relative to it)."""
    manifest = yaml.safe_load(example.read_text(encoding="utf-8"))
    folder = example.parent
    args = ["submit", str(folder / manifest["audio"]), *(str(folder / v) for v in manifest["videos"])]
    return [*args, "--name", name, *(["--distribute"] if distribute else [])]


def run() -> int:
    for step in (submit_example(), ["render", "--once"], ["status"]):
        print(f"$ lipsyncd {' '.join(step)}", flush=True)
        code = lipsyncd(step)
        if code != 0:
            return code
    store = JobStore(Config().state_dir)
    job = store.jobs()[-1]  # the one just rendered (a second `make demo` makes demo-2, and so on)
    store.close()
    links = Config().outputs_dir / job.id / "links.json"
    document = json.loads(links.read_text(encoding="utf-8"))
    for video in document["videos"]:
        print(f"rendered {links.parent / video['output']} ({video['status']}, {video['frames']} frames)")
    print(f"status and links: {links}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
