"""`lipsyncd storage`: the embedded SeaweedFS as a long-lived service of its own (a child of `lipsyncd
run`, or the lipsyncd-storage unit), so links keep working while the watchers restart."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from daemon.config import Config
from daemon.distribute.embedded import EmbeddedS3, EmbeddedS3Error
from daemon.distribute.storage import embedded_storage, keep_embedded_up
from daemon.ops.runtime import ServiceRuntime

log = structlog.get_logger(__name__)


@dataclass
class StorageDaemon:
    """`lipsyncd storage`: the embedded SeaweedFS as a service of its own, so links keep working while the
    watchers restart. It owns the server (the watchers and commands attach to it), restarts it if it
    dies, and stops it on exit."""

    config: Config
    embedded: EmbeddedS3
    runtime: ServiceRuntime

    @classmethod
    def build(cls, config: Config, runtime: ServiceRuntime) -> StorageDaemon:
        return cls(config, embedded_storage(config, "storage"), runtime)

    def run_forever(self) -> None:
        try:
            if not self._own():
                return
            self.runtime.ready(self.describe)
            log.info(
                "storage_ready",
                endpoint=self.embedded.endpoint_url,
                links_signed_for=self.embedded.public_url,
                bucket=self.embedded.settings.bucket,
            )
            keep_embedded_up(self.embedded, self.runtime.stop)
        finally:
            self.runtime.stopping("stopping the embedded storage")
            log.info("storage_stopping")
            self.embedded.stop()
            self.runtime.close()

    def _own(self) -> bool:
        """Start the server as its owner. A watcher or command that started it before us keeps it until it
        exits; then we take over (never two servers on one data folder)."""
        waiting = False
        while not self.runtime.stop.is_set():
            try:
                self.embedded.start()
            except EmbeddedS3Error as exc:
                log.error("embedded_s3_start_failed", error=str(exc))
            else:
                if not self.embedded.attached:
                    return True
                if not waiting:
                    log.warning("storage_waiting_for_owner", owner=str(self.embedded.owner_description()))
                    waiting = True
            self.runtime.stop.wait(2.0)
        return False

    def describe(self) -> str:
        return f"serving S3 on {self.embedded.endpoint_url}" if self.embedded.running else "storage down"
