"""The crash suite: real render and upload worker processes (3 + 2, leases of 3 s) killed with SIGKILL at
seeded moments, restarted each time, and now and then frozen past their lease and thawed (their late writes
must be refused); the invariants users rely on checked at the end (tests/e2e/crash.py has the driver).

The short run is part of the normal test command. The long run is behind a flag:
    pytest tests/e2e/test_crash_suite.py --crash-kills 300 [--crash-seed N] [--crash-storage embedded] -s
and prints the figures the README's Reliability section quotes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.distribute.embedded import EmbeddedS3, EmbeddedSettings
from tests.e2e.crash import REQUIRED, CrashReport, CrashRun, CrashSettings, Storage, external_storage


def embedded_storage(root: Path) -> Storage:
    """The daemon's own embedded SeaweedFS (killed with the upload watcher, restarted by the next one)."""
    state = root / "shared-state"
    return Storage(
        None, lambda: EmbeddedS3(state, EmbeddedSettings()).signing_client(), "lipsyncd", "renders/"
    )


def run_and_report(root: Path, storage: Storage, settings: CrashSettings) -> CrashReport:
    report = CrashRun(root, storage, settings).run()
    print("\n" + report.text() + "\nkills:\n" + report.kills_text())
    return report


def assert_survived(report: CrashReport) -> None:
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, "\n".join(failed) + "\n\n" + report.text()
    for role, stages in REQUIRED.items():
        hit = {s for k in report.kills if k.role == role for s in k.stages}
        assert set(stages) <= hit, f"{role} kills never landed in {set(stages) - hit}\n{report.text()}"
    # the pauses did their job: at least one claim was taken over from a frozen worker (and, checked
    # above, refused to it after the thaw)
    assert any(p.taken for p in report.pauses), report.text() + "\n" + report.kills_text()


@pytest.mark.timeout(480)  # 2-3 minutes; five worker processes on a busy 2-core box take longer
def test_short_seeded_crash_run(
    tmp_path: Path, embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str
) -> None:
    storage = external_storage(tmp_path, embedded_s3, s3_bucket, s3_prefix)
    report = run_and_report(tmp_path, storage, CrashSettings(seed=6, kills=18))
    assert len(report.kills) >= 17
    assert_survived(report)


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_long_crash_run(request: pytest.FixtureRequest, tmp_path: Path, s3_prefix: str) -> None:
    kills = request.config.getoption("--crash-kills")
    if not kills:
        pytest.skip("the long crash run needs --crash-kills N")
    if request.config.getoption("--crash-storage") == "embedded":
        storage = embedded_storage(tmp_path)
    else:  # the session's server, started only for this case
        server, bucket = request.getfixturevalue("embedded_s3"), request.getfixturevalue("s3_bucket")
        storage = external_storage(tmp_path, server, bucket, s3_prefix)
    settings = CrashSettings(seed=request.config.getoption("--crash-seed"), kills=kills, drain_s=600)
    assert_survived(run_and_report(tmp_path, storage, settings))
