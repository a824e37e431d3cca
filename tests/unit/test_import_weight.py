"""Opening the job store must not pull in the S3 client libraries.

Every command that reads the store (status, submit, the CLI) pays for what daemon.store imports; boto3
alone costs about 0.3 s. The store persists upload journal types, which live in daemon.upload_journal
for that reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("boto3", "botocore", "s3transfer")
ROOT = Path(__file__).resolve().parents[2]


def loaded_after(module: str) -> list[str]:
    """Top-level packages from HEAVY that a fresh interpreter has loaded after importing module."""
    code = (
        f"import sys, {module}; "
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_store_loads_no_s3_library() -> None:
    assert loaded_after("daemon.store") == []


def test_the_check_sees_an_s3_library_when_one_is_loaded() -> None:
    # the same probe on the uploader, which does need boto3: proves the check can fail
    assert "botocore" in loaded_after("daemon.distribute.uploader")
