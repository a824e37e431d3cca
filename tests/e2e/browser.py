"""A real headless Chromium (Debian's /usr/bin/chromium) driven through Playwright, for the pages users
open. Missing pieces fail the test with what to install; nothing is skipped."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("LIPSYNCD_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which(CHROMIUM)
    if found is None:
        message = f"{CHROMIUM} is missing: `make system-packages` installs Debian's chromium"
        pytest.fail(message, pytrace=False)
    return found


@contextmanager
def browser_page(tmp_path: Path, *, timezone: str = "UTC") -> Iterator[Any]:
    """A fresh profile and a page allowed to use the clipboard; `timezone` is the reader's local zone."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' installs it", pytrace=False)
    executable = chromium_path()
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir per test
            executable_path=executable,
            headless=True,
            args=FLAGS,
            timezone_id=timezone,
            locale="en-GB",
            viewport={"width": 900, "height": 640},
            device_scale_factor=1,
        )
        try:
            context.grant_permissions(["clipboard-read", "clipboard-write"])
            page = context.new_page()
            page.set_default_timeout(10_000)
            yield page
        finally:
            context.close()
