"""Shared fixtures: one embedded SeaweedFS for the whole session (tests/conftest_s3.py), and a check that
no test leaves a thread running behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.conftest_s3", "tests.conftest_pg"]

# a thread told to stop may still be finishing its last poll or request
LEAK_GRACE_S = 5.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lipsyncd crash suite")
    group.addoption("--crash-kills", type=int, default=0, help="run the long crash run with N kills")
    group.addoption("--crash-seed", type=int, default=2026, help="seed of the long crash run")
    group.addoption(
        "--crash-storage",
        choices=("external", "embedded"),
        default="external",
        help="long crash run storage: the session SeaweedFS as an endpoint, or the daemon's embedded one",
    )


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    # a _DummyThread stands for a thread started outside Python (a C library's callback); it never ends
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not isinstance(t, threading._DummyThread)
    ]


def _describe(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    what = getattr(target, "__qualname__", None) or type(thread).__qualname__
    return f"{thread.name!r} ({what}, {'daemon' if thread.daemon else 'non-daemon'})"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (autouse, so it is set up before and torn down after the
    test's other function fixtures: their own threads are stopped by then). Wider-scoped fixtures start
    theirs before the snapshot."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    leaked = _new_threads(before)
    while leaked and time.monotonic() < deadline:
        leaked[0].join(timeout=max(0.0, deadline - time.monotonic()))
        leaked = _new_threads(before)
    if leaked:
        pytest.fail(
            f"the test left {len(leaked)} thread(s) running after {LEAK_GRACE_S:.0f} s: "
            + ", ".join(_describe(t) for t in leaked)
            + "; stop and join them in the test or its fixture",
            pytrace=False,
        )
