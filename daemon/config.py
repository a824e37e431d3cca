"""The one YAML configuration file: typed sections, defaults that run everything locally, and
validation whose errors name the file and the key.

Every key is documented in config/lipsyncd.example.yaml; a test checks the two stay in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_PATH = Path("config/lipsyncd.yaml")
ENV_VAR = "LIPSYNCD_CONFIG"


class ConfigError(Exception):
    """A configuration problem, worded for the operator: file, key, what is wrong, what to do."""


# -- value parsers -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_duration(value: Any) -> float:
    """'90s', '2m', '24h', '7d', '500ms' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 24h or 7d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 30s, 5m, 24h or 7d, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """'16MiB', '5MB', '1024' or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 8MiB")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"expected a size like 8MiB or 16MB, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    return parse


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of at least 0, got {value!r}")
    return value


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, like 500ms or 30s, got {value!r}")
    return seconds


def _non_negative_size(value: Any) -> int:
    size = parse_size(value)
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return size


def _ip_address(value: Any) -> str:
    """An IP address to listen on (not a host name: a name can resolve to several addresses)."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(
            f"expected an IP address such as 127.0.0.1 (this machine only) or 0.0.0.0 (every network), "
            f"got {value!r}"
        ) from None


def parse_base_url(value: Any) -> str:
    """scheme://host[:port] and nothing more: SigV4 signs the host and the path, so a path here would
    change every link's signature."""
    text = str(value).rstrip("/") if isinstance(value, str) else ""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"the port in {value!r} is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a URL like http://files.example.com:8333, got {value!r}")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"expected only scheme, host and port (no path or query), got {value!r}")
    return text


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a share between 0 and 1 (0.5 = half the frames), got {value!r}")
    return float(value)


def _lease(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError(f"a lease shorter than 1s would lapse between heartbeats, got {value!r}")
    return seconds


def parse_host_name(value: Any) -> str:
    """A name for worker names (HOST:render@0) and log lines: no `:` or `@`, which split those names."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or any(c in text for c in ":@/") or any(c.isspace() for c in text):
        raise ValueError(f"expected a host name such as render-2 (no spaces, ':', '@' or '/'), got {value!r}")
    return text


def _opt(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else parse(value)


def _key(default: Any, parse: Callable[[Any], Any] | None = None) -> Any:
    """A config key with a default and an optional parser (types not covered by the generic checks)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: default.copy(), metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


# -- sections ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    shared: Path = _key(Path("."))  # the folder users may write to; media must stay inside it
    inbox: Path = _key(Path("inbox"))
    outputs: Path = _key(Path("outputs/latest_batch"))
    state: Path = _key(Path("state"))  # job store, embedded storage data, credentials it generates
    scratch: Path | None = _key(None)  # None: .lipsyncd-scratch beside the outputs folder, on its disk
    models: Path = _key(Path("models"))


def parse_store_url(value: Any) -> str:
    """postgresql://[user@]host[:port]/database[?options], never with a password: the YAML is readable
    by operators and lands in backups; libpq finds the password in its usual places."""
    text = value if isinstance(value, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a URL like postgresql://lipsyncd@db.example.com/lipsyncd, got {value!r}")
    if parts.password is not None or "password=" in parts.query:
        raise ValueError(
            "the URL holds a password, which must not sit in this file: leave it out, and put it in a "
            "pgpass file named by PGPASSFILE, in the PGPASSWORD environment variable, or in a systemd "
            "credential named pgpass (LoadCredential=pgpass:/etc/lipsyncd/pgpass), which lipsyncd reads "
            "as its pgpass file"
        )
    return text


@dataclass(frozen=True)
class StoreConfig:
    # how long a write waits for another holder of the job store (a backup tool, `lipsyncd status`)
    busy_timeout: float = _key(30.0, _positive_duration)
    # a PostgreSQL ledger shared by several hosts; None: SQLite in paths.state (one host)
    url: str | None = _key(None, _opt(parse_store_url))


@dataclass(frozen=True)
class InboxConfig:
    observer: str = _key("native", _choice("native", "polling"))
    poll_interval: float = _key(1.0, _positive_duration)  # observer: polling lists the inbox this often
    rescan_interval: float = _key(30.0, parse_duration)
    settle_time: float = _key(2.0, parse_duration)
    media_keep: float = _key(86400.0, parse_duration)  # submit's copies, after their job finished


# x264's speed presets, fastest first; NVENC is given its nearest p1-p7 (daemon/render/media.py).
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


@dataclass(frozen=True)
class RenderConfig:
    model: str = _key("baseline")
    providers: str = _key("auto", _choice("auto", "cuda", "tensorrt", "openvino", "cpu"))
    precision: str | None = _key("auto", _opt(_choice("auto", "fp32", "fp16", "int8")))
    gpus: list[int] = _key([0])
    batch_size: int = _key(16, _positive_int)
    threads: int = _key(0, _non_negative_int)
    detector: str = _key("haar")
    detect_every: int = _key(5, _positive_int)
    audio_longer: str = _key("pingpong", _choice("pingpong", "loop", "freeze"))
    video_longer: str = _key("cut", _choice("cut", "keep"))
    encoder: str = _key("auto", _choice("auto", "libx264", "h264_nvenc"))
    decoder: str = _key("auto", _choice("auto", "cpu", "nvdec"))  # nvdec: FFmpeg's CUDA hwaccel via PyAV
    crf: int = _key(20, _non_negative_int)
    preset: str = _key("veryfast", _choice(*X264_PRESETS))
    max_video_seconds: float = _key(3600.0, parse_duration)
    avatar_cache_size: int = _key(2 * 10**9, _non_negative_size)  # STATE/avatars; 0: no avatar cache
    faceless_videos: str = _key("fail", _choice("fail", "pass_through"))
    faceless_warning_share: float = _key(0.5, _share)
    workers: int | None = _key(None, _opt(_positive_int))  # None: one per GPU in gpus, one on a CPU box
    lease_seconds: float = _key(60.0, _lease)  # a claimed video's lease, renewed every third of it
    max_attempts: int = _key(3, _positive_int)  # claims of a video whose workers vanished, then it fails


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str | None = _key(None)  # None: start the embedded SeaweedFS on loopback
    region: str = _key("us-east-1")
    bucket: str = _key("lipsyncd")
    prefix: str = _key("renders")
    addressing_style: str = _key("path", _choice("path", "virtual", "auto"))
    request_checksum_calculation: str = _key("when_required", _choice("when_supported", "when_required"))
    response_checksum_validation: str = _key("when_required", _choice("when_supported", "when_required"))
    credentials_file: Path | None = _key(None)
    profile: str | None = _key(None)
    embedded_port: int = _key(0, _non_negative_int)
    embedded_listen: str = _key("127.0.0.1", _ip_address)  # where the embedded S3 API listens
    public_url: str | None = _key(None, _opt(parse_base_url))  # links are signed for it (None: endpoint)
    embedded_stop_timeout: float = _key(5.0, parse_duration)


@dataclass(frozen=True)
class UploadConfig:
    max_concurrent: int = _key(3, _positive_int)
    multipart_threshold: int = _key(16 * 2**20, parse_size)
    part_size: int = _key(8 * 2**20, parse_size)
    part_workers: int = _key(4, _positive_int)  # with 3 files: 12 requests, 96 MiB of parts in memory
    workers: int = _key(1, _positive_int)  # upload worker processes (`lipsyncd run`, lipsyncd-upload@)
    lease_seconds: float = _key(60.0, _lease)


@dataclass(frozen=True)
class LinksConfig:
    default_ttl: float = _key(86400.0, parse_duration)
    base_url: str | None = _key(None)
    refresh_before: float = _key(7200.0, parse_duration)
    upload_page: bool = _key(False)  # links.html uploaded beside the videos, its link in links.json


@dataclass(frozen=True)
class EvictionConfig:
    mode: str = _key("delete", _choice("delete", "keep", "after"))
    keep_hours: float = _key(0.0)


@dataclass(frozen=True)
class LifecycleConfig:
    ia_after_days: int = _key(30, _non_negative_int)
    expire_after_days: int = _key(60, _non_negative_int)
    abort_multipart_after_days: int = _key(7, _positive_int)


@dataclass(frozen=True)
class WebhookConfig:
    kind: str = _key("json", _choice("wecom", "dingtalk", "feishu", "json"))
    url: str = _key("")
    url_file: Path | None = _key(None)  # $CREDENTIALS_DIRECTORY/NAME: see with_credentials()
    secret_file: Path | None = _key(None)


@dataclass(frozen=True)
class ServiceConfig:
    stall_after: float = _key(300.0, parse_duration)
    metrics_dir: Path | None = _key(None)
    host_name: str | None = _key(None, _opt(parse_host_name))  # None: the machine's hostname


@dataclass(frozen=True)
class LoggingConfig:
    format: str = _key("auto", _choice("auto", "console", "json", "journald"))
    level: str = _key("info", _choice("debug", "info", "warning", "error"))


def parse_listen(value: Any) -> str:
    """ADDRESS:PORT for the HTTP API ([::1]:8750 for IPv6): an IP address, not a name."""
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDRESS:PORT such as 127.0.0.1:8750, got {value!r}")
    _ip_address(host)
    return text


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected requests per second above 0 (e.g. 20), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ApiConfig:
    listen: str = _key("127.0.0.1:8750", parse_listen)  # loopback: put a TLS proxy in front for others
    tokens_file: Path | None = _key(None)  # None: STATE/api-tokens.json (a systemd credential wins)
    max_upload_bytes: int = _key(2 * 2**30, parse_size)  # one request's media, all files together
    min_free_bytes: int = _key(2**30, _non_negative_size)  # an upload leaves at least this free on the share
    rate_limit: float = _key(20.0, _rate)  # requests per second per token (a burst of twice that)
    long_poll_max: float = _key(60.0, _positive_duration)  # the longest ?wait= a client may ask for


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    eviction: EvictionConfig = field(default_factory=EvictionConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    webhooks: dict[str, WebhookConfig] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    source: Path | None = None  # the file this came from; None means built-in defaults

    @property
    def shared(self) -> Path:
        return self.paths.shared.resolve()

    @property
    def inbox_dir(self) -> Path:
        return self.paths.inbox.resolve()

    @property
    def outputs_dir(self) -> Path:
        return self.paths.outputs.resolve()

    @property
    def state_dir(self) -> Path:
        return self.paths.state.resolve()

    @property
    def scratch_dir(self) -> Path:
        """Frames a render spills to disk. Beside the outputs (the disk sized for video), not in the state
        directory (a small private disk); hidden and outside the outputs folder, so no watcher or user
        listing mistakes it for a job."""
        if self.paths.scratch is not None:
            return self.paths.scratch.resolve()
        return self.outputs_dir.parent / ".lipsyncd-scratch"

    @property
    def models_dir(self) -> Path:
        return self.paths.models.resolve()


# -- loading -----------------------------------------------------------------------------------------


def config_path(explicit: str | None, environ: typing.Mapping[str, str]) -> Path:
    """--config wins, then $LIPSYNCD_CONFIG, then config/lipsyncd.yaml."""
    return Path(explicit or environ.get(ENV_VAR) or DEFAULT_PATH)


def load_config(path: Path, *, required: bool = False) -> Config:
    """Read and validate the file. A missing default file means built-in defaults."""
    if not path.exists():
        if required:
            raise ConfigError(
                f"{path}: the configuration file does not exist; copy config/lipsyncd.example.yaml"
            )
        return Config()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: not valid YAML ({exc}); compare with config/lipsyncd.example.yaml"
        ) from exc
    problems: list[str] = []  # every problem, each naming the file and the key, reported at once
    config: Config = _build(Config, data, path, "", problems)
    config = dataclasses.replace(config, source=path)
    _check_paths(config, path, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def _build(cls: type, data: Any, path: Path, prefix: str, problems: list[str]) -> Any:
    """The section from `data`; a bad key or value is added to `problems` and its default is kept, so the
    rest of the file is still checked."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        message = f"{path}: '{where}' must be a mapping of keys to values, got {type(data).__name__}"
        if not prefix:
            raise ConfigError(message)
        problems.append(message)
        return cls()
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in known:
            choices = ", ".join(sorted(known))
            problems.append(f"{path}: unknown key '{prefix}{key}' (known keys here: {choices})")
    values = {}
    for key in (k for k in data if k in known):
        try:
            values[key] = _value(known[key], hints[key], data[key], path, f"{prefix}{key}", problems)
        except ConfigError as exc:
            problems.append(str(exc))
    return cls(**values)


def _value(f: dataclasses.Field[Any], hint: Any, raw: Any, path: Path, key: str, problems: list[str]) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, raw, path, key + ".", problems)
    if hint == dict[str, WebhookConfig]:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: '{key}' must map webhook names to their settings")
        return {
            str(name): _build(WebhookConfig, spec, path, f"{key}.{name}.", problems)
            for name, spec in raw.items()
        }
    try:
        return _convert(f.metadata.get("parse"), hint, raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: key '{key}': {exc}") from None


def _convert(parse: Callable[[Any], Any] | None, hint: Any, raw: Any) -> Any:
    if parse is not None:
        return parse(raw)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if raw is None:
        if optional:
            return None
        raise ValueError("a value is required here")
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    return _plain(base, raw)


def _plain(base: Any, raw: Any) -> Any:
    if base is Path:
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"expected a path, got {raw!r}")
        return Path(os.path.expanduser(raw))
    if base is bool:
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw
    if base is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {raw!r}")
        return float(raw)
    if base is str:
        if not isinstance(raw, str):
            raise ValueError(f"expected text, got {raw!r}")
        return raw
    if typing.get_origin(base) is list:
        if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            raise ValueError(f"expected a list of whole numbers, got {raw!r}")
        return raw
    raise TypeError(f"unsupported type {base}")  # a programming error, not a user one


REDACTED = "<redacted>"
_USERINFO = re.compile(r"//[^/@\s]+@")


def effective(config: Config) -> dict[str, Any]:
    """Every key as lipsyncd uses it (defaults filled in, durations in seconds, sizes in bytes), for
    `lipsyncd check-config --print`. Webhook URLs carry their tokens and are redacted, as is any
    user:password@ in a URL; credentials live in files, which are named, never read."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, str):
            return _USERINFO.sub("//" + REDACTED + "@", value)
        return value

    document = plain(dataclasses.asdict(config))
    document.pop("source", None)
    for hook in document["webhooks"].values():
        if hook["url"]:
            hook["url"] = REDACTED
    return typing.cast(dict[str, Any], document)


def _check_paths(config: Config, path: Path, problems: list[str]) -> None:
    if config.upload.part_size < 5 * 2**20:
        problems.append(f"{path}: key 'upload.part_size': S3 needs parts of at least 5MiB")
    if config.links.default_ttl > 604800:
        problems.append(f"{path}: key 'links.default_ttl': presigned links can last at most 7d (604800 s)")
    for name, hook in config.webhooks.items():
        if bool(hook.url) == bool(hook.url_file):
            problems.append(f"{path}: webhook '{name}': give exactly one of 'url' or 'url_file'")
        if hook.url and not hook.url.startswith(("http://", "https://")):
            problems.append(f"{path}: key 'webhooks.{name}.url': expected an http(s) URL")
        for key, value in _credential_keys(name, hook):
            if "$" in str(value) and not _CREDENTIAL_REF.match(str(value)):
                problems.append(
                    f"{path}: key '{key}': only $CREDENTIALS_DIRECTORY/NAME (or "
                    f"${{CREDENTIALS_DIRECTORY}}/NAME) is expanded in a path, got {str(value)!r}"
                )


# -- systemd credentials -----------------------------------------------------------------------------

CREDENTIALS_VAR = "CREDENTIALS_DIRECTORY"
# Only the whole variable at the start: a path that names one file in this process's credentials folder.
_CREDENTIAL_REF = re.compile(r"^\$(?:CREDENTIALS_DIRECTORY|\{CREDENTIALS_DIRECTORY\})/([^/]+)$")


def systemd_credential(name: str, environ: typing.Mapping[str, str]) -> Path | None:
    """A secret systemd passed in with LoadCredential= (an empty file means none was configured)."""
    folder = environ.get(CREDENTIALS_VAR)
    path = Path(folder) / name if folder else None
    return path if path is not None and path.is_file() and path.stat().st_size > 0 else None


def _credential_keys(name: str, hook: WebhookConfig) -> list[tuple[str, Path]]:
    files = (("url_file", hook.url_file), ("secret_file", hook.secret_file))
    return [(f"webhooks.{name}.{field}", value) for field, value in files if value is not None]


def credential_path(value: Path, environ: typing.Mapping[str, str], key: str) -> Path:
    """A webhook file written as $CREDENTIALS_DIRECTORY/NAME (or ${CREDENTIALS_DIRECTORY}/NAME): NAME in
    the credentials folder systemd made for this very unit (LoadCredential=), which differs per unit
    and per template instance (/run/credentials/lipsyncd-upload@1.service/). Any other path, relative
    ones included, is used as written (relative: to the working directory, like every path here)."""
    match = _CREDENTIAL_REF.match(str(value))
    if match is None:
        return value
    folder = environ.get(CREDENTIALS_VAR)
    if not folder:
        raise ConfigError(
            f"key '{key}' is {str(value)!r}, but ${CREDENTIALS_VAR} is not set: systemd sets it only for a "
            "unit with LoadCredential= (lipsyncd-upload.service, lipsyncd-upload@N.service). Outside "
            f"systemd, write the file's full path instead, or set {CREDENTIALS_VAR} to the folder holding "
            f"{match.group(1)}"
        )
    return Path(folder) / match.group(1)


def with_credentials(config: Config, environ: typing.Mapping[str, str]) -> Config:
    """The configuration with every webhook file resolved for this process (see credential_path); a
    ConfigError lists each key that names the variable when it is not set."""
    problems: list[str] = []
    where = f"{config.source}: " if config.source else ""

    def resolve(key: str, value: Path | None) -> Path | None:
        try:
            return None if value is None else credential_path(value, environ, key)
        except ConfigError as exc:
            problems.append(f"{where}{exc}")
            return value

    hooks = {
        name: dataclasses.replace(
            hook,
            url_file=resolve(f"webhooks.{name}.url_file", hook.url_file),
            secret_file=resolve(f"webhooks.{name}.secret_file", hook.secret_file),
        )
        for name, hook in config.webhooks.items()
    }
    if problems:
        raise ConfigError("\n".join(problems))
    return dataclasses.replace(config, webhooks=hooks)
