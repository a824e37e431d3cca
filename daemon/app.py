"""Wiring: build the render daemon's parts from a Config and run them. The CLI calls this; nothing here
reads argv or the environment."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from daemon.config import Config
from daemon.inbox import Inbox
from daemon.intake import Intake, IntakeThread
from daemon.lease import worker_name
from daemon.ops.runtime import ServiceRuntime
from daemon.render.avatar_cache import AvatarCache
from daemon.render.pipeline import Interrupted, RenderSettings
from daemon.render.registry import ModelPool, available_models
from daemon.render.service import RenderPaths, RenderService
from daemon.store import JobState, JobStore, VideoState
from daemon.workers import Presence

if TYPE_CHECKING:  # the upload side (boto3: ~0.2 s of import) is imported only by what uses it
    from daemon.distribute.notify import Notifier, WebhookSettings
    from daemon.distribute.storage import Storage
    from daemon.distribute.watcher import DistributeSettings, UploadWatcher

log = structlog.get_logger(__name__)


def locks_dir(config: Config) -> Path:
    return config.state_dir / "locks"


def render_settings(config: Config) -> RenderSettings:
    r = config.render
    encoder = "libx264" if r.encoder == "auto" else r.encoder  # NVENC only when asked: see README
    return RenderSettings(
        batch_size=r.batch_size,
        detect_every=r.detect_every,
        audio_longer=r.audio_longer,
        video_longer=r.video_longer,
        encoder=encoder,
        decoder=r.decoder,
        crf=r.crf,
        preset=r.preset,
        faceless_videos=r.faceless_videos,
        faceless_warning_share=r.faceless_warning_share,
    )


def avatar_cache(config: Config) -> AvatarCache | None:
    """STATE/avatars, bounded by `render.avatar_cache_size` (0: none)."""
    size = config.render.avatar_cache_size
    return AvatarCache(config.state_dir / "avatars", max_bytes=size) if size else None


def model_pools(config: Config, slot: int | None = None) -> list[ModelPool]:
    """One inference worker per configured GPU when CUDA is in use; a single worker on the CPU (it already
    uses every core). A render worker started for a slot (`--slot N`) uses one GPU: gpus[N % len(gpus)]."""
    r = config.render
    trt_cache = trt_cache_dir(config)
    if slot is not None:
        return [
            ModelPool(
                config.models_dir,
                providers=r.providers,
                precision=r.precision,
                threads=r.threads,
                device_id=gpu_for_slot(r.gpus, slot),
                trt_cache=trt_cache,
            )
        ]
    first = ModelPool(
        config.models_dir,
        providers=r.providers,
        precision=r.precision,
        threads=r.threads,
        device_id=r.gpus[0] if r.gpus else 0,
        trt_cache=trt_cache,
    )
    if first.providers[0] not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        return [first]
    rest = [
        ModelPool(
            config.models_dir,
            providers=r.providers,
            precision=r.precision,
            threads=r.threads,
            device_id=gpu,
            trt_cache=trt_cache,
        )
        for gpu in r.gpus[1:]
    ]
    log.info("render_workers", gpus=r.gpus, provider=first.providers[0])
    return [first, *rest]


def gpu_for_slot(gpus: list[int], slot: int) -> int:
    """Render worker `slot`'s GPU: round robin over render.gpus, so render.workers = k x len(gpus) puts k
    workers on every GPU (slots 0..3 on gpus [0, 1]: 0, 1, 0, 1)."""
    return gpus[slot % len(gpus)] if gpus else 0


def trt_cache_dir(config: Config) -> Path:
    """Where TensorRT engines are kept between starts (render/accel.py: how a build is published)."""
    return config.state_dir / "trt-cache"


def render_workers(config: Config) -> int:
    """render.workers, or by default one render worker per GPU in render.gpus when the render runs on
    GPUs, one on a CPU box (one process already uses every core there)."""
    r = config.render
    if r.workers is not None:
        return r.workers
    if r.providers == "cpu" or not r.gpus:
        return 1
    from daemon.render.model import choose_providers

    providers, _ = choose_providers(r.providers)
    return len(r.gpus) if providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else 1


@dataclass
class RenderDaemon:
    """The parts of `lipsyncd render`, built once; `run_once` and `run_forever` drive them."""

    config: Config
    store: JobStore
    intake: Intake
    service: RenderService
    runtime: ServiceRuntime

    slot: int = 0

    @classmethod
    def build(cls, config: Config, runtime: ServiceRuntime, *, slot: int | None = None) -> RenderDaemon:
        store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
        inbox = Inbox(config.inbox_dir, settle_time=config.inbox.settle_time)
        models = model_pools(config, slot)
        paths = RenderPaths(
            config.outputs_dir, config.scratch_dir, locks_dir(config), config.models_dir, config.shared
        )
        service = RenderService(
            store,
            inbox,
            models,
            paths=paths,
            settings=render_settings(config),
            default_model=config.render.model,
            detector=config.render.detector,
            max_seconds=config.render.max_video_seconds,
            stop=runtime.stop,
            beat=runtime.heartbeat("pipeline"),
            metrics=runtime.metrics,
            avatar_cache=avatar_cache(config),
            worker=worker_name("render", slot or 0),
            lease_s=config.render.lease_seconds,
            max_attempts=config.render.max_attempts,
        )
        intake = Intake(
            inbox,
            store,
            shared=config.shared,
            outputs_dir=config.outputs_dir,
            locks_dir=locks_dir(config),
            webhooks=tuple(config.webhooks),
            models=lambda: available_models(config.models_dir),
            on_job=service.wake.set,
            media_keep=config.inbox.media_keep,
        )
        return cls(config, store, intake, service, runtime, slot or 0)

    @property
    def takes_manifests(self) -> bool:
        """Intake (claiming manifests from the inbox, recovering half-claimed ones) runs in slot 0 only:
        its recovery moves claimed manifests back, which would race another worker's claim in flight, and
        one watcher of the inbox is enough (a manifest is a few bytes; the videos are the work). Every
        slot renders; slot 0 is always configured, and a dead one is restarted by `run` or systemd."""
        return self.slot == 0

    def recover(self) -> None:
        if self.takes_manifests:
            self.intake.recover()
        self.service.recover()

    def run_once(self) -> int:
        """Take what the inbox holds now, render it all, return jobs rendered. A manifest is taken once
        its mtime is `settle_time` old: one changed just before is waited for until then, not longer."""
        self.recover()
        if self.takes_manifests:
            self.intake.sweep(rescan=True, by_mtime=True)
            wait = self.intake.inbox.settle_left()
            if wait > 0:
                self.runtime.stop.wait(wait + 0.05)  # mtime granularity
                self.intake.sweep(rescan=True, by_mtime=True)
        try:
            return self.service.run_pending()
        except Interrupted:
            return 0

    def run_forever(self) -> None:
        presence = Presence.start(self.store, self.service.worker, "render", self.config.render.lease_seconds)
        self.recover()
        thread = IntakeThread(
            self.intake,
            self.runtime.stop,
            rescan_interval=self.config.inbox.rescan_interval,
            polling=self.config.inbox.observer == "polling",
            poll_interval=self.config.inbox.poll_interval,
            beat=self.runtime.heartbeat("intake"),
        )
        if self.takes_manifests:
            thread.start()
        self.runtime.ready(self.describe)
        log.info(
            "render_ready",
            inbox=str(self.config.inbox_dir),
            outputs=str(self.config.outputs_dir),
            intake=self.takes_manifests,
        )
        try:
            self.service.preload()  # after ready: a large model must not hold up the start-up deadline
            self.service.run_forever()
        except Interrupted:
            pass
        finally:
            self.runtime.stopping("stopping: the video in flight goes back to the queue")
            log.info("render_stopping")
            self.runtime.stop.set()
            if thread.is_alive():
                thread.join(timeout=10)
            presence.stop(clean=sys.exc_info()[0] is None)
            self.runtime.close()
            self.store.close()

    def describe(self) -> str:
        """The STATUS= line: '2 queued · rendering spring-promo 45%'."""
        queued = len(self.store.jobs(JobState.QUEUED))
        progress = self.service.progress
        doing = f"rendering {progress.job} {progress.fraction:.0%}" if progress.job else "idle"
        return f"{queued} queued · {doing}"

    def reload(self, new: Config) -> None:
        """Apply what can change while running; name what needs a restart."""
        for section in ("paths", "storage"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("config_needs_restart", section=section)
        self.service.settings = render_settings(new)
        self.service.default_model = new.render.model
        self.service.max_seconds = new.render.max_video_seconds
        self.service.lease_s = new.render.lease_seconds
        self.service.max_attempts = new.render.max_attempts
        self.intake.inbox.settle_time = new.inbox.settle_time
        self.intake.media_keep = new.inbox.media_keep
        self.config = new
        log.info("config_reloaded", source=str(new.source))


def distribute_settings(config: Config) -> DistributeSettings:
    from daemon.distribute.uploader import UploadSettings
    from daemon.distribute.watcher import DistributeSettings

    u = config.upload
    return DistributeSettings(
        bucket=config.storage.bucket,
        prefix=config.storage.prefix,
        max_concurrent=u.max_concurrent,
        default_ttl=int(config.links.default_ttl),
        base_url=config.links.base_url,
        eviction=config.eviction.mode,
        keep_hours=config.eviction.keep_hours,
        upload_page=config.links.upload_page,
        upload=UploadSettings(
            multipart_threshold=u.multipart_threshold, part_size=u.part_size, max_part_workers=u.part_workers
        ),
    )


def webhook_settings(config: Config) -> list[WebhookSettings]:
    from daemon.distribute.notify import WebhookSettings

    return [
        WebhookSettings(name, hook.kind, url=hook.url, url_file=hook.url_file, secret_file=hook.secret_file)
        for name, hook in config.webhooks.items()
    ]


@dataclass
class UploadDaemon:
    """The parts of `lipsyncd upload`: storage (embedded or external), webhooks, the watcher."""

    config: Config
    store: JobStore
    storage: Storage
    notifier: Notifier
    watcher: UploadWatcher
    runtime: ServiceRuntime

    @classmethod
    def build(
        cls,
        config: Config,
        runtime: ServiceRuntime,
        *,
        credentials_file: Path | None = None,
        worker: str | None = None,
        slot: int = 0,
    ) -> UploadDaemon:
        from daemon.distribute.notify import Notifier
        from daemon.distribute.storage import open_storage
        from daemon.distribute.watcher import UploadWatcher

        store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
        storage = open_storage(config, role="upload", credentials_file=credentials_file)
        notifier = Notifier(webhook_settings(config))
        watcher = UploadWatcher(
            store,
            storage.client,
            distribute_settings(config),
            outputs_dir=config.outputs_dir,
            locks_dir=locks_dir(config),
            stop=runtime.stop,
            notifier=notifier,
            beat=runtime.heartbeat("uploads"),
            metrics=runtime.metrics,
            signer=storage.signing_client,
            worker=worker,
            lease_s=config.upload.lease_seconds,
        )
        return cls(config, store, storage, notifier, watcher, runtime)

    def recover(self) -> None:
        from daemon.distribute.storage import abort_stale_uploads

        self.watcher.recover()
        abort_stale_uploads(self.storage, self.store.upload_ids(), older_than_hours=1)

    def run_once(self) -> None:
        try:
            self.recover()
            self.watcher.run_until_idle()
        finally:
            self.close()

    def run_forever(self) -> None:
        from daemon.distribute.storage import keep_embedded_up

        presence = Presence.start(self.store, self.watcher.worker, "upload", self.config.upload.lease_seconds)
        try:
            self.recover()
            if self.storage.embedded is not None:
                guard = threading.Thread(
                    target=keep_embedded_up,
                    args=(self.storage.embedded, self.runtime.stop),
                    name="embedded-s3-guard",
                    daemon=True,
                )
                guard.start()
            self.runtime.ready(self.describe)
            log.info("upload_ready", bucket=self.storage.bucket, outputs=str(self.config.outputs_dir))
            self.watcher.run_forever()
        finally:
            self.runtime.stopping("stopping: uploads in flight stay resumable")
            log.info("upload_stopping")
            presence.stop(clean=sys.exc_info()[0] is None)
            self.close()

    def close(self) -> None:
        self.watcher.shutdown()
        if not self.notifier.flush(timeout_s=10.0):
            log.warning("webhooks_unsent_at_exit")
        self.notifier.close()
        self.storage.close()
        self.runtime.close()
        self.store.close()

    def describe(self) -> str:
        waiting = len(self.store.videos_in(VideoState.RENDERED))
        uploading = len(self.store.videos_in(VideoState.UPLOADING))
        return f"{uploading} uploading · {waiting} waiting"

    def reload(self, new: Config) -> None:
        for section in ("paths", "storage", "webhooks"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("config_needs_restart", section=section)
        self.watcher.settings = distribute_settings(new)
        self.config = new
        log.info("config_reloaded", source=str(new.source))
