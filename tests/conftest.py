"""Shared fixtures: one embedded SeaweedFS for the whole session (tests/conftest_s3.py)."""

pytest_plugins = ["tests.conftest_s3"]
