"""The reconciler: applies what the job store's outbox says must follow its changes.

Every change of the store records, in the same transaction, the effects it requires (rewrite the job's
views, file its manifest, evict a local copy, send webhooks, rewrite the metrics file). Each process runs one
Reconciler: right after
each of its own commits (the store's `after_commit` hook), in every pass of its loop and at start-up, so an
effect left by a crash or a failure (a full disk) is applied by the next pass. Every effect is idempotent and
its row is deleted only once it was applied. A process applies only the kinds it owns: the render process
files manifests, the upload process evicts and sends webhooks, both write views and metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.inbox import Inbox
from daemon.links import LINKS_NAME, refresh_views, write_links
from daemon.ops.metrics import MetricsFile
from daemon.store import Effect, Job, JobState, JobStore, LedgerUnreachable, Pending, Video, VideoState

log = structlog.get_logger(__name__)

_FINISHED = (JobState.RENDERED, JobState.DONE, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED)
# views first: eviction waits for them
_ORDER = (Effect.VIEWS, Effect.FILE, Effect.NOTIFY, Effect.EVICT, Effect.METRICS)


@dataclass(frozen=True)
class Eviction:
    """When a ready video's local copy goes: `delete` (once its link is shown), `keep`, or `after`
    keep_hours since it was rendered."""

    mode: str = "delete"
    keep_hours: float = 0.0


class Reconciler:
    def __init__(
        self,
        store: JobStore,
        *,
        outputs_dir: Path,
        locks_dir: Path,
        inbox: Inbox | None = None,  # given: this process files manifests (render)
        eviction: Callable[[], Eviction] | None = None,  # given: this process evicts (upload)
        notify: Callable[[Job, list[Video], JobState], None] | None = None,  # given: sends webhooks
        metrics: MetricsFile | None = None,  # given: the textfile to rewrite (None: no file is kept)
    ) -> None:
        self.store = store
        self.outputs_dir, self.locks_dir = outputs_dir, locks_dir
        self.inbox, self.eviction, self.notify, self.metrics = inbox, eviction, notify, metrics
        self._running = threading.Lock()
        self._again = threading.Event()
        self._failing: set[tuple[str, str, str]] = set()  # effects whose failure was logged already
        self._unseen: set[str] = set()  # jobs whose view another process is writing right now

    def kinds(self) -> tuple[Effect, ...]:
        owned = {
            Effect.VIEWS: True,
            Effect.FILE: self.inbox is not None,
            Effect.NOTIFY: self.notify is not None,
            Effect.EVICT: self.eviction is not None,
            Effect.METRICS: True,  # any process: the file is the same view of the same counters
        }
        return tuple(kind for kind in _ORDER if owned[kind])

    def reconcile(self) -> int:
        """Apply every pending effect this process owns; returns how many were applied. Never raises: an
        effect that fails stays in the outbox for the next pass. Called while another thread reconciles
        (or from inside an effect that changed the store), it leaves the work to that pass."""
        if not self._running.acquire(blocking=False):
            self._again.set()
            return 0
        applied = 0
        try:
            while True:
                self._again.clear()
                applied += self._pass()
                if not self._again.is_set():
                    return applied
        except LedgerUnreachable:  # PostgreSQL away for a moment: the store said so; the next pass retries
            return applied
        except Exception:  # the store itself cannot be read now: the next pass tries again
            log.exception("reconcile_failed")
            return applied
        finally:
            self._running.release()

    def final_pass(self) -> None:
        """At a clean stop: everything pending, the metrics file too, however recently it was written."""
        if self.metrics is not None:
            self.metrics.hurry()
        self.reconcile()

    def start_up(self) -> None:
        """At start: temp files of a killed writer removed, every view compared with the store, every
        ready copy not yet evicted asked for again (a row lost with an older version), then a pass."""
        rewritten = refresh_views(
            self.store, self.outputs_dir, self.locks_dir, [j.id for j in self.store.jobs()]
        )
        if rewritten:
            log.info("links_refreshed", jobs=rewritten)
        if self.eviction is not None:
            for video in self.store.videos_in(VideoState.READY):
                if not video.evicted:
                    self.store.ask(Effect.EVICT, video.job_id, video.output)
        self.reconcile()

    def _pass(self) -> int:
        """Every pending effect once; the applied ones are removed together at the end, so a pass writes
        the store only where an effect itself changes it (an eviction), and a kill before the end leaves
        them to be applied again (harmless: each is idempotent)."""
        self._unseen = set()
        done = [effect for kind in self.kinds() for effect in self.store.pending(kind) if self._apply(effect)]
        if done:
            self.store.applied(*done)
        return len(done)

    def _apply(self, effect: Pending) -> bool:
        handler = {
            Effect.VIEWS: self._views,
            Effect.FILE: self._file,
            Effect.NOTIFY: self._notify,
            Effect.EVICT: self._evict,
            Effect.METRICS: self._metrics,
        }[effect.kind]
        name = (effect.kind.value, effect.job_id, effect.video)
        try:
            if not handler(effect):
                if effect.kind == Effect.VIEWS:
                    self._unseen.add(effect.job_id)
                return False  # not due yet (a view locked by another process, an eviction's hour)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the row stays and the next pass retries
            if name not in self._failing:
                self._failing.add(name)
                log.error(
                    "effect_failed",
                    effect=effect.kind.value,
                    job=effect.job_id,
                    video=effect.video or None,
                    error=f"{type(exc).__name__}: {exc}",
                    action="tried again on the next pass",
                )
            return False  # a view that cannot be written (a full disk) holds back nothing else
        if name in self._failing:
            self._failing.discard(name)
            log.info(
                "effect_applied", effect=effect.kind.value, job=effect.job_id, video=effect.video or None
            )
        return True

    # -- one function per kind; each True once applied (or nothing is left to do) ----------------------

    def _views(self, effect: Pending) -> bool:
        try:  # never wait on another process's lock: it may be stopped; the next pass tries again
            path = write_links(self.store, effect.job_id, self.outputs_dir, self.locks_dir, wait=False)
        except BlockingIOError:
            return False
        except KeyError:
            return True  # the job is gone: no view to write
        return self._view_current(effect.job_id, path)

    def _view_current(self, job_id: str, path: Path) -> bool:
        """Hosts sharing the ledger write one job's views without a shared lock: an older view renamed
        after a newer one would stay. The last writer to rename sees its file behind the store's
        revision and asks for the view again, so the newest view always ends up on disk."""
        job = self.store.job(job_id)
        if job is None or _revision(path) >= job.revision:
            return True
        log.debug("links_behind_ledger", job=job_id, on_disk=_revision(path), ledger=job.revision)
        self.store.ask(Effect.VIEWS, job_id)
        self._again.set()  # this reconcile runs another pass and writes the newest view
        return False

    def _file(self, effect: Pending) -> bool:
        assert self.inbox is not None
        if effect.job_id in self._unseen and not _shows_finished(
            self.outputs_dir / effect.job_id / LINKS_NAME
        ):
            return False  # filed once links.json shows the job finished, as readers expect
        job = self.store.job(effect.job_id)
        if job is None or job.state not in _FINISHED or not Path(job.claimed_path).exists():
            return True  # gone, reopened, or filed already (by `lipsyncd cancel`, or before a crash)
        claimants = [j for j in self.store.jobs() if j.claimed_path == job.claimed_path]
        if max(claimants, key=lambda j: (j.created, j.id)).id != job.id:
            return True  # its claimed name belongs to a newer job now: that one is not ours to file
        try:
            self.inbox.file_job(job, self.store.videos(job.id))
        except FileNotFoundError:
            if Path(job.claimed_path).exists():
                raise
            log.debug("manifest_filed_elsewhere", job=job.id)  # hosts sharing the inbox: one rename wins
        return True

    def _notify(self, effect: Pending) -> bool:
        assert self.notify is not None
        job = self.store.job(effect.job_id)
        if job is None or job.state not in (JobState.DONE, JobState.PARTIAL):
            return True
        self.notify(job, self.store.videos(job.id), job.state)  # once: the job's notified flag says so
        return True

    def _metrics(self, _effect: Pending) -> bool:
        if self.metrics is None:
            return True  # no file configured: nothing to write
        if not self.metrics.due():
            return False  # written moments ago: a later pass writes this change with others
        return self.metrics.write(self.store.counters())

    def _evict(self, effect: Pending) -> bool:
        """A ready video's local copy goes only once links.json shows its link."""
        assert self.eviction is not None
        video = self.store.video(effect.job_id, effect.video)
        policy = self.eviction()
        if video is None or video.state != VideoState.READY or video.evicted or policy.mode == "keep":
            return True
        age = 0.0 if policy.mode == "delete" else policy.keep_hours * 3600
        if time.time() - (video.rendered_at or 0.0) < age:
            return False
        folder = self.outputs_dir / video.job_id
        if not link_shown(folder / LINKS_NAME, video):
            return False  # its view is written first (an effect before this one), or the next pass
        (folder / video.output).unlink(missing_ok=True)
        self.store.mark_evicted(video.job_id, video.output)
        self._again.set()  # its view changed (no local copy): another pass writes it
        log.info("local_copy_evicted", job=video.job_id, video=video.output)
        return True


def _shows_finished(links: Path) -> bool:
    """Whether links.json on disk already shows the job finished (another process wrote that view while
    this one's write was locked out): then its manifest can be filed now, not a pass later."""
    try:
        status = json.loads(links.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return False
    return status in {state.value for state in _FINISHED}


def _revision(links: Path) -> int:
    try:
        return int(json.loads(links.read_text(encoding="utf-8")).get("revision", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


def link_shown(links: Path, video: Video) -> bool:
    """Whether the links.json on disk shows this video's link (a user reading it can download it)."""
    try:
        document = json.loads(links.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(
        v.get("output") == video.output and v.get("url") == video.url for v in document.get("videos", [])
    )
