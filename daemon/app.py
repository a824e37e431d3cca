"""Wiring: build the render daemon's parts from a Config and run them. The CLI calls this; nothing here
reads argv or the environment."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.config import Config
from daemon.inbox import Inbox
from daemon.intake import Intake, IntakeThread
from daemon.render.pipeline import Interrupted, RenderSettings
from daemon.render.registry import ModelPool, available_models
from daemon.render.service import RenderPaths, RenderService
from daemon.store import JobStore

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
        crf=r.crf,
        preset=r.preset,
    )


@dataclass
class RenderDaemon:
    """The parts of `lipsyncd render`, built once; `run_once` and `run_forever` drive them."""

    config: Config
    store: JobStore
    intake: Intake
    service: RenderService
    stop: threading.Event

    @classmethod
    def build(cls, config: Config, stop: threading.Event, *, beat: Heartbeats | None = None) -> RenderDaemon:
        beats = beat or Heartbeats()
        store = JobStore(config.state_dir)
        inbox = Inbox(config.inbox_dir, settle_time=config.inbox.settle_time)
        models = ModelPool(
            config.models_dir,
            providers=config.render.providers,
            precision=config.render.precision,
            threads=config.render.threads,
            device_id=config.render.gpus[0] if config.render.gpus else 0,
        )
        paths = RenderPaths(
            config.outputs_dir, config.state_dir / "scratch", locks_dir(config), config.models_dir
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
            stop=stop,
            beat=beats.pipeline,
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
        )
        return cls(config, store, intake, service, stop)

    def recover(self) -> None:
        self.intake.recover()
        self.service.recover()

    def run_once(self) -> int:
        """Take what the inbox holds now (after one settle period), render it all, return jobs rendered."""
        self.recover()
        self.intake.sweep(rescan=True)
        self.stop.wait(self.config.inbox.settle_time)
        self.intake.sweep(rescan=True)
        try:
            return self.service.run_pending()
        except Interrupted:
            return 0

    def run_forever(self, beats: Heartbeats | None = None) -> None:
        self.recover()
        thread = IntakeThread(
            self.intake,
            self.stop,
            rescan_interval=self.config.inbox.rescan_interval,
            polling=self.config.inbox.observer == "polling",
            beat=(beats or Heartbeats()).intake,
        )
        thread.start()
        try:
            self.service.run_forever()
        except Interrupted:
            log.info("render_stopping")
        finally:
            self.stop.set()
            thread.join(timeout=10)
            self.store.close()


class Heartbeats:
    """Monotonic times of the last sign of life of each loop (read by the systemd watchdog)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def pipeline(self) -> None:
        self.last["pipeline"] = time.monotonic()

    def intake(self) -> None:
        self.last["intake"] = time.monotonic()
