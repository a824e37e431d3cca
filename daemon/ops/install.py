"""`lipsyncd install-systemd` / `uninstall-systemd`: user, folders, config, credential places, units.

Everything is planned first as a list of Steps, then run (or only described, with dry_run). Under a
prefix other than "/" (packaging, tests) nothing touches the running system: no useradd, no
systemctl, and owners are set only when the user exists on this machine.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from daemon.config import parse_base_url
from daemon.files import write_atomic

Runner = Callable[[Sequence[str]], None]
UNIT_NAMES = (
    "lipsyncd-api.service",  # the HTTP API: installed, enabled by the operator (docs/api.md)
    "lipsyncd-render@.service",  # a template: instance = render worker slot (lipsyncd-render@0 ...)
    "lipsyncd-storage.service",
    "lipsyncd-upload.service",  # upload worker 0
    "lipsyncd-upload@.service",  # a template: upload workers 1, 2 ... (lipsyncd-upload@1 ...)
    "lipsyncd.target",
)
UPLOAD_TEMPLATE = "lipsyncd-upload@.service"
TARGET_WANTS = "lipsyncd.target.wants"  # where `systemctl enable` links units WantedBy=lipsyncd.target
EMBEDDED_PORT = 8333  # SeaweedFS's usual S3 port: fixed, so the links' public URL can name it
INSTALLED_BINARY = "/opt/lipsyncd/venv/bin/lipsyncd"
DEFAULT_SHARE = Path("/srv/lipsyncd")
STATE_DIR = Path("/var/lib/lipsyncd")
CONFIG_DIR = Path("/etc/lipsyncd")
UNIT_DIR = Path("/etc/systemd/system")
CREDENTIALS_README = """\
Secrets for lipsyncd, read by systemd (as root) and handed to each upload unit (lipsyncd-upload.service,
lipsyncd-upload@N.service) through LoadCredential=; each finds them in its own $CREDENTIALS_DIRECTORY
(/run/credentials/lipsyncd-upload.service/, /run/credentials/lipsyncd-upload@1.service/, ...).
Keep this folder root-only (0700) and the files 0600. Never put secrets in lipsyncd.yaml or the units.

s3          S3 access keys as KEY=VALUE lines:
                aws_access_key_id=...
                aws_secret_access_key=...
            Leave it empty for the embedded storage (it makes its own keys) or boto3's usual chain.
webhooks/   one file per webhook that signs its requests (DingTalk, Feishu), named like the webhook in
            lipsyncd.yaml, holding only the secret. It reaches the service as credential webhook_NAME;
            name it with the variable, which every upload worker resolves to its own folder:
                webhooks: {ops-ding: {secret_file: $CREDENTIALS_DIRECTORY/webhook_ops-ding}}
"""


@dataclass(frozen=True)
class Step:
    """One thing the installer does; `action` is None for a step that is only reported."""

    description: str
    action: Callable[[], None] | None


@dataclass(frozen=True)
class Layout:
    prefix: Path
    user: str
    group: str
    share: Path

    def at(self, path: Path) -> Path:
        """An absolute system path, placed under the prefix."""
        return self.prefix / path.relative_to("/")

    @property
    def live(self) -> bool:
        return self.prefix.resolve() == Path("/")


def run_command(argv: Sequence[str]) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, text=True)


def install_systemd(
    prefix: Path = Path("/"),
    *,
    user: str = "lipsyncd",
    group: str = "lipsyncd",
    share: Path = DEFAULT_SHARE,
    dry_run: bool = False,
    exec_start: Path | None = None,
    source: Path | None = None,
    run: Runner = run_command,
    public_url: str | None = None,
) -> list[str]:
    """Install the service; returns the lines to print (what was done, then the next steps).

    exec_start: the lipsyncd binary the units start (default /opt/lipsyncd/venv/bin/lipsyncd).
    public_url: the address people open links at (storage.public_url). A new config gets it, or
    default_public_url(); an existing config is changed only when it is given.
    source: the folder holding systemd/ and config/ (default: found next to this package).
    run: how commands (groupadd, useradd, systemctl) are run; tests pass a recorder.
    """
    layout = Layout(prefix, user, group, share)
    steps = _install_steps(layout, source or find_source(), exec_start, run, public_url)
    return _execute(steps, dry_run) + next_steps(layout, exec_start)


def uninstall_systemd(
    prefix: Path = Path("/"),
    *,
    user: str = "lipsyncd",
    group: str = "lipsyncd",
    share: Path = DEFAULT_SHARE,
    dry_run: bool = False,
    run: Runner = run_command,
) -> list[str]:
    """Stop and remove the units and the user; keeps the share, the state dir and /etc/lipsyncd."""
    layout = Layout(prefix, user, group, share)
    kept = f"kept {share}, {STATE_DIR} and {CONFIG_DIR} (user data, job store, config, secrets)"
    return [*_execute(_uninstall_steps(layout, run), dry_run), kept]


def _execute(steps: list[Step], dry_run: bool) -> list[str]:
    lines = []
    for step in steps:
        if step.action is not None and not dry_run:
            step.action()
        lines.append(f"would {step.description}" if dry_run and step.action else step.description)
    return lines


def find_source() -> Path:
    """The folder with systemd/ and config/: the source tree, or the package's share/lipsyncd."""
    for candidate in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "lipsyncd"):
        if (candidate / "systemd" / UNIT_NAMES[0]).is_file():
            return candidate
    raise FileNotFoundError(
        "cannot find the lipsyncd unit files (systemd/lipsyncd-render@.service) next to the package or in "
        f"{Path(sys.prefix) / 'share' / 'lipsyncd'}: reinstall lipsyncd, or pass the source folder"
    )


def _install_steps(
    layout: Layout, source: Path, exec_start: Path | None, run: Runner, public_url: str | None
) -> list[Step]:
    return [
        *_account_steps(layout, run),
        *_share_steps(layout),
        *_config_steps(layout, source, public_url),
        *_credential_steps(layout),
        *_unit_steps(layout, source, exec_start),
        *_upload_worker_steps(layout, source, run),
        *_reload_steps(layout, run),
    ]


def _account_steps(layout: Layout, run: Runner) -> list[Step]:
    if not layout.live:
        note = f"skipped creating user {layout.user} (installing under {layout.prefix}); owners are set only"
        return [Step(f"{note} where user {layout.user} and group {layout.group} exist", None)]
    steps = []
    if not _group_exists(layout.group):
        groupadd = ["groupadd", "--system", layout.group]
        steps.append(Step(f"create system group {layout.group}", lambda: run(groupadd)))
    if not _user_exists(layout.user):
        steps.append(Step(f"create system user {layout.user}", lambda: run(_useradd(layout))))
    return steps or [Step(f"user {layout.user} and group {layout.group} already exist", None)]


def _useradd(layout: Layout) -> list[str]:
    return [
        "useradd", "--system", "--gid", layout.group, "--home-dir", str(STATE_DIR), "--no-create-home",
        "--shell", "/usr/sbin/nologin", "--comment", "lipsyncd daemon", layout.user,
    ]  # fmt: skip


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _share_steps(layout: Layout) -> list[Step]:
    # setgid: files dropped into the inbox belong to the group, so the daemon can read and move them.
    folders = [
        (layout.share, 0o755, "the share"),
        (layout.share / "inbox", 0o2770, "the inbox, writable by group " + layout.group),
        (layout.share / "outputs", 0o2750, "the outputs, readable by group " + layout.group),
        (layout.share / "outputs" / "latest_batch", 0o2750, "outputs/latest_batch"),
    ]
    owner = (layout.user, layout.group)
    return [_folder_step(layout, path, mode, what, owner) for path, mode, what in folders]


def _folder_step(layout: Layout, path: Path, mode: int, what: str, owner: tuple[str, str]) -> Step:
    target = layout.at(path)

    def make() -> None:
        target.mkdir(parents=True, exist_ok=True)
        _chown(target, *owner)
        target.chmod(mode)  # after chown, which clears setgid

    return Step(f"make {path} ({what}, mode {mode:04o})", make)


def _chown(path: Path, user: str, group: str) -> None:
    """Set owners when they exist here and we may (root); a prefix install on a build host may not."""
    if os.geteuid() != 0 or not (_user_exists(user) and _group_exists(group)):
        return
    os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)


def _config_steps(layout: Layout, source: Path, public_url: str | None) -> list[Step]:
    config = CONFIG_DIR / "lipsyncd.yaml"
    steps = [
        _folder_step(layout, CONFIG_DIR, 0o750, "configuration", ("root", layout.group)),
        _file_step(layout, CONFIG_DIR / "README.systemd.md", _read(source / "systemd" / "README.md"), 0o644),
    ]
    existing = layout.at(config)
    if existing.exists() and public_url is None:
        return [*steps, Step(f"kept the existing {config}", None)]
    url = parse_base_url(public_url or default_public_url())
    if existing.exists():
        text = set_keys(existing.read_text(encoding="utf-8"), "storage", link_keys(url))
        steps.append(Step(f"kept the existing {config}, setting storage.public_url in it", None))
    else:
        text = service_config(_example_config(source), layout.share, url)
    writes = _file_step(layout, config, text, 0o640, owner=("root", layout.group))
    return [*steps, writes, Step(links_line(url), None)]


def default_public_url() -> str:
    """This host's fully qualified name and the embedded storage's fixed port."""
    return f"http://{socket.getfqdn()}:{EMBEDDED_PORT}"


def link_keys(public_url: str) -> dict[str, str]:
    """The storage keys that make links work for other machines: the S3 API on every address, on a
    fixed port, and links signed for the public URL."""
    return {"embedded_port": str(EMBEDDED_PORT), "embedded_listen": "0.0.0.0", "public_url": public_url}


def links_line(public_url: str) -> str:
    from daemon.distribute.reach import is_loopback

    host = urlsplit(public_url).hostname or public_url
    if is_loopback(host):
        return f"links are signed for {public_url}: only this machine can open them (pass --public-url)"
    return f"links are signed for {public_url}: machines that can reach {host} can open them"


def _file_step(
    layout: Layout, path: Path, text: str, mode: int, *, owner: tuple[str, str] = ("root", "root")
) -> Step:
    target = layout.at(path)

    def write() -> None:
        write_atomic(target, text, mode=mode)
        _chown(target, *owner)

    return Step(f"write {path} (mode {mode:04o})", write)


def _example_config(source: Path) -> str:
    example = source / "config" / "lipsyncd.example.yaml"
    return example.read_text() if example.is_file() else "paths:\n"


def service_config(example: str, share: Path, public_url: str | None = None) -> str:
    """The example configuration with the paths section pointed at the service's folders, and (given a
    public URL) the storage section serving links to other machines."""
    paths = {
        "shared": share,
        "inbox": share / "inbox",
        "outputs": share / "outputs" / "latest_batch",
        "state": STATE_DIR,
        "models": STATE_DIR / "models",
    }
    text = set_keys(example, "paths", {key: str(value) for key, value in paths.items()})
    return set_keys(text, "storage", link_keys(public_url)) if public_url else text


def set_keys(text: str, section: str, values: dict[str, str]) -> str:
    """Set keys of a top-level YAML section in place, keeping comments; add what is missing."""
    match = re.search(rf"(?m)^{section}:[ \t]*(#.*)?\n", text)
    if match is None:
        return text + f"\n{section}:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items())
    block, tail = _split_section(text[match.end() :])
    for key, value in values.items():
        block = _set_key(block, key, value)
    return text[: match.end()] + block + tail


def _set_key(block: str, key: str, value: str) -> str:
    """Replace the value of `  key:` in a section, keeping its comment in place; append the key if absent."""

    def replace(match: re.Match[str]) -> str:
        width = len(match.group(2)) + len(match.group(3))  # keep the comment's column when there is room
        return match.group(1) + value.ljust(width - 1) + (" " if match.group(3) else "")

    new, count = re.subn(rf"(?m)^(  {key}:[ \t]*)(\S+)([ \t]*)", replace, block)
    return new if count else block + f"  {key}: {value}\n"


def _split_section(text: str) -> tuple[str, str]:
    """The indented lines of a YAML section, and everything after them."""
    match = re.search(r"(?m)^\S", text)
    return (text, "") if match is None else (text[: match.start()], text[match.start() :])


def _credential_steps(layout: Layout) -> list[Step]:
    folder = CONFIG_DIR / "credentials"
    steps = [
        _folder_step(layout, folder, 0o700, "secrets, root only", ("root", "root")),
        _folder_step(layout, folder / "webhooks", 0o700, "webhook secrets", ("root", "root")),
        _file_step(layout, folder / "README", CREDENTIALS_README, 0o600),
    ]
    s3 = folder / "s3"
    if layout.at(s3).exists():
        return [*steps, Step(f"kept the existing {s3}", None)]
    return [*steps, _file_step(layout, s3, "", 0o600)]  # LoadCredential= fails on a missing file


def render_unit(text: str, layout: Layout, exec_start: Path | None) -> str:
    """A shipped unit adjusted to this install's user, group, share and binary."""
    text = re.sub(r"(?m)^User=.*$", f"User={layout.user}", text)
    text = re.sub(r"(?m)^Group=.*$", f"Group={layout.group}", text)
    text = text.replace(str(DEFAULT_SHARE) + "/", str(layout.share) + "/")
    return text.replace(INSTALLED_BINARY, str(exec_start)) if exec_start else text


def _unit_steps(layout: Layout, source: Path, exec_start: Path | None) -> list[Step]:
    texts = {name: render_unit(_read(source / "systemd" / name), layout, exec_start) for name in UNIT_NAMES}
    return [_file_step(layout, UNIT_DIR / name, text, 0o644) for name, text in texts.items()]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def upload_workers(config_text: str) -> int:
    """upload.workers in a configuration's text (1 when absent); ValueError when it is not a count."""
    try:
        data = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML ({exc})") from None
    section = data.get("upload") if isinstance(data, dict) else None
    value = section.get("workers", 1) if isinstance(section, dict) else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"upload.workers is not a whole number of at least 1 (got {value!r})")
    return value


def _upload_worker_steps(layout: Layout, source: Path, run: Runner) -> list[Step]:
    """Enable upload workers 1 .. upload.workers-1 as instances of the template, as `systemctl enable`
    does (a link in lipsyncd.target.wants, so the target starts them); disable the ones beyond. Worker 0
    is lipsyncd-upload.service, which the target always starts."""
    config = CONFIG_DIR / "lipsyncd.yaml"
    existing = layout.at(config)
    text = existing.read_text(encoding="utf-8") if existing.exists() else _example_config(source)
    try:
        count = upload_workers(text)
    except ValueError as exc:
        return [
            Step(f"left the upload workers as they were: {config}: {exc}; fix it and install again", None)
        ]
    wants = UNIT_DIR / TARGET_WANTS
    steps = [_enable_step(layout, wants / _upload_instance(slot)) for slot in range(1, count)]
    for link in sorted(layout.at(wants).glob("lipsyncd-upload@*.service")):
        slot = link.name.removeprefix("lipsyncd-upload@").removesuffix(".service")
        if not (slot.isdigit() and 0 < int(slot) < count):
            steps += _disable_steps(layout, wants / link.name, run, f"upload.workers is {count}")
    return steps or [Step("upload.workers is 1: lipsyncd-upload.service is the only upload worker", None)]


def _upload_instance(slot: int) -> str:
    return UPLOAD_TEMPLATE.replace("@", f"@{slot}")


def _enable_step(layout: Layout, link: Path) -> Step:
    """The link `systemctl enable` makes, made here so a prefix install gets it too (absolute, as systemd
    writes it: it names the template's installed path, not the prefix)."""
    target = UNIT_DIR / UPLOAD_TEMPLATE

    def enable() -> None:
        path = layout.at(link)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() and os.readlink(path) == str(target):
            return
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.unlink(missing_ok=True)
        os.symlink(target, temporary)
        temporary.replace(path)  # atomic: the old link or the new one, never none

    return Step(f"enable {link.name} (link {link} -> {target})", enable)


def _disable_steps(layout: Layout, link: Path, run: Runner, why: str) -> list[Step]:
    steps = [
        Step(f"disable {link.name} ({why}): remove {link}", lambda: layout.at(link).unlink(missing_ok=True))
    ]
    if layout.live and systemd_running():
        steps.append(Step(f"systemctl stop {link.name}", lambda: run(["systemctl", "stop", link.name])))
    return steps


def systemd_running() -> bool:
    """sd_booted(3): PID 1 is systemd exactly when /run/systemd/system/ exists."""
    return Path("/run/systemd/system").is_dir()


def _reload_steps(layout: Layout, run: Runner) -> list[Step]:
    if not layout.live or not systemd_running():
        return [
            Step("skipped systemctl daemon-reload: systemd is not PID 1 (or this is a prefix install)", None)
        ]
    return [Step("systemctl daemon-reload", lambda: run(["systemctl", "daemon-reload"]))]


def next_steps(layout: Layout, binary: Path | None = None) -> list[str]:
    config = CONFIG_DIR / "lipsyncd.yaml"
    binary = binary or Path(INSTALLED_BINARY)
    return [
        "",
        "Next steps:",
        f"  1. Review {config} (storage, webhooks, render.providers).",
        f"  2. S3 keys, if you use external storage: {CONFIG_DIR}/credentials/s3 (see the README there).",
        f"  3. Let people drop jobs: usermod -aG {layout.group} USER (they write to {layout.share}/inbox).",
        f"  4. Check the configuration: {binary} check-config --config {config}",
        "  5. Start storage and both watchers now and at boot: systemctl enable --now lipsyncd.target",
        "  6. Follow them: journalctl -f -u 'lipsyncd-*'   (one job: add JOB=NAME)",
        f"  7. Who can open the links: {binary} doctor --config {config}   (line 'links')",
        f"  8. Optional, the HTTP API: {binary} api token add NAME --can submit,read "
        f"--config {config}, then systemctl enable --now lipsyncd-api.service",
    ]


def _uninstall_steps(layout: Layout, run: Runner) -> list[Step]:
    steps: list[Step] = []
    if layout.live and systemd_running():
        steps.append(
            Step("systemctl disable --now lipsyncd.target and its services", lambda: run(_disable()))
        )
    steps += [_remove_step(layout, UNIT_DIR / name) for name in UNIT_NAMES]
    wants = UNIT_DIR / TARGET_WANTS
    steps += [_remove_step(layout, wants / link.name) for link in sorted(layout.at(wants).glob("lipsyncd-*"))]
    steps += _reload_steps(layout, run)
    if not layout.live:
        return [*steps, Step(f"skipped removing user {layout.user}: installing under {layout.prefix}", None)]
    if _user_exists(layout.user):
        steps.append(Step(f"remove user {layout.user}", lambda: run(["userdel", layout.user])))
    return steps


def _disable() -> list[str]:
    return ["systemctl", "disable", "--now", *UNIT_NAMES]


def _remove_step(layout: Layout, path: Path) -> Step:
    return Step(f"remove {path}", lambda: layout.at(path).unlink(missing_ok=True))
