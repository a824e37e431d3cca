"""Talking to S3-compatible storage: settings, the boto3 client, object keys, presigned links, TTLs.

Credentials come only from boto3's standard chain (environment, shared credentials file or profile,
instance/container role) or from a credentials file (the systemd unit fills it with LoadCredential=).
They are never read from the YAML and never logged.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import boto3
import botocore.config
import botocore.exceptions
import structlog

log = structlog.get_logger(__name__)

MAX_PRESIGN_TTL = 604800  # seconds: SigV4 presigned URLs live at most 7 days; S3 refuses longer ones
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TTL_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_ADDRESSING = ("path", "virtual", "auto")
_CHECKSUM_MODES = ("when_supported", "when_required")
_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_ACCESS_NAMES = ("aws_access_key_id", "access_key_id", "access_key")
_SECRET_NAMES = ("aws_secret_access_key", "secret_access_key", "secret_key")
_TOKEN_NAMES = ("aws_session_token", "session_token")


class StorageError(Exception):
    """A storage problem explained in plain words for the person running the daemon."""


@dataclass(frozen=True)
class Credentials:
    """An access key pair. The secret and token never show up in repr() or logs."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StorageSettings:
    """Where objects go. YAML keys map one to one onto these fields (the lead's config does that)."""

    endpoint_url: str | None = None  # e.g. "https://s3.example.com"; None: AWS, or the embedded server
    region: str = "us-east-1"  # SigV4 signing region; most S3-compatible servers accept us-east-1
    bucket: str = "lipsyncd"
    prefix: str = "lipsyncd"  # key prefix: PREFIX/YYYY/MM/DD/JOB/VIDEO.mp4 ("" for none)
    addressing_style: str = "path"  # "path" works everywhere; "virtual" (bucket.host) or "auto"
    # boto3 >= 1.36 adds CRC checksums by default; several S3-compatible servers reject them
    request_checksum_calculation: str = "when_required"  # or "when_supported"
    response_checksum_validation: str = "when_required"  # or "when_supported"
    credentials_file: Path | None = None  # ini or KEY=VALUE file, e.g. $CREDENTIALS_DIRECTORY/s3
    profile: str | None = None  # a profile of the shared AWS config/credentials files
    connect_timeout_s: float = 5.0  # short, so an unreachable endpoint is noticed quickly
    read_timeout_s: float = 60.0  # one part of a multipart upload must go through in this time
    max_attempts: int = 3  # botocore's own quick retries per call; long outages are the caller's loop
    max_pool_connections: int = 16  # >= files at once x part workers (3 x 4) + spare for HEAD and listing

    def __post_init__(self) -> None:
        _check_choice("addressing_style", self.addressing_style, _ADDRESSING)
        _check_choice("request_checksum_calculation", self.request_checksum_calculation, _CHECKSUM_MODES)
        _check_choice("response_checksum_validation", self.response_checksum_validation, _CHECKSUM_MODES)
        check_bucket_name(self.bucket)


class Link(NamedTuple):
    """A presigned download link and the moment it stops working (UTC)."""

    url: str
    expires_at: datetime


def check_bucket_name(bucket: str) -> None:
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"storage: bucket name {bucket!r} is not valid: use 3 to 63 lower-case letters, digits, "
            "dots or hyphens, starting and ending with a letter or digit."
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"storage: {name} is {value!r}; use one of: {', '.join(choices)}")


def load_credentials_file(path: Path) -> Credentials:
    """Read an access key pair from an ini file ([default] aws_access_key_id=...) or KEY=VALUE lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StorageError(
            f"Cannot read the storage credentials file {path}: {exc.strerror}. "
            "Check the path (storage.credentials_file) and that this user may read it."
        ) from None
    values = _parse_key_values(text)
    access, secret = _first(values, _ACCESS_NAMES), _first(values, _SECRET_NAMES)
    if not access or not secret:
        raise StorageError(
            f"The storage credentials file {path} has no access key pair. Write two lines: "
            "AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... (or an [default] ini section)."
        )
    return Credentials(access, secret, _first(values, _TOKEN_NAMES))


def _parse_key_values(text: str) -> dict[str, str]:
    """Keys lower-cased; an ini file's first section wins, bare KEY=VALUE lines work too."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text if text.lstrip().startswith("[") else "[default]\n" + text)
    except configparser.Error:
        return {}
    section = "default" if parser.has_section("default") else (parser.sections() or ["default"])[0]
    if not parser.has_section(section):
        return {}
    items = parser.items(section)
    return {key.lower().removeprefix("export "): value.strip().strip("'\"") for key, value in items}


def _first(values: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((values[name] for name in names if values.get(name)), None)


def client_config(settings: StorageSettings) -> botocore.config.Config:
    return botocore.config.Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        request_checksum_calculation=settings.request_checksum_calculation,
        response_checksum_validation=settings.response_checksum_validation,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.max_pool_connections,
    )


def make_client(settings: StorageSettings, credentials: Credentials | None = None) -> Any:
    """A boto3 S3 client. Credentials: the ones given, else the settings' file, else boto3's chain."""
    if credentials is None and settings.credentials_file is not None:
        credentials = load_credentials_file(settings.credentials_file)
    try:
        session = boto3.session.Session(profile_name=settings.profile)
    except botocore.exceptions.ProfileNotFound:
        raise StorageError(
            f"The AWS profile {settings.profile!r} (storage.profile) is not in the shared config or "
            "credentials files. Add it there or remove storage.profile."
        ) from None
    keys = {}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials.access_key,
            "aws_secret_access_key": credentials.secret_key,
            "aws_session_token": credentials.session_token,
        }
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=client_config(settings),
        **keys,
    )


def object_key(prefix: str, job: str, video_name: str, when: datetime) -> str:
    """PREFIX/YYYY/MM/DD/JOB/VIDEO.mp4, dated in UTC. video_name is the output file's name."""
    for what, part in (("job name", job), ("video name", video_name)):
        _check_key_part(what, part)
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    parts = [prefix.strip("/"), f"{when:%Y/%m/%d}", job, video_name]
    return "/".join(part for part in parts if part)


def _check_key_part(what: str, part: str) -> None:
    bad = not part or part in (".", "..") or any(ch in part for ch in "/\\") or not part.isprintable()
    if bad:
        raise ValueError(
            f"The {what} {part!r} cannot be used in an object name: no slashes or control chars."
        )


def parse_ttl(value: str | int, *, max_seconds: int = MAX_PRESIGN_TTL) -> int:
    """'24h', '90m', '7d', '1w', '3600' or an int -> seconds, 0 < seconds <= max_seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"Link lifetime {value!r} is not a duration; write e.g. 3600, 90m, 24h or 7d.")
    seconds = value if isinstance(value, int) else _parse_ttl_text(value)
    check_ttl(seconds, max_seconds=max_seconds)
    return seconds


def _parse_ttl_text(text: str) -> int:
    match = _TTL_RE.match(text)
    if not match:
        raise ValueError(f"Link lifetime {text!r} is not a duration; write e.g. 3600, 90m, 24h or 7d.")
    return int(match.group(1)) * _TTL_UNITS[match.group(2).lower()]


def check_ttl(seconds: int, *, max_seconds: int = MAX_PRESIGN_TTL) -> None:
    if seconds <= 0:
        raise ValueError(f"Link lifetime must be positive; got {seconds} seconds.")
    if seconds > max_seconds:
        raise ValueError(
            f"Link lifetime {seconds} s ({seconds / 86400:g} days) is longer than the 7-day limit of "
            f"presigned links ({max_seconds} s). Use at most 7d; `lipsyncd links --refresh` re-signs later."
        )


def presign_get(
    client: Any,
    bucket: str,
    key: str,
    ttl_seconds: int,
    base_url: str | None = None,
    *,
    download_as: str | None = None,
) -> Link:
    """A SigV4 presigned GET link. base_url (e.g. a CDN, "https://cdn.example.com/media") replaces the
    scheme and host and is put in front of the path; the CDN must pass the path through to storage.
    With download_as, the storage answers `Content-Disposition: attachment` with that file name (signed
    into the link), so a browser saves the video under its own name instead of playing it."""
    check_ttl(ttl_seconds)
    params = {"Bucket": bucket, "Key": key}
    if download_as is not None:
        params["ResponseContentDisposition"] = attachment(download_as)
    url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_seconds)
    expires_at = _signed_at(url) + timedelta(seconds=ttl_seconds)
    return Link(rewrite_base(url, base_url) if base_url else url, expires_at)


def attachment(name: str) -> str:
    """RFC 6266: a plain ASCII name for old clients, the exact UTF-8 name for the rest."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def _signed_at(url: str) -> datetime:
    """The signing time botocore wrote into the link (X-Amz-Date), so expires_at is exact."""
    stamp = parse_qs(urlsplit(url).query).get("X-Amz-Date", [""])[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC).replace(microsecond=0)


def rewrite_base(url: str, base_url: str) -> str:
    base, signed = urlsplit(base_url), urlsplit(url)
    if not base.scheme or not base.netloc:
        raise ValueError(f"Link base URL {base_url!r} needs a scheme and host, e.g. https://cdn.example.com")
    path = base.path.rstrip("/") + signed.path
    return urlunsplit((base.scheme, base.netloc, path, signed.query, ""))


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('' for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def ensure_bucket(client: Any, bucket: str, region: str = "us-east-1") -> bool:
    """Create the bucket if it is missing. True when it was created now."""
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except botocore.exceptions.ClientError as exc:
        if http_status(exc) in (401, 403):
            raise StorageError(
                f"The storage refused access to bucket {bucket!r} ({error_code(exc)}). Check the access "
                "key, and that it may use this bucket."
            ) from None
        if http_status(exc) != 404:
            raise
    return _create_bucket(client, bucket, region)


def _create_bucket(client: Any, bucket: str, region: str) -> bool:
    args: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**args)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    log.info("bucket_created", bucket=bucket)
    return True


def is_retryable(exc: BaseException) -> bool:
    """Network trouble, timeouts, 5xx (but 501 NotImplemented), throttling: worth another try."""
    if isinstance(exc, botocore.exceptions.SSLError):
        return False  # a certificate problem does not heal by waiting
    if isinstance(
        exc,
        (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.IncompleteReadError,
        ),
    ):
        return True
    status = http_status(exc)
    return error_code(exc) in _RETRY_CODES or status == 429 or (status >= 500 and status != 501)
