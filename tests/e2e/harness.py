"""A real lipsyncd process in a throw-away shared folder, and the waits a user would do."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
_RUNS = itertools.count(1)  # one log file per process started


@dataclass
class Share:
    """shared/ with inbox/, outputs/latest_batch/, a private state dir and a config file."""

    root: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "inbox" / "media").mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "paths": {
                "shared": str(self.root),
                "inbox": str(self.root / "inbox"),
                "outputs": str(self.root / "outputs" / "latest_batch"),
                "state": str(self.root.parent / f"{self.root.name}-state"),
                "models": str(self.root.parent / f"{self.root.name}-models"),
            },
            "inbox": {"settle_time": "1s", "rescan_interval": "2s"},
            "render": {"batch_size": 8},
            "logging": {"format": "json", "level": "info"},
            # SeaweedFS 4.48's filer waits out a fixed 15 s drain on SIGTERM; it survives SIGKILL, so tests
            # stop it after 1 s (test_embedded_s3 proves the clean stop with the default timeout)
            "storage": {"embedded_stop_timeout": "1s"},
        }
        for section, values in self.overrides.items():
            config.setdefault(section, {}).update(values)
        self.config = self.root.parent / f"{self.root.name}.yaml"
        self.config.write_text(yaml.safe_dump(config))

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs" / "latest_batch"

    @property
    def state(self) -> Path:
        return self.root.parent / f"{self.root.name}-state"

    def drop(self, name: str, manifest: dict[str, Any]) -> Path:
        """Write the manifest beside the inbox and rename it in: how a careful user or script drops one."""
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
        target = self.inbox / name
        os.rename(tmp, target)
        return target

    def links(self, job: str) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads((self.outputs / job / "links.json").read_text(encoding="utf-8"))
            return doc
        except FileNotFoundError:
            return None

    def lipsyncd(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon", "--config", str(self.config), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class Daemon:
    """`lipsyncd COMMAND` running in the background; its log goes to a file the test can show."""

    def __init__(self, share: Share, *command: str, new_session: bool = False) -> None:
        self.share = share
        self.log_path = share.root.parent / f"{share.root.name}-{command[0]}-{next(_RUNS)}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(share.config), *command],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,  # its own process group, as a terminal gives a command
        )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, daemon: Daemon | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited ({daemon.proc.returncode}) waiting for {what}:\n{daemon.output()[-4000:]}"
            )
        time.sleep(0.2)
    tail = daemon.output()[-4000:] if daemon else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def statuses(links: dict[str, Any] | None) -> list[str]:
    return [v["status"] for v in links["videos"]] if links else []
