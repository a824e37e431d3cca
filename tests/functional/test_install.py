"""install-systemd / uninstall-systemd into a prefix (tmp_path), with the real unit and config files.

Creating the system user and running systemctl are never done by a test: under a prefix those steps
are skipped by design, and on "/" they are only planned (dry run) with a recording runner.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from daemon.ops.install import (
    DEFAULT_SHARE,
    Layout,
    install_systemd,
    render_unit,
    service_config,
    uninstall_systemd,
)

REPO = Path(__file__).resolve().parents[2]
UNITS = (
    "lipsyncd-api.service",
    "lipsyncd-render@.service",
    "lipsyncd-storage.service",
    "lipsyncd-upload.service",
    "lipsyncd-upload@.service",
    "lipsyncd.target",
)
WANTS = "etc/systemd/system/lipsyncd.target.wants"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Recorder:
    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> None:
        self.commands.append(list(argv))


def test_prefix_install_lays_out_folders_config_credentials_and_units(tmp_path: Path) -> None:
    run = Recorder()
    lines = install_systemd(tmp_path, run=run)
    assert run.commands == []  # no useradd, no systemctl under a prefix
    inbox = tmp_path / "srv/lipsyncd/inbox"
    assert mode(inbox) == 0o2770  # group-writable drop folder; setgid keeps the group on dropped files
    assert mode(tmp_path / "srv/lipsyncd/outputs/latest_batch") == 0o2750
    creds = tmp_path / "etc/lipsyncd/credentials"
    assert mode(creds) == 0o700
    assert mode(creds / "s3") == 0o600
    assert (creds / "s3").read_text() == ""
    assert "LoadCredential" in (creds / "README").read_text()
    assert (creds / "webhooks").is_dir()
    config = tmp_path / "etc/lipsyncd/lipsyncd.yaml"
    assert mode(config) == 0o640
    assert mode(config.parent) == 0o750
    for name in UNITS:
        assert (tmp_path / "etc/systemd/system" / name).read_text() == (REPO / "systemd" / name).read_text()
    assert any("systemctl enable --now lipsyncd.target" in line for line in lines)
    assert any(line.startswith("skipped creating user lipsyncd") for line in lines)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_installed_config_points_at_the_service_folders(tmp_path: Path) -> None:
    lines = install_systemd(tmp_path)
    data = yaml.safe_load((tmp_path / "etc/lipsyncd/lipsyncd.yaml").read_text())
    assert data["paths"] == {
        "shared": "/srv/lipsyncd",
        "inbox": "/srv/lipsyncd/inbox",
        "outputs": "/srv/lipsyncd/outputs/latest_batch",
        "state": "/var/lib/lipsyncd",
        "scratch": None,  # the default: /srv/lipsyncd/outputs/.lipsyncd-scratch, inside ReadWritePaths
        "models": "/var/lib/lipsyncd/models",
    }
    # links for other machines: the S3 API on every address and a fixed port, signed for this host's name
    fqdn = socket.getfqdn()
    assert {k: data["storage"][k] for k in ("embedded_listen", "embedded_port", "public_url")} == {
        "embedded_listen": "0.0.0.0",
        "embedded_port": 8333,
        "public_url": f"http://{fqdn}:8333",
    }
    assert any(line.startswith(f"links are signed for http://{fqdn}:8333: ") for line in lines)
    example = yaml.safe_load((REPO / "config/lipsyncd.example.yaml").read_text())
    for key in ("embedded_listen", "embedded_port", "public_url"):
        del data["storage"][key], example["storage"][key]
    assert {k: v for k, v in data.items() if k != "paths"} == {
        k: v for k, v in example.items() if k != "paths"
    }


def test_public_url_reaches_a_new_config_and_an_existing_one(tmp_path: Path) -> None:
    config_module = pytest.importorskip("daemon.config")
    lines = install_systemd(tmp_path, public_url="https://media.example.lan")
    path = tmp_path / "etc/lipsyncd/lipsyncd.yaml"
    storage = config_module.load_config(path, required=True).storage
    assert (storage.public_url, storage.embedded_listen) == ("https://media.example.lan", "0.0.0.0")
    assert "links are signed for https://media.example.lan: machines that can reach media.example.lan" in (
        "\n".join(lines)
    )
    path.write_text("paths:\n  shared: /data   # mine\nstorage:\n  bucket: ours\n")
    install_systemd(tmp_path)  # no --public-url: an existing config is left as it is
    assert path.read_text() == "paths:\n  shared: /data   # mine\nstorage:\n  bucket: ours\n"
    lines = install_systemd(tmp_path, public_url="http://127.0.0.1:8333")
    data = yaml.safe_load(path.read_text())
    assert data["paths"] == {"shared": "/data"}
    assert data["storage"]["bucket"] == "ours"
    assert data["storage"]["public_url"] == "http://127.0.0.1:8333"
    assert "# mine" in path.read_text()
    assert any("only this machine can open them" in line for line in lines)


def test_installed_config_is_accepted_by_the_daemon(tmp_path: Path) -> None:
    config_module = pytest.importorskip("daemon.config")
    install_systemd(tmp_path)
    config = config_module.load_config(tmp_path / "etc/lipsyncd/lipsyncd.yaml", required=True)
    assert config.inbox_dir == Path("/srv/lipsyncd/inbox")


def test_a_second_install_keeps_what_the_admin_changed(tmp_path: Path) -> None:
    install_systemd(tmp_path)
    config = tmp_path / "etc/lipsyncd/lipsyncd.yaml"
    s3 = tmp_path / "etc/lipsyncd/credentials/s3"
    config.write_text("paths:\n  shared: /data\n")
    s3.write_text("aws_access_key_id=AKID\naws_secret_access_key=SECRET\n")
    lines = install_systemd(tmp_path)
    assert config.read_text() == "paths:\n  shared: /data\n"
    assert "SECRET" in s3.read_text()
    assert "kept the existing /etc/lipsyncd/lipsyncd.yaml" in lines


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    lines = install_systemd(tmp_path, dry_run=True)
    assert list(tmp_path.iterdir()) == []
    assert "would write /etc/systemd/system/lipsyncd-render@.service (mode 0644)" in lines


def test_custom_user_share_and_binary_reach_the_units(tmp_path: Path) -> None:
    install_systemd(
        tmp_path, user="lsd", group="studio", share=Path("/data/lsd"), exec_start=Path("/usr/bin/lipsyncd")
    )
    unit = (tmp_path / "etc/systemd/system/lipsyncd-upload.service").read_text()
    assert "User=lsd\n" in unit
    assert "Group=studio\n" in unit
    assert "ReadWritePaths=/data/lsd/inbox /data/lsd/outputs\n" in unit
    assert "ExecStart=/usr/bin/lipsyncd upload --config /etc/lipsyncd/lipsyncd.yaml" in unit
    assert (tmp_path / "data/lsd/inbox").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root")
def test_owners_are_set_when_the_account_exists(tmp_path: Path) -> None:
    user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    install_systemd(tmp_path, user=user, group=group)
    inbox = (tmp_path / "srv/lipsyncd/inbox").stat()
    assert (inbox.st_uid, inbox.st_gid) == (pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
    assert stat.S_IMODE(inbox.st_mode) == 0o2770  # chown clears setgid; the mode is set after it
    config = (tmp_path / "etc/lipsyncd/lipsyncd.yaml").stat()
    assert (config.st_uid, config.st_gid) == (0, grp.getgrnam(group).gr_gid)  # root-owned, group-readable
    assert (tmp_path / "etc/lipsyncd/credentials").stat().st_uid == 0


def test_uninstall_removes_units_and_keeps_data(tmp_path: Path) -> None:
    install_systemd(tmp_path)
    (tmp_path / "srv/lipsyncd/inbox/job.yaml").write_text("audio: a.wav\n")
    lines = uninstall_systemd(tmp_path)
    assert not any((tmp_path / "etc/systemd/system" / name).exists() for name in UNITS)
    assert (tmp_path / "srv/lipsyncd/inbox/job.yaml").exists()
    assert (tmp_path / "etc/lipsyncd/lipsyncd.yaml").exists()
    assert lines[-1].startswith("kept /srv/lipsyncd, /var/lib/lipsyncd and /etc/lipsyncd")


def test_on_the_live_system_the_account_is_planned_first() -> None:
    """Dry run on "/": nothing is executed, the plan names the account steps (when missing here)."""
    run = Recorder()
    lines = install_systemd(
        Path("/"), user="lipsyncd-test-absent", group="lipsyncd-test-absent", dry_run=True, run=run
    )
    assert run.commands == []
    assert lines[:2] == [
        "would create system group lipsyncd-test-absent",
        "would create system user lipsyncd-test-absent",
    ]
    planned = uninstall_systemd(Path("/"), user="lipsyncd-test-absent", dry_run=True, run=run)
    assert run.commands == []
    assert "would remove /etc/systemd/system/lipsyncd.target" in planned


def _with_upload_workers(config: Path, count: object) -> None:
    data = yaml.safe_load(config.read_text())
    data["upload"]["workers"] = count
    config.write_text(yaml.safe_dump(data))


def _enabled(prefix: Path) -> dict[str, str]:
    """The links in lipsyncd.target.wants: name -> what it points at."""
    wants = prefix / WANTS
    return {p.name: os.readlink(p) for p in wants.iterdir()} if wants.is_dir() else {}


def test_upload_workers_beyond_the_first_are_enabled_as_template_instances(tmp_path: Path) -> None:
    """upload.workers N: instances 1 .. N-1 linked into lipsyncd.target.wants as `systemctl enable`
    would (worker 0 is lipsyncd-upload.service, which the target always wants); a smaller N later
    disables the ones beyond, and uninstall removes them all."""
    lines = install_systemd(tmp_path)
    assert _enabled(tmp_path) == {}  # the example config's upload.workers: 1
    assert "upload.workers is 1: lipsyncd-upload.service is the only upload worker" in lines
    config = tmp_path / "etc/lipsyncd/lipsyncd.yaml"
    _with_upload_workers(config, 3)
    template = "/etc/systemd/system/lipsyncd-upload@.service"
    assert any(
        line.startswith("would enable lipsyncd-upload@2.service")
        for line in install_systemd(tmp_path, dry_run=True)
    )
    assert _enabled(tmp_path) == {}  # a dry run links nothing
    lines = install_systemd(tmp_path)
    assert _enabled(tmp_path) == {
        "lipsyncd-upload@1.service": template,
        "lipsyncd-upload@2.service": template,
    }
    assert any(
        line.startswith("enable lipsyncd-upload@1.service (link /etc/systemd/system/") for line in lines
    )
    assert (tmp_path / WANTS.rsplit("/", 1)[0] / "lipsyncd-upload@.service").is_file()  # what the links name
    install_systemd(tmp_path)  # again: the same links, nothing left half-made
    assert sorted(p.name for p in (tmp_path / WANTS).iterdir()) == sorted(_enabled(tmp_path))
    _with_upload_workers(config, 2)
    lines = install_systemd(tmp_path)
    assert _enabled(tmp_path) == {"lipsyncd-upload@1.service": template}
    assert any(line.startswith("disable lipsyncd-upload@2.service (upload.workers is 2)") for line in lines)
    uninstall_systemd(tmp_path)
    assert _enabled(tmp_path) == {}


@pytest.mark.parametrize("value", [0, "two", True])
def test_a_bad_upload_workers_value_leaves_the_enabled_workers_alone(tmp_path: Path, value: object) -> None:
    install_systemd(tmp_path)
    config = tmp_path / "etc/lipsyncd/lipsyncd.yaml"
    _with_upload_workers(config, 2)
    install_systemd(tmp_path)
    _with_upload_workers(config, value)
    lines = install_systemd(tmp_path)
    assert _enabled(tmp_path) == {"lipsyncd-upload@1.service": "/etc/systemd/system/lipsyncd-upload@.service"}
    note = next(line for line in lines if line.startswith("left the upload workers as they were"))
    assert f"upload.workers is not a whole number of at least 1 (got {value!r})" in note
    assert "/etc/lipsyncd/lipsyncd.yaml" in note


def test_on_the_live_system_workers_beyond_the_count_are_stopped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dry run on "/" with systemd as PID 1 (pretended): an instance beyond upload.workers is unlinked
    and stopped; nothing is executed."""
    from daemon.ops import install

    monkeypatch.setattr(install, "systemd_running", lambda: True)
    layout = Layout(Path("/"), "lipsyncd", "lipsyncd", DEFAULT_SHARE)
    link = Path("/etc/systemd/system/lipsyncd.target.wants/lipsyncd-upload@4.service")
    run = Recorder()
    steps = install._disable_steps(layout, link, run, "upload.workers is 2")
    assert [s.description for s in steps] == [
        f"disable lipsyncd-upload@4.service (upload.workers is 2): remove {link}",
        "systemctl stop lipsyncd-upload@4.service",
    ]
    steps[1].action()  # type: ignore[misc]
    assert run.commands == [["systemctl", "stop", "lipsyncd-upload@4.service"]]


def test_service_config_without_an_example() -> None:
    text = service_config("logging:\n  level: info\n", Path("/s"))
    assert yaml.safe_load(text)["paths"]["inbox"] == "/s/inbox"


def test_render_unit_leaves_shipped_text_alone_by_default() -> None:
    text = (REPO / "systemd/lipsyncd-render@.service").read_text()
    assert render_unit(text, Layout(Path("/"), "lipsyncd", "lipsyncd", DEFAULT_SHARE), None) == text


def test_the_package_ships_every_unit_the_installer_writes() -> None:
    """An installed package finds the units in share/lipsyncd/systemd (find_source): each one the
    installer reads must be listed in setup.cfg's data_files."""
    from setuptools.config.setupcfg import read_configuration

    from daemon.ops.install import UNIT_NAMES

    shipped = dict(read_configuration(REPO / "setup.cfg")["options"]["data_files"])["share/lipsyncd/systemd"]
    assert sorted(Path(f).name for f in shipped if f.startswith("systemd/lipsyncd")) == sorted(UNIT_NAMES)
    assert sorted(UNIT_NAMES) == sorted(p.name for p in (REPO / "systemd").glob("lipsyncd*"))
