"""`lipsyncd run`: both watchers as two child processes of one command (the quick start; under systemd
they are two units). Signals are passed on; if one child dies, the other is stopped too."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence

WATCHERS = ("render", "upload")


def run_both(base: Sequence[str], *, once: bool) -> int:
    if once:  # render what the inbox holds, then upload what that produced
        for name in WATCHERS:
            code = subprocess.run([*base, name, "--once"]).returncode
            if code != 0:
                return code
        return 0
    children = {name: subprocess.Popen([*base, name]) for name in WATCHERS}
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:  # SIGHUP only reloads the configuration
            stopping.append(signum)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while all(child.poll() is None for child in children.values()):
        time.sleep(0.5)
    if not stopping:  # one child died on its own: stop the other. Never a second SIGTERM to a child
        forward(signal.SIGTERM, None)  # already stopping: one that came while Python shut down would kill it
    codes = [child.wait() for child in children.values()]
    return next((code for code in codes if code != 0), 0)
