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
    load_config,
    parse_duration,
    parse_size,
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
