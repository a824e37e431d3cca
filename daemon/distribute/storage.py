"""Open the configured object storage: an external S3 endpoint with credentials from boto3's chain or a
file, or (no endpoint configured) the embedded SeaweedFS on loopback with keys it generated itself."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Config
from daemon.distribute.embedded import EmbeddedS3, EmbeddedS3Error, EmbeddedSettings
from daemon.distribute.s3 import StorageSettings, ensure_bucket, make_client
from daemon.distribute.uploader import abort_orphans

log = structlog.get_logger(__name__)


@dataclass
class Storage:
    client: Any
    bucket: str
    prefix: str
    embedded: EmbeddedS3 | None = None
    signer: Any = None  # presigns links for the public URL; None: `client` (the same address)

    @property
    def signing_client(self) -> Any:
        return self.signer if self.signer is not None else self.client

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def storage_settings(config: Config, credentials_file: Path | None) -> StorageSettings:
    s = config.storage
    return StorageSettings(
        endpoint_url=s.endpoint_url,
        region=s.region,
        bucket=s.bucket,
        prefix=s.prefix,
        addressing_style=s.addressing_style,
        request_checksum_calculation=s.request_checksum_calculation,
        response_checksum_validation=s.response_checksum_validation,
        credentials_file=s.credentials_file or credentials_file,
        profile=s.profile,
    )


def embedded_storage(config: Config, role: str) -> EmbeddedS3:
    s = config.storage
    settings = EmbeddedSettings(
        bucket=s.bucket,
        region=s.region,
        s3_port=s.embedded_port,
        stop_timeout_s=s.embedded_stop_timeout,
        listen=s.embedded_listen,
        public_url=s.public_url,
    )
    return EmbeddedS3(config.state_dir, settings, role=role)


def open_storage(config: Config, *, role: str, credentials_file: Path | None = None) -> Storage:
    """Reach the storage and make sure the bucket exists: the embedded server is used as it runs, or
    started here when no process runs it (`role` names us in its owner lock). `credentials_file` is the
    systemd credential ($CREDENTIALS_DIRECTORY/s3) when the configuration names none."""
    s = config.storage
    if s.endpoint_url is None:
        embedded = embedded_storage(config, role)
        _start_embedded(embedded)
        return Storage(embedded.client(), s.bucket, s.prefix, embedded, embedded.signing_client())
    client = make_client(storage_settings(config, credentials_file))
    ensure_bucket(client, s.bucket, s.region)
    log.info("storage_ready", endpoint=s.endpoint_url, bucket=s.bucket)
    return Storage(client, s.bucket, s.prefix, signer=external_signer(config, credentials_file))


def external_signer(config: Config, credentials_file: Path | None) -> Any:
    """A client whose endpoint is storage.public_url, for presigning (None: sign with the endpoint)."""
    if config.storage.public_url is None:
        return None
    settings = dataclasses.replace(
        storage_settings(config, credentials_file), endpoint_url=config.storage.public_url
    )
    return make_client(settings)


def _start_embedded(embedded: EmbeddedS3, attempts: int = 3) -> None:
    """Free loopback ports are picked just before SeaweedFS binds them; another program can take one in
    between, so a failed start is tried again (new ports are picked when none were remembered yet)."""
    for attempt in range(1, attempts + 1):
        try:
            embedded.start()
            return
        except EmbeddedS3Error as exc:
            if attempt == attempts:
                raise
            log.warning("embedded_s3_start_retry", attempt=attempt, error=str(exc))


def keep_embedded_up(
    embedded: EmbeddedS3, stop: threading.Event, every_s: float = 2.0, take_over_after_s: float = 10.0
) -> None:
    """Run by whoever needs the embedded server: if ours died, start it again on the same data, ports and
    keys. If we only use it and its owner is gone, give the owner's supervisor (`lipsyncd run`, systemd)
    take_over_after_s to start it again before we take it over. Uploads in flight wait and retry."""
    owner_gone_since: float | None = None
    while not stop.wait(every_s):
        if embedded.running:
            owner_gone_since = None
            continue
        if embedded.attached:
            owner_gone_since = owner_gone_since or time.monotonic()
            if time.monotonic() - owner_gone_since < take_over_after_s:
                continue
        log.warning("embedded_s3_down", attached=embedded.attached, log_tail=embedded.log_tail(5))
        try:
            embedded.start()
        except Exception as exc:  # noqa: BLE001 - try again on the next round; uploads keep waiting
            log.error("embedded_s3_restart_failed", error=str(exc))
            continue
        owner_gone_since = None
        log.info("embedded_s3_restarted", attached=embedded.attached)


def abort_stale_uploads(storage: Storage, owned: set[str], older_than_hours: float) -> None:
    """Multipart uploads under our prefix that no job owns (a crash between starting one and recording
    it) are aborted once old enough that no other writer can still be using them."""
    abort_orphans(storage.client, storage.bucket, storage.prefix, owned, timedelta(hours=older_than_hours))
