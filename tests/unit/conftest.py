"""Unit tests call `daemon.cli.main` in-process, which configures logging onto pytest's captured stream;
put the previous configuration back afterwards, or later tests in the session log to a closed file."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from daemon.ops.logging import _PROCESS_FIELDS


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    saved = structlog.get_config()
    fields = dict(_PROCESS_FIELDS)  # main() binds HOST for the process
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    _PROCESS_FIELDS.clear()
    _PROCESS_FIELDS.update(fields)
