"""The seeded crash driver (issue 6): real `lipsyncd render` and `lipsyncd upload` processes, fed jobs,
killed with SIGKILL again and again at moments the seed picks, restarted each time; then the invariants.

One thread per process kind does its share of the kills. A kill is either at a random moment (a delay
the seed draws) or aimed at a stage: the driver freezes the process (SIGSTOP), reads its threads' stacks
(crash_probe), kills it there if it is in the stage, else lets it run a few milliseconds and looks again.
Short stages need work to be in flight, so an aimed kill first waits (without freezing) for the job store
to show it: a multipart upload open, all its parts journalled. Eviction is caught with a lever instead:
the driver takes the job store's write lock when a video turns ready, so the watcher deletes the local
copy and then waits to record that; it is killed in between. The stage of every kill is what the stacks
showed at that moment, whatever was aimed at; the report counts them.
"""

from __future__ import annotations

import random
import signal
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
)
from tests.e2e.crash_probe import Sight, StoreView, frozen, look, py_spy, store_write_lock
from tests.e2e.harness import Daemon, Share

MiB = 1 << 20
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
    aim: str  # the stage aimed at, or "any" for a random moment
    stages: frozenset[str]  # what the stacks showed when SIGKILL was sent
    age_s: float  # how long the process had run
    store: str  # the job store's video states at that moment
    last_event: str  # the last line the process logged

    @property
    def hit(self) -> bool:
        return self.aim == "any" or self.aim in self.stages


@dataclass(frozen=True)
class CrashReport:
    settings: CrashSettings
    kills: tuple[Kill, ...]
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
        aimed = [k for k in self.kills if k.aim != "any"]
        lines = [
            f"crash run seed={self.settings.seed}: {len(self.kills)} kills survived "
            f"(render {per_role['render']}, upload {per_role['upload']}; "
            f"{sum(k.hit for k in aimed)}/{len(aimed)} aimed kills hit their stage) in {self.seconds:.0f} s",
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
        return "\n".join(
            f"  #{k.index:<3} {k.role:<6} aim={k.aim:<17} {'hit ' if k.hit else 'miss'} at {k.age_s:>5.1f} s"
            f"  stages={','.join(sorted(k.stages))}  store[{k.store}]  last={k.last_event}"
            for k in self.kills
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


def share_overrides(storage: Storage, part_size: int) -> dict[str, Any]:
    size = f"{part_size // MiB}MiB"
    overrides: dict[str, Any] = {
        # rescans every second, so they meet the kills often (test_crash_findings E was such a race)
        "inbox": {"settle_time": "0.5s", "rescan_interval": "1s"},
        # kills on purpose, several on one video at times: not to be taken for a video that crashes its worker
        "render": {"crf": 0, "preset": "ultrafast", "batch_size": 8, "max_attempts": 1000},
        "upload": {"multipart_threshold": size, "part_size": size, "part_workers": 1},
    }
    if storage.section is not None:
        overrides["storage"] = storage.section
    return overrides


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class _Process:
    role: str
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
        self.share = Share(root / "shared", share_overrides(storage, settings.part_size))
        self.view = StoreView(self.share.state)
        self.reader = LinksReader(self.share.outputs)
        self.rng = random.Random(settings.seed)
        self.jobs: list[JobPlan] = []
        self.kills: list[Kill] = []
        self.procs: dict[str, _Process] = {}
        self._lock = threading.Lock()
        self.want_big = threading.Event()
        self.errors: list[BaseException] = []

    # -- top level
    def run(self) -> CrashReport:
        began = time.monotonic()
        write_media(self.share.inbox / "media")
        self.reader.start()
        for role in ROLES:
            self._start(role)
        try:
            self._kill_all()
            names = [j.name for j in self.jobs]
            finished = wait_all_done(self.share.outputs, names, self.settings.drain_s, self._check_alive)
            jobs, videos = store_rows(self.share.state)
            checks = self._checks(finished, jobs, videos)
        finally:
            self._shutdown()
        return CrashReport(
            self.settings,
            tuple(sorted(self.kills, key=lambda k: k.index)),
            len(self.jobs),
            len(videos),
            sum((v["size"] or 0) >= self.settings.part_size for v in videos),
            self.reader.reads,
            self.reader.passes,
            time.monotonic() - began,
            checks,
        )

    def _kill_all(self) -> None:
        """Half the kills for each kind of process, in seeded order; each kind has its own thread."""
        order = [ROLES[i % 2] for i in range(self.settings.kills)]
        self.rng.shuffle(order)
        drivers = [
            threading.Thread(
                target=self._drive,
                args=(
                    role,
                    [i for i, r in enumerate(order) if r == role],
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
        if any(self.share.inbox.glob("*.yaml")) or self.view.render_backlog() >= 2:
            return
        self._feed(big=self.want_big.is_set() and not self.view.big_pending())

    # -- one kind of process
    def _drive(self, role: str, indices: list[int], rng: random.Random) -> None:
        try:
            self._drive_kills(role, indices, rng)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self.errors.append(exc)

    def _drive_kills(self, role: str, indices: list[int], rng: random.Random) -> None:
        required = list(REQUIRED[role])
        rng.shuffle(required)
        for index in indices:
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
            self._start(role)

    def _hit(self, role: str) -> set[str]:
        with self._lock:
            return {s for k in self.kills if k.role == role for s in k.stages}

    def _kill(self, index: int, role: str, aim: str, rng: random.Random) -> Kill:
        proc = self.procs[role]
        if aim == "any":  # a random moment after start: importing, recovering, working or idle
            time.sleep(max(0.0, proc.started + rng.uniform(0.3, 10.0) - time.monotonic()))
            sight, store = self._kill_now(proc)
        else:
            _wait(proc.ready, self.settings.wait_s, 0.05)  # no point sampling imports
            time.sleep(rng.uniform(0.0, 2.0))  # let it work a little: aimed kills vary in time too
            gate = self._gate(role, aim)
            _wait(gate, self.settings.wait_s, 0.005)  # work for that stage in flight (nothing frozen yet)
            deadline = time.monotonic() + self.settings.hunt_s
            if aim == "eviction":
                sight, store = self._kill_evicting(proc, deadline) or self._kill_now(proc)
            else:
                sight, store = self._hunt(proc, aim, gate, rng, deadline)
        last = proc.daemon.events()
        return Kill(index, role, aim, sight.stages, round(time.monotonic() - proc.started, 2), store,
                    last[-1]["event"] if last else "")  # fmt: skip

    def _gate(self, role: str, aim: str) -> Callable[[], bool]:
        """What the job store must show before freezing for this stage is worth it."""
        if aim == "completion":
            return self.view.parts_all_sent
        if aim == "multipart upload":
            return self.view.multipart_open
        return self.view.render_busy if role == "render" else self.view.upload_busy

    def _hunt(
        self, proc: _Process, aim: str, gate: Callable[[], bool], rng: random.Random, deadline: float
    ) -> tuple[Sight, str]:
        """Freeze, look, and kill if the process is in `aim`; else thaw and look again a little later."""
        pid = proc.daemon.proc.pid
        while True:
            late = time.monotonic() > deadline
            if not late and not gate():
                time.sleep(0.005)
                continue
            with frozen(pid):
                sight = look(pid, self.spy)
                if late or aim in sight.stages:
                    return sight, self._sigkill(proc)
            time.sleep(rng.uniform(0.0, 0.04))

    def _kill_evicting(self, proc: _Process, deadline: float) -> tuple[Sight, str] | None:
        """When a video turns ready, hold the store's write lock: the watcher deletes the local copy, then
        waits to record it. Kill it there (the lock is released by our rollback after the kill)."""
        while time.monotonic() < deadline:
            for job, output in self.view.ready_unevicted():
                with store_write_lock(self.share.state) as held:
                    if not held or self.view.evicted(job, output):
                        continue
                    local = self.share.outputs / job / output
                    _wait(lambda: not local.exists(), 2.0)  # noqa: B023 - used at once
                    return self._kill_now(proc)
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
            raise AssertionError(f"lipsyncd {proc.role} exited by itself:\n{proc.daemon.output()[-3000:]}")
        store = self.view.summary()
        proc.daemon.proc.send_signal(signal.SIGKILL)
        proc.daemon.proc.wait(timeout=30)
        return store

    def _start(self, role: str) -> None:
        self.procs[role] = _Process(role, Daemon(self.share, role))

    def _check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.daemon.proc.poll() is not None:
                raise AssertionError(f"lipsyncd {proc.role} exited:\n{proc.daemon.output()[-3000:]}")

    def _shutdown(self) -> None:
        self.reader.stop.set()
        self.reader.join(timeout=5)
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
        )


def _unfinished(jobs: list[dict[str, Any]]) -> list[str]:
    return [f"{j['id']}={j['state']}" for j in jobs if j["state"] != "done"][:10]


def _wait(predicate: Callable[[], bool], timeout: float, every: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
