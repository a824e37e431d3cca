"""The command line's own promises: --version, --config before or after the command, and `links` and
`status` agreeing that an unknown job is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon import __version__
from daemon.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, main


def config_file(tmp_path: Path, **extra: object) -> Path:
    paths = {name: str(tmp_path / name) for name in ("shared", "state", "models")}
    path = tmp_path / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump({"paths": paths, **extra}))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"lipsyncd {__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_read_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    good, bad = config_file(tmp_path), tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"render": {"batch_size": -1}}))
    for path, code in ((good, EXIT_OK), (bad, EXIT_CONFIG)):
        args = ["--config", str(path), "check-config"]
        assert main(args if where == "before" else [*args[2:], *args[:2]]) == code
    out, err = capsys.readouterr()
    assert str(good) in out and "render.batch_size" in err


def test_config_after_a_nested_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "list", "--config", str(config_file(tmp_path))]) == EXIT_OK
    assert "baseline" in capsys.readouterr().out


def test_links_and_status_agree_on_an_unknown_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_file(tmp_path))
    assert main(["--config", config, "status", "no-such-job"]) == EXIT_FAILED
    assert main(["--config", config, "links", "no-such-job"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("no job named 'no-such-job'") == 2
    assert main(["--config", config, "links"]) == EXIT_OK  # no job named: nothing yet is no error
