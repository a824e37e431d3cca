"""The seeded crash driver (issues 6 and 12): real `lipsyncd render --slot N` and `lipsyncd upload --slot N`
worker processes (3 + 2 by default, short leases), fed jobs, killed with SIGKILL again and again at moments
the seed picks, restarted each time, and now and then frozen (SIGSTOP) past their lease and thawed; then the
invariants.

One thread per process kind does its share of the kills. A kill is either at a random moment (a delay
the seed draws) or aimed at a stage: the driver freezes the process (SIGSTOP), reads its threads' stacks
(crash_probe), kills it there if it is in the stage, else lets it run a few milliseconds and looks again.
Short stages need work to be in flight, so an aimed kill first waits (without freezing) for the job store
to show it: a multipart upload open, all its parts journalled. Eviction is caught with a lever instead:
the driver takes the job store's write lock when a video turns ready, so the watcher deletes the local
copy and then waits to record that; it is killed in between. The stage of every kill is what the stacks
showed at that moment, whatever was aimed at; the report counts them.

A kill picks a worker of its kind: for an aimed stage, one that holds a claim of that kind in the job store
(the one doing the work), looked at with py-spy on its own pid. A pause freezes a worker holding a claim
for longer than its lease, so that another worker takes the video over, then thaws it: its late writes
must be refused (a `claim_lost` or `*_abandoned` line in its own log file) and change nothing.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.distribute.embedded import EmbeddedS3
from daemon.samples import speech_like, write_audio, write_face_clip
from tests.e2e.crash_checks import (
    Check,
    LinksReader,
    check_downloads,
    check_files,
    check_history,
    check_jobs,
    check_links_match_store,
    check_objects,
    store_rows,
    wait_all_done,
    wait_filed,
)
from tests.e2e.crash_probe import Sight, StoreView, frozen, look, py_spy, store_write_lock, wait_stopped
from tests.e2e.harness import Daemon, Share

MiB = 1 << 20
HOST = socket.gethostname()
ROLES = ("render", "upload")
# The stages every run must hit at least once, per process kind.
REQUIRED: dict[str, tuple[str, ...]] = {
    "render": ("decode", "inference", "encode", "rename", "links.json write"),
    "upload": ("multipart upload", "completion", "eviction", "links.json write"),
}
EXTRA = {"render": ("audio", "any"), "upload": ("upload hash", "verification", "any")}


@dataclass(frozen=True)
class CrashSettings:
    seed: int = 6
    kills: int = 26
    jobs: int = 3  # manifests dropped at once at the start; then one more whenever the render runs dry
    wait_s: float = 60.0  # how long an aimed kill waits for the process to be up and its stage to have work
    hunt_s: float = 15.0  # then how long it samples for its stage before killing wherever it is
    drain_s: float = 240.0  # after the last kill, how long the jobs may take to finish
    part_size: int = 5 * MiB
    render_workers: int = 3
    upload_workers: int = 2
    lease_s: float = 3.0  # render.lease_seconds and upload.lease_seconds
    pause_every: int = 6  # besides the kills, one pause (SIGSTOP past the lease, SIGCONT) per this many

    @property
    def pauses(self) -> int:
        return self.kills // self.pause_every if self.pause_every else 0

    def workers(self, role: str) -> int:
        return self.render_workers if role == "render" else self.upload_workers


@dataclass(frozen=True)
class Storage:
    """Where the uploads go, and a client of the test's own to look there afterwards."""

    section: dict[str, Any] | None  # the config's `storage:` section; None: the embedded default
    client: Callable[[], Any]
    bucket: str
    prefix: str


@dataclass(frozen=True)
class Kill:
    index: int
    role: str
    slot: int
    aim: str  # the stage aimed at, or "any" for a random moment
    stages: frozenset[str]  # what the stacks showed when SIGKILL was sent
    age_s: float  # how long the process had run
    store: str  # the job store's video states at that moment
    last_event: str  # the last line the process logged

    @property
    def hit(self) -> bool:
        return self.aim == "any" or self.aim in self.stages


@dataclass(frozen=True)
class Pause:
    """One worker frozen past its lease and thawed, and what its log said afterwards."""

    index: int
    role: str
    slot: int
    held: tuple[tuple[str, str, int], ...]  # (job, video, epoch): its claims when it was frozen
    taken: tuple[tuple[str, str, int], ...]  # those another worker claimed while it was frozen
    seconds: float  # how long it stayed frozen
    refused: tuple[str, ...]  # "job/video" of its claim_lost / *_abandoned lines after the thaw
    late_writes: tuple[str, ...]  # its success lines (rendered, ready) for a taken video after the thaw

    @property
    def ok(self) -> bool:
        return not self.late_writes and all(f"{job}/{video}" in self.refused for job, video, _ in self.taken)

    def text(self) -> str:
        held = ",".join(f"{j}/{v}@e{e}" for j, v, e in self.held) or "-"
        taken = ",".join(f"{j}/{v}" for j, v, _ in self.taken) or "-"
        return (
            f"  #{self.index:<3} {self.role}@{self.slot} frozen {self.seconds:.1f} s  held={held}  "
            f"taken over={taken}  refused={','.join(self.refused) or '-'}"
            + (f"  LATE WRITES={','.join(self.late_writes)}" if self.late_writes else "")
        )


@dataclass(frozen=True)
class CrashReport:
    settings: CrashSettings
    kills: tuple[Kill, ...]
    pauses: tuple[Pause, ...]
    jobs: int
    videos: int
    multipart_videos: int
    links_reads: int
    links_passes: int
    seconds: float
    checks: tuple[Check, ...]

    def histogram(self) -> Counter[str]:
        return Counter(stage for kill in self.kills for stage in kill.stages)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def text(self) -> str:
        per_role = Counter(k.role for k in self.kills)
        per_worker = Counter(f"{k.role}@{k.slot}" for k in self.kills)
        aimed = [k for k in self.kills if k.aim != "any"]
        taken = [p for p in self.pauses if p.taken]
        paused = Counter(p.role for p in self.pauses)
        lines = [
            f"crash run seed={self.settings.seed}, {self.settings.render_workers} render + "
            f"{self.settings.upload_workers} upload workers, leases {self.settings.lease_s:g} s: "
            f"{len(self.kills)} kills survived "
            f"(render {per_role['render']}, upload {per_role['upload']}; "
            f"{sum(k.hit for k in aimed)}/{len(aimed)} aimed kills hit their stage) in {self.seconds:.0f} s",
            "kills per worker: " + ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items())),
            f"{len(self.pauses)} pauses (render {paused['render']}, upload {paused['upload']}):"
            f" {len(taken)} had a claim taken over,"
            f" {sum(len(p.taken) for p in taken)} claims in all, every one refused: "
            f"{all(p.ok for p in self.pauses)}",
            f"{self.jobs} jobs, {self.videos} videos ({self.multipart_videos} multipart), "
            f"links.json parsed {self.links_reads} times in {self.links_passes} passes over all jobs",
            "stages hit (a kill can land in several threads' stages at once):",
        ]
        lines += [
            f"  {stage:<18} {n:>4}" for stage, n in sorted(self.histogram().items(), key=lambda x: -x[1])
        ]
        lines += [
            f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + ("" if c.ok else f": {c.detail}")
            for c in self.checks
        ]
        return "\n".join(lines)

    def kills_text(self) -> str:
        return (
            "\n".join(
                f"  #{k.index:<3} {k.role}@{k.slot} aim={k.aim:<17} {'hit ' if k.hit else 'miss'}"
                f" at {k.age_s:>5.1f} s"
                f"  stages={','.join(sorted(k.stages))}  store[{k.store}]  last={k.last_event}"
                for k in self.kills
            )
            + "\npauses:\n"
            + "\n".join(p.text() for p in self.pauses)
        )


def external_storage(folder: Path, server: EmbeddedS3, bucket: str, prefix: str) -> Storage:
    """A running SeaweedFS (the test session's) as an external endpoint: it outlives every daemon kill.
    Its keys go in a credentials file (0600), as an operator would configure them."""
    keys = folder / "s3-credentials"
    keys.write_text(f"aws_access_key_id={server.access_key}\naws_secret_access_key={server.secret_key}\n")
    keys.chmod(0o600)
    section = {
        "endpoint_url": server.endpoint_url,
        "bucket": bucket,
        "prefix": prefix.rstrip("/"),
        "credentials_file": str(keys),
    }
    return Storage(section, server.client, bucket, prefix.rstrip("/") + "/")


# -- media and jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPlan:
    name: str
    audio: str
    videos: tuple[str, ...]

    def manifest(self) -> dict[str, Any]:
        return {"audio": self.audio, "videos": list(self.videos), "distribute": True}


def write_media(folder: Path) -> None:
    """Small clips (a render takes about a second) and one 960x540 clip that, lossless against the long
    voice, makes an output over 10 MB: three 5 MiB parts."""
    folder.mkdir(parents=True, exist_ok=True)
    write_face_clip(folder / "a.mp4", 1.0, 25, (256, 256), seed=1)
    write_face_clip(folder / "b.mp4", 1.0, 30, (320, 240), seed=2)
    write_face_clip(folder / "c.mp4", 0.8, 25, (384, 288), seed=3)
    write_face_clip(folder / "big.mp4", 1.0, 25, (960, 540), seed=4)
    write_audio(folder / "short.wav", speech_like(1.0, seed=5))
    write_audio(folder / "mid.wav", speech_like(1.4, seed=6))
    write_audio(folder / "long.wav", speech_like(2.6, seed=7))


def plan_job(number: int, rng: random.Random, big: bool) -> JobPlan:
    """A multipart job (one big video) or 1-3 small clips against a short voice."""
    name = f"crash-{number:03d}"
    if big:
        return JobPlan(name, "media/long.wav", ("media/big.mp4",))
    clips = rng.sample(["media/a.mp4", "media/b.mp4", "media/c.mp4"], rng.randint(1, 3))
    return JobPlan(name, rng.choice(["media/short.wav", "media/mid.wav"]), tuple(clips))


def share_overrides(storage: Storage, part_size: int, lease_s: float = 3.0) -> dict[str, Any]:
    size = f"{part_size // MiB}MiB"
    lease = f"{lease_s:g}s"  # short: a pause needs only a few seconds to lose its claim
    overrides: dict[str, Any] = {
        # rescans every second, so they meet the kills often (test_crash_findings E was such a race)
        "inbox": {"settle_time": "0.5s", "rescan_interval": "1s"},
        # kills on purpose, several on one video at times: not to be taken for a video that crashes its worker
        "render": {
            "crf": 0,
            "preset": "ultrafast",
            "batch_size": 8,
            "max_attempts": 1000,
            "lease_seconds": lease,
        },
        "upload": {"multipart_threshold": size, "part_size": size, "part_workers": 1, "lease_seconds": lease},
    }
    if storage.section is not None:
        overrides["storage"] = storage.section
    return overrides


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class _Process:
    role: str
    slot: int
    daemon: Daemon
    started: float = field(default_factory=time.monotonic)
    _ready: bool = False

    def ready(self) -> bool:
        """It logged ROLE_ready: imports, recovery and storage are behind it."""
        self._ready = self._ready or f'"{self.role}_ready"' in self.daemon.output()
        return self._ready


class CrashRun:
    """One seeded run in `root` (a fresh folder); `run()` returns the report. Not reusable."""

    def __init__(self, root: Path, storage: Storage, settings: CrashSettings) -> None:
        spy = py_spy()
        if spy is None:
            raise RuntimeError("the crash suite needs py-spy (pip install py-spy; it is in the test extras)")
        self.spy = spy
        self.settings = settings
        self.storage = storage
        self.share = Share(root / "shared", share_overrides(storage, settings.part_size, settings.lease_s))
        self.view = StoreView(self.share.state)
        self.reader = LinksReader(self.share.outputs)
        self.rng = random.Random(settings.seed)
        self.jobs: list[JobPlan] = []
        self.kills: list[Kill] = []
        self.pauses: list[Pause] = []
        self.procs: dict[tuple[str, int], _Process] = {}
        self._lock = threading.Lock()
        self.want_big = threading.Event()
        self.errors: list[BaseException] = []

    # -- top level
    def run(self) -> CrashReport:
        began = time.monotonic()
        write_media(self.share.inbox / "media")
        self.reader.start()
        for role in ROLES:
            for slot in range(self.settings.workers(role)):
                self._start(role, slot)
        try:
            self._kill_all()
            names = [j.name for j in self.jobs]
            finished = wait_all_done(self.share.outputs, names, self.settings.drain_s, self._check_alive)
            if finished:
                wait_filed(self.share.inbox, 15.0)
            jobs, videos = store_rows(self.share.state)
            checks = self._checks(finished, jobs, videos)
        finally:
            self._shutdown()
        return CrashReport(
            self.settings,
            tuple(sorted(self.kills, key=lambda k: k.index)),
            tuple(sorted(self.pauses, key=lambda p: p.index)),
            len(self.jobs),
            len(videos),
            sum((v["size"] or 0) >= self.settings.part_size for v in videos),
            self.reader.reads,
            self.reader.passes,
            time.monotonic() - began,
            checks,
        )

    def _kill_all(self) -> None:
        """Half the kills for each kind of process, in seeded order; each kind has its own thread. The
        pauses ("pause" in the order) alternate between the kinds too and are done by the same threads, so a
        frozen worker is never frozen, thawed or killed by another thread meanwhile."""
        kills = [ROLES[i % 2] for i in range(self.settings.kills)]
        pauses = [f"pause-{ROLES[i % 2]}" for i in range(self.settings.pauses)]
        order = kills + pauses
        self.rng.shuffle(order)
        drivers = [
            threading.Thread(
                target=self._drive,
                args=(
                    role,
                    [(i, r.startswith("pause")) for i, r in enumerate(order) if r.endswith(role)],
                    random.Random(f"{self.settings.seed}{role}"),
                ),
                name=f"crash-{role}",
            )
            for role in ROLES
        ]
        for _ in range(self.settings.jobs):  # several manifests at once, then a steady trickle
            self._feed(big=len(self.jobs) == 1)
        for driver in drivers:
            driver.start()
        while any(driver.is_alive() for driver in drivers):
            self._keep_fed()
            time.sleep(0.3)
        if self.errors:
            raise self.errors[0]

    def _feed(self, *, big: bool = False) -> None:
        with self._lock:
            plan = plan_job(len(self.jobs), self.rng, big)
            self.jobs.append(plan)
        self.share.drop(f"{plan.name}.yaml", plan.manifest())

    def _keep_fed(self) -> None:
        """A small render backlog at all times (so the drain at the end is short), with a multipart job
        in it while the upload driver aims at multipart stages."""
        if any(self.share.inbox.glob("*.yaml")) or self.view.render_backlog() >= self.settings.render_workers:
            return
        self._feed(big=self.want_big.is_set() and not self.view.big_pending())

    # -- one kind of process
    def _drive(self, role: str, indices: list[tuple[int, bool]], rng: random.Random) -> None:
        try:
            self._drive_kills(role, indices, rng)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self.errors.append(exc)

    def _drive_kills(self, role: str, indices: list[tuple[int, bool]], rng: random.Random) -> None:
        required = list(REQUIRED[role])
        rng.shuffle(required)
        for index, pause in indices:
            if pause:
                paused = self._pause(index, role, rng)
                with self._lock:
                    self.pauses.append(paused)
                continue
            aim = required.pop() if required else rng.choice([*REQUIRED[role], *EXTRA[role], "any", "any"])
            big = aim in ("multipart upload", "completion")
            if big:
                self.want_big.set()
            kill = self._kill(index, role, aim, rng)
            if big:
                self.want_big.clear()
            with self._lock:
                self.kills.append(kill)
            if aim in REQUIRED[role] and aim not in self._hit(role):
                required.insert(0, aim)  # missed: aim at it again after the others
            self._start(role, kill.slot)

    def _hit(self, role: str) -> set[str]:
        with self._lock:
            return {s for k in self.kills if k.role == role for s in k.stages}

    def _kill(self, index: int, role: str, aim: str, rng: random.Random) -> Kill:
        # "any": a random worker at a random moment after start: importing, recovering, working or idle
        if aim == "any":
            proc = self.procs[(role, rng.randrange(self.settings.workers(role)))]
            time.sleep(max(0.0, proc.started + rng.uniform(0.3, 10.0) - time.monotonic()))
            sight, store = self._kill_now(proc)
        else:
            _wait(lambda: bool(self._ready(role)), self.settings.wait_s, 0.05)  # no point sampling imports
            time.sleep(rng.uniform(0.0, 2.0))  # let it work a little: aimed kills vary in time too
            gate = self._gate(role, aim)
            _wait(gate, self.settings.wait_s, 0.005)  # work for that stage in flight (nothing frozen yet)
            deadline = time.monotonic() + self.settings.hunt_s
            found = self._kill_evicting(deadline) if aim == "eviction" else None
            if found is None and aim == "eviction":
                target = self._target(role, rng)
                found = target, self._kill_now(target)
            proc, (sight, store) = found or self._hunt(role, aim, gate, rng, deadline)
        last = proc.daemon.events()
        return Kill(index, role, proc.slot, aim, sight.stages, round(time.monotonic() - proc.started, 2),
                    store, last[-1]["event"] if last else "")  # fmt: skip

    def _ready(self, role: str) -> list[_Process]:
        return [p for (r, _), p in sorted(self.procs.items()) if r == role and p.ready()]

    def _target(self, role: str, rng: random.Random) -> _Process:
        """A worker of the kind that holds a claim (the one doing the work), else any ready one (seeded)."""
        owners = {o for (o,) in self.view.claim_owners(role)}
        ready = self._ready(role) or [p for (r, _), p in sorted(self.procs.items()) if r == role]
        busy = [p for p in ready if worker_name(role, p.slot) in owners]
        return rng.choice(busy or ready)

    def _gate(self, role: str, aim: str) -> Callable[[], bool]:
        """What the job store must show before freezing for this stage is worth it."""
        if aim == "completion":
            return self.view.parts_all_sent
        if aim == "multipart upload":
            return self.view.multipart_open
        return self.view.render_busy if role == "render" else self.view.upload_busy

    def _hunt(
        self, role: str, aim: str, gate: Callable[[], bool], rng: random.Random, deadline: float
    ) -> tuple[_Process, tuple[Sight, str]]:
        """Freeze a worker doing that kind of work, look, and kill it if it is in `aim`; else thaw it and
        look again (maybe at another worker) a little later."""
        while True:
            late = time.monotonic() > deadline
            if not late and not gate():
                time.sleep(0.005)
                continue
            proc = self._target(role, rng)
            pid = proc.daemon.proc.pid
            with frozen(pid):
                sight = look(pid, self.spy)
                if late or aim in sight.stages:
                    return proc, (sight, self._sigkill(proc))
            time.sleep(rng.uniform(0.0, 0.04))

    def _kill_evicting(self, deadline: float) -> tuple[_Process, tuple[Sight, str]] | None:
        """When a video turns ready, hold the store's write lock: the watcher that uploaded it deletes the
        local copy, then waits to record it. Kill it there (the lock is released by our rollback after the
        kill)."""
        while time.monotonic() < deadline:
            for job, output, by in self.view.ready_unevicted():
                proc = next((p for (r, n), p in self.procs.items() if by == worker_name(r, n)), None)
                if proc is None:
                    continue
                with store_write_lock(self.share.state) as held:
                    if not held or self.view.evicted(job, output):
                        continue
                    local = self.share.outputs / job / output
                    _wait(lambda: not local.exists(), 2.0)  # noqa: B023 - used at once
                    return proc, self._kill_now(proc)
            time.sleep(0.002)
        return None

    def _kill_now(self, proc: _Process) -> tuple[Sight, str]:
        pid = proc.daemon.proc.pid
        with frozen(pid):
            sight = look(pid, self.spy)
            return sight, self._sigkill(proc)

    def _sigkill(self, proc: _Process) -> str:
        """SIGKILL the (frozen) process; returns the job store's state at that moment."""
        if proc.daemon.proc.poll() is not None:
            raise AssertionError(
                f"lipsyncd {proc.role}@{proc.slot} exited by itself:\n{proc.daemon.output()[-3000:]}"
            )
        store = self.view.summary()
        proc.daemon.proc.send_signal(signal.SIGKILL)
        proc.daemon.proc.wait(timeout=30)
        return store

    # -- pauses
    def _pause(self, index: int, role: str, rng: random.Random) -> Pause:
        """Freeze a worker that holds a claim for longer than its lease (until another worker takes one of
        its claims over, or lease + 10 s), thaw it, and wait for its log to say the claim was lost."""
        proc, held, logged, began = self._freeze_holding(role, rng)
        try:
            time.sleep(self.settings.lease_s + 2.0)
            _wait(lambda: bool(self._taken(held)), 8.0, 0.05)
            taken = self._taken(held)
            seconds = time.monotonic() - began
        finally:
            proc.daemon.proc.send_signal(signal.SIGCONT)
        refused: tuple[str, ...] = ()
        if taken:
            want = {f"{job}/{video}" for job, video, _ in taken}
            _wait(lambda: want <= set(_refused(proc.daemon.events()[logged:])), 30.0, 0.1)
        after = proc.daemon.events()[logged:]
        refused = tuple(sorted(set(_refused(after))))
        late = tuple(
            f"{e['event']} {e.get('job')}/{e.get('video')}"
            for e in after
            if e.get("event") in ("video_rendered", "video_ready")
            and any((e.get("job"), e.get("video")) == (job, video) for job, video, _ in taken)
        )
        return Pause(index, role, proc.slot, held, taken, round(seconds, 1), refused, late)

    def _freeze_holding(
        self, role: str, rng: random.Random
    ) -> tuple[_Process, tuple[tuple[str, str, int], ...], int, float]:
        """SIGSTOP a worker that holds a claim, read once it is frozen (a short upload may end between
        the look and the signal: thaw and try again, for up to wait_s). Returns the frozen worker, its
        claims, how many log lines it had written, and when it was frozen."""
        deadline = time.monotonic() + self.settings.wait_s
        holding = lambda: bool(self._ready(role) and self.view.claim_owners(role))  # noqa: E731
        while True:
            _wait(holding, self.settings.wait_s, 0.01)
            proc = self._target(role, rng)
            logged = len(proc.daemon.events())
            began = time.monotonic()
            proc.daemon.proc.send_signal(signal.SIGSTOP)
            wait_stopped(proc.daemon.proc.pid, 2.0)
            held = tuple(self.view.claims_of(worker_name(role, proc.slot)))
            if held or time.monotonic() > deadline:
                return proc, held, logged, began
            proc.daemon.proc.send_signal(signal.SIGCONT)
            time.sleep(rng.uniform(0.0, 0.05))

    def _taken(self, held: tuple[tuple[str, str, int], ...]) -> tuple[tuple[str, str, int], ...]:
        """The claims (job, video, epoch) whose row another claim has replaced since."""
        return tuple(c for c in held if self.view.epoch(c[0], c[1]) != c[2])

    def _start(self, role: str, slot: int) -> None:
        self.procs[(role, slot)] = _Process(role, slot, Daemon(self.share, role, "--slot", str(slot)))

    def _check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.daemon.proc.poll() is not None:
                raise AssertionError(
                    f"lipsyncd {proc.role}@{proc.slot} exited:\n{proc.daemon.output()[-3000:]}"
                )

    def _shutdown(self) -> None:
        self.reader.stop.set()
        self.reader.join(timeout=5)
        for proc in self.procs.values():
            proc.daemon.proc.send_signal(signal.SIGCONT)  # a pause cut short by an error
        for proc in self.procs.values():
            proc.daemon.terminate(timeout=90)

    # -- the end
    def _checks(
        self, finished: bool, jobs: list[dict[str, Any]], videos: list[dict[str, Any]]
    ) -> tuple[Check, ...]:
        manifests = {f"{j.name}.yaml": len(j.videos) for j in self.jobs}
        self.reader.stop.set()
        self.reader.join(timeout=5)
        return (
            Check("all jobs done after the last kill", finished, f"not done: {_unfinished(jobs)}"),
            check_jobs(manifests, jobs, videos),
            check_links_match_store(self.share.outputs, jobs, videos),
            check_objects(self.storage.client(), self.storage.bucket, self.storage.prefix, videos),
            check_downloads(self.share.outputs, self.reader),
            *check_history(self.reader),
            *check_files(self.share.root, manifests),
            check_pauses(self.pauses),
        )


def check_pauses(pauses: list[Pause]) -> Check:
    """Every claim taken over while its worker was frozen was refused to it after the thaw (a claim_lost
    or *_abandoned line in its own log), and it logged no success for such a video."""
    bad = [p.text() for p in pauses if not p.ok]
    return Check("a worker paused past its lease had its late writes refused", not bad, "; ".join(bad[:3]))


def _refused(events: list[dict[str, Any]]) -> list[str]:
    """job/video of the lines that say a write was refused or the work given up for a lost claim."""
    kinds = ("claim_lost", "render_abandoned", "upload_abandoned")
    return [f"{e.get('job')}/{e.get('video')}" for e in events if e.get("event") in kinds]


def worker_name(role: str, slot: int) -> str:
    return f"{HOST}:{role}@{slot}"


def _unfinished(jobs: list[dict[str, Any]]) -> list[str]:
    return [f"{j['id']}={j['state']}" for j in jobs if j["state"] != "done"][:10]


def _wait(predicate: Callable[[], bool], timeout: float, every: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
