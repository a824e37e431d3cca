"""Pytest plugin: ONE real embedded SeaweedFS for the whole test session.

Load it from tests/conftest.py with `pytest_plugins = ["tests.conftest_s3"]`. Fixtures:
  embedded_s3  (session)  the running EmbeddedS3; tests may kill() and start() it (same ports, data, keys)
  s3_client    (session)  a boto3 client with the server's keys (path style, no CRC headers)
  s3_bucket    (session)  the bucket name, already created
  s3_prefix    (function) a key prefix of its own for each test, so tests never see each other's objects
The server starts on first use (~4 s) and is killed at the end of the session: its data lives in a
pytest temp dir and is thrown away, so the ~15 s clean stop is not worth waiting for here (the clean
stop has its own test in tests/functional/test_embedded_s3.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3, EmbeddedSettings

TEST_BUCKET = "lipsyncd-test"


@pytest.fixture(scope="session")
def embedded_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    server = EmbeddedS3(tmp_path_factory.mktemp("s3state"), EmbeddedSettings(bucket=TEST_BUCKET))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def s3_client(embedded_s3: EmbeddedS3) -> Any:
    return embedded_s3.client()


@pytest.fixture(scope="session")
def s3_bucket(embedded_s3: EmbeddedS3) -> str:
    return embedded_s3.settings.bucket


@pytest.fixture
def s3_prefix(request: pytest.FixtureRequest) -> str:
    return "tests/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80] + "/"
