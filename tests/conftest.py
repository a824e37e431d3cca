"""Shared fixtures: one embedded SeaweedFS for the whole session (tests/conftest_s3.py)."""

import pytest

pytest_plugins = ["tests.conftest_s3"]


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
