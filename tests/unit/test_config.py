"""Configuration: the example documents every key, and errors name the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from daemon.config import (
    Config,
    ConfigError,
    WebhookConfig,
    config_path,
    credential_path,
    load_config,
    parse_duration,
    parse_size,
    with_credentials,
)

EXAMPLE = Path(__file__).parents[2] / "config" / "lipsyncd.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lipsyncd.yaml"
    path.write_text(text)
    return path


def test_example_loads_and_equals_the_defaults() -> None:
    config = load_config(EXAMPLE, required=True)
    assert dataclasses.replace(config, source=None) == Config()


def test_example_documents_every_key() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    for section in dataclasses.fields(Config):
        if section.name in ("source", "webhooks"):
            continue
        documented = set(example[section.name])
        declared = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert documented == declared, section.name
    commented = EXAMPLE.read_text()
    for key in (f.name for f in dataclasses.fields(WebhookConfig)):
        assert f"#    {key}:" in commented


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yaml") == Config()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml", required=True)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("render:\n  batch_sise: 8\n", "unknown key 'render.batch_sise'"),
        ("render:\n  batch_size: -1\n", "key 'render.batch_size'"),
        (
            "render:\n  preset: veryfst\n",
            "key 'render.preset': expected one of ultrafast, superfast, veryfast",
        ),
        ("inbox:\n  settle_time: soon\n", "key 'inbox.settle_time'"),
        ("render:\n  avatar_cache_size: -5\n", "key 'render.avatar_cache_size': a size cannot be negative"),
        ("render:\n  avatar_cache_size: lots\n", "key 'render.avatar_cache_size': expected a size"),
        ("upload:\n  part_size: 1MiB\n", "key 'upload.part_size'"),
        ("links:\n  default_ttl: 8d\n", "key 'links.default_ttl'"),
        ("links:\n  upload_page: 'yes'\n", "key 'links.upload_page'"),
        (
            "render:\n  faceless_videos: skip\n",
            "key 'render.faceless_videos': expected one of fail, pass_through",
        ),
        ("render:\n  faceless_warning_share: 50\n", "key 'render.faceless_warning_share': expected a share"),
        ("render: 3\n", "'render' must be a mapping"),
        ("webhooks:\n  ops:\n    kind: slack\n    url: http://x\n", "key 'webhooks.ops.kind'"),
        ("paths:\n  inbox: [a]\n", "key 'paths.inbox'"),
        ("render: {model: [1\n", "not valid YAML"),
        ("storage:\n  embedded_listen: media.lan\n", "key 'storage.embedded_listen': expected an IP address"),
        ("storage:\n  public_url: media.lan:8333\n", "key 'storage.public_url': expected a URL like"),
        ("storage:\n  public_url: http://h:8333/videos\n", "key 'storage.public_url': expected only scheme"),
        ("storage:\n  public_url: http://h:port\n", "key 'storage.public_url': the port"),
        ("store:\n  busy_timeout: 0s\n", "key 'store.busy_timeout': expected a duration above zero"),
        ("store:\n  busy_timeout: forever\n", "key 'store.busy_timeout': expected a duration"),
        ("store:\n  url: mysql://db/x\n", "key 'store.url': expected a URL like postgresql://"),
        ("store:\n  url: postgresql://u:hunter2@db/x\n", "key 'store.url': the URL holds a password"),
        ("store:\n  url: postgresql://db/x?password=hunter2\n", "PGPASSFILE, in the PGPASSWORD"),
        ("service:\n  host_name: 'a:b'\n", "key 'service.host_name': expected a host name"),
        ("service:\n  host_name: ''\n", "key 'service.host_name': expected a host name"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert str(caught.value).startswith(str(tmp_path / "lipsyncd.yaml"))
    assert words in str(caught.value)


def test_values_are_parsed(tmp_path: Path) -> None:
    text = "inbox: {settle_time: 500ms}\nupload: {part_size: 16MiB}\nwebhooks: {ops: {kind: dingtalk, url: 'https://x'}}\n"
    config = load_config(write(tmp_path, text))
    assert config.inbox.settle_time == 0.5
    assert Config().store.busy_timeout == 30.0
    assert load_config(write(tmp_path, "store: {busy_timeout: 2s}\n")).store.busy_timeout == 2.0
    assert Config().store.url is None
    url = "postgresql://lipsyncd@db.lan:5432/ledger?sslmode=require"
    assert load_config(write(tmp_path, f"store: {{url: '{url}'}}\n")).store.url == url
    assert config.upload.part_size == 16 * 2**20
    assert config.webhooks["ops"].kind == "dingtalk"
    assert Config().render.avatar_cache_size == 2 * 10**9
    bounded = load_config(write(tmp_path, "render: {avatar_cache_size: 512MiB}\n"))
    assert bounded.render.avatar_cache_size == 2**29


def test_config_path_precedence() -> None:
    assert config_path("a.yaml", {"LIPSYNCD_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert config_path(None, {"LIPSYNCD_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert config_path(None, {}) == Path("config/lipsyncd.yaml")


def test_parsers() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration(5) == 5
    assert parse_duration("1.5m") == 90
    assert parse_size("8MiB") == 8 * 2**20
    assert parse_size("5MB") == 5_000_000
    for bad in ("-1s", "tomorrow", True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_link_addresses_are_parsed(tmp_path: Path) -> None:
    text = "storage: {embedded_listen: 0.0.0.0, public_url: 'https://media.example.lan:8333/'}\n"
    storage = load_config(write(tmp_path, text)).storage
    assert (storage.embedded_listen, storage.public_url) == ("0.0.0.0", "https://media.example.lan:8333")
    assert Config().storage.embedded_listen == "127.0.0.1"
    assert Config().storage.public_url is None
    ipv6 = load_config(write(tmp_path, "storage: {embedded_listen: '::', public_url: 'http://[::1]:9'}\n"))
    assert ipv6.storage.embedded_listen == "::"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Before: only the first problem, so fixing a file took one round per mistake."""
    text = (
        "render:\n  batch_size: -1\n  preset: veryfst\n  colour: red\n"
        "inbox: {settle_time: soon}\nlinks: {default_ttl: 8d}\nlogging: 3\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    lines = str(caught.value).splitlines()
    wanted = ["render.batch_size", "render.preset", "render.colour", "inbox.settle_time", "links.default_ttl",
              "'logging' must be a mapping"]  # fmt: skip
    assert len(lines) == len(wanted)
    assert all(line.startswith(str(tmp_path / "lipsyncd.yaml")) for line in lines)
    assert all(sum(key in line for line in lines) == 1 for key in wanted), lines


def test_effective_configuration_redacts_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli import EXIT_OK, main

    text = (
        "render: {batch_size: 4}\n"
        "storage: {endpoint_url: 'https://alice:s3cret@s3.example.com'}\n"
        "webhooks: {ops: {kind: json, url: 'https://hooks.example.com/T0KEN'}}\n"
    )
    assert main(["check-config", "--print", "--config", str(write(tmp_path, text))]) == EXIT_OK
    out = capsys.readouterr().out
    printed = yaml.safe_load(out.split("\n", 1)[1])
    assert printed["render"]["batch_size"] == 4
    assert printed["render"]["crf"] == 20
    assert printed["inbox"]["settle_time"] == 2.0
    assert "T0KEN" not in out
    assert "s3cret" not in out
    assert "alice" not in out
    assert printed["webhooks"]["ops"]["url"] == "<redacted>"
    assert printed["storage"]["endpoint_url"] == "https://<redacted>@s3.example.com"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("render:\n  workers: 0\n", "render.workers"),
        ("render:\n  lease_seconds: 0.5\n", "render.lease_seconds"),
        ("render:\n  max_attempts: -1\n", "render.max_attempts"),
        ("upload:\n  workers: two\n", "upload.workers"),
    ],
)
def test_worker_keys_are_checked_and_errors_name_them(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_worker_keys_parse(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "render:\n  workers: 2\n  lease_seconds: 3s\nupload:\n  workers: 2\n")
    )
    assert (config.render.workers, config.render.lease_seconds, config.upload.workers) == (2, 3.0, 2)


# -- webhook files in systemd's per-unit credentials folder ------------------------------------------


def hooks_config(tmp_path: Path, url_file: str, secret_file: str | None = None) -> Config:
    hook = {"kind": "dingtalk", "url_file": url_file, **({"secret_file": secret_file} if secret_file else {})}
    return load_config(write(tmp_path, yaml.safe_dump({"webhooks": {"ops": hook}})))


@pytest.mark.parametrize(
    "written", ["$CREDENTIALS_DIRECTORY/webhook_ops", "${CREDENTIALS_DIRECTORY}/webhook_ops"]
)
def test_a_credentials_path_resolves_against_this_units_folder(tmp_path: Path, written: str) -> None:
    """Two upload workers with one config: each reads the file from its own credentials folder."""
    config = hooks_config(tmp_path, written, secret_file=written.replace("webhook_ops", "webhook_ops-secret"))
    assert config.webhooks["ops"].url_file == Path(written)  # kept as written until a process resolves it
    for unit in ("lipsyncd-upload.service", "lipsyncd-upload@1.service"):
        folder = f"/run/credentials/{unit}"
        hook = with_credentials(config, {"CREDENTIALS_DIRECTORY": folder}).webhooks["ops"]
        assert (hook.url_file, hook.secret_file) == (
            Path(folder) / "webhook_ops",
            Path(folder) / "webhook_ops-secret",
        )


def test_other_paths_are_used_as_written_even_with_the_variable_set(tmp_path: Path) -> None:
    """A relative path stays relative to the working directory (as every path in the file), and an
    absolute one (a config written for the single upload unit) is left alone."""
    environ = {"CREDENTIALS_DIRECTORY": "/run/credentials/lipsyncd-upload@1.service"}
    for written in ("secrets/webhook_ops", "/run/credentials/lipsyncd-upload.service/webhook_ops"):
        config = hooks_config(tmp_path, written)
        assert with_credentials(config, environ).webhooks["ops"].url_file == Path(written)
    assert credential_path(Path("webhook_ops"), environ, "k") == Path("webhook_ops")


def test_the_variable_unset_is_an_error_naming_each_key_and_what_to_do(tmp_path: Path) -> None:
    config = hooks_config(tmp_path, "$CREDENTIALS_DIRECTORY/webhook_ops", "${CREDENTIALS_DIRECTORY}/sec")
    for environ in ({}, {"CREDENTIALS_DIRECTORY": ""}):
        with pytest.raises(ConfigError) as caught:
            with_credentials(config, environ)
        problems = str(caught.value).splitlines()
        assert len(problems) == 2
        assert problems[0].startswith(f"{tmp_path / 'lipsyncd.yaml'}: key 'webhooks.ops.url_file' is ")
        assert "'webhooks.ops.secret_file'" in problems[1]
        assert "$CREDENTIALS_DIRECTORY is not set" in problems[0]
        assert "write the file's full path instead" in problems[0]
        assert "the folder holding webhook_ops" in problems[0]
    plain = hooks_config(tmp_path, "/etc/hook-url")
    assert with_credentials(plain, {}) == plain  # nothing to resolve: no variable needed


@pytest.mark.parametrize(
    "written",
    [
        "$CREDENTIAL_DIRECTORY/webhook_ops",
        "$HOME/hook",
        "/x/$CREDENTIALS_DIRECTORY/a",
        "$CREDENTIALS_DIRECTORY/",
    ],
)
def test_any_other_variable_in_a_webhook_path_is_refused_by_the_check(tmp_path: Path, written: str) -> None:
    with pytest.raises(ConfigError, match=r"key 'webhooks.ops.url_file': only \$CREDENTIALS_DIRECTORY/NAME"):
        hooks_config(tmp_path, written)
