"""The `cluster` benchmark section (issue 13, "Measure"): several render hosts on one PostgreSQL ledger,
with a fixed-cost stand-in for the render (daemon/bench/standin.py) so the CPU is not the limit and what
is measured is the ledger's path: intake, claims with SKIP LOCKED and leases, heartbeats, progress writes,
the fenced completion and links.json.

A "host" is one render worker process (`python -m daemon.bench.standin ... render --slot 0`) with its own
config and state folder, sharing the inbox and outputs folders and `store.url`. As root each runs in a
UTS namespace of its own with a host name of its own (`bench-host-K`), so worker names, the registry and
intake are those of distinct hosts; otherwise host K is slot K of this host and sets its application_name
in the URL. Uploads are off (manifests say `distribute: false`): storage is not measured.

Figures: jobs per minute for 1, 2 and 4 hosts (jobs of one video each, all dropped at once; from the drop
to the last job done) and the scaling efficiency against 1 host; claim latency (idle hosts, one job at a
time: from the job's row committed to its video's claim) and the claim call's own duration under load;
takeover time after `kill -9` of the host holding a claim (from the kill to another host's claim, against
the configured lease); database connections per host (pg_stat_activity, by application_name, sampled).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from daemon.bench import postgres
from daemon.bench.core import BenchContext, Check, SectionResult
from daemon.bench.machine import busy_cpu_seconds, wait_for_quiet
from daemon.bench.modelonly import baseline_folder
from daemon.bench.standin import COST_ENV
from daemon.files import write_atomic
from daemon.store import JobState, JobStore, VideoState

log = structlog.get_logger(__name__)

READY_WAIT_S = 120.0
FINISHED = (JobState.DONE, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED)
_HOST = re.compile(r"bench-host-(\d+)")


@dataclass(frozen=True)
class Plan:
    hosts: tuple[int, ...]  # host counts measured, one after another
    jobs: int  # jobs of one video each, per host count
    cost_s: float  # the stand-in's time per video
    lease_s: float  # render.lease_seconds
    latency_jobs: int  # jobs dropped one at a time for the claim latency
    takeovers: int  # kill -9 trials (on the largest set of hosts; at most hosts - 1)


FULL = Plan(hosts=(1, 2, 4), jobs=40, cost_s=2.0, lease_s=6.0, latency_jobs=10, takeovers=3)
QUICK = Plan(hosts=(1, 2), jobs=4, cost_s=0.2, lease_s=2.0, latency_jobs=2, takeovers=1)


@dataclass
class Throughput:
    hosts: int
    jobs: int
    seconds: float  # the drop -> the last job done
    claim_ms: list[float]  # each successful claim call's duration
    connections: dict[str, int]  # most connections seen at once, per host
    other_cpu_s: float
    per_host_videos: dict[str, int] = field(default_factory=dict)

    @property
    def per_minute(self) -> float:
        return self.jobs * 60.0 / self.seconds if self.seconds else 0.0


def cluster_section(ctx: BenchContext) -> SectionResult:
    plan = QUICK if ctx.quick else FULL
    reason = postgres.unavailable()
    if reason:
        raise RuntimeError(f"the cluster benchmark needs a throwaway PostgreSQL: {reason}")
    video = ctx.inputs.clip((128, 128), 1.0)
    audio = ctx.inputs.speech(1.0)
    model = baseline_folder(ctx.options.work_dir / "models")
    cluster = postgres.start()
    runs: list[Throughput] = []
    latencies: list[float] = []
    takeovers: list[Takeover] = []
    try:
        for count in plan.hosts:
            wait_for_quiet(ctx.options.quiet_wait)
            root = ctx.options.work_dir / "cluster" / f"{count}"
            with Hosts.started(root, count, cluster.database(), plan, (model, video, audio)) as hosts:
                runs.append(hosts.throughput(plan.jobs))
                if count == plan.hosts[-1]:
                    latencies = hosts.claim_latencies(plan.latency_jobs)
                    takeovers = [hosts.takeover() for _ in range(min(plan.takeovers, count - 1))]
    finally:
        cluster.stop()
    return _result(plan, runs, latencies, takeovers)


# -- hosts ------------------------------------------------------------------------------------------------


@dataclass
class Host:
    number: int
    proc: subprocess.Popen[bytes]
    log: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        lines = [line for line in text.splitlines() if line.startswith("{") and f'"{name}"' in line]
        return [e for e in map(json.loads, lines) if e.get("event") == name]


@dataclass
class Takeover:
    seconds: float  # kill -> another host's claim
    lease_left_s: float  # what remained of the victim's lease when it was killed


class Hosts:
    """`count` stand-in render hosts on one fresh database and one fresh shared folder."""

    def __init__(self, root: Path, hosts: list[Host], url: str, plan: Plan) -> None:
        self.root, self.hosts, self.url, self.plan = root, hosts, url, plan
        self.store = JobStore(root / "bench-state", url=url)
        self._dropped = 0

    @classmethod
    @contextmanager
    def started(
        cls, root: Path, count: int, url: str, plan: Plan, media: tuple[Path, Path, Path]
    ) -> Iterator[Hosts]:
        model, video, audio = media
        shutil.rmtree(root, ignore_errors=True)
        (root / "inbox" / "media").mkdir(parents=True)
        shutil.copy(video, root / "inbox" / "media" / "v.mp4")
        shutil.copy(audio, root / "inbox" / "media" / "speech.wav")
        hosts = [_start_host(root, k, url, plan, model) for k in range(count)]
        try:
            _wait(lambda: all(h.events("render_ready") for h in hosts), READY_WAIT_S, "hosts ready", hosts)
            self = cls(root, hosts, url, plan)
            try:
                yield self
            finally:
                self.store.close()
        finally:
            for host in hosts:
                if host.proc.poll() is None:
                    host.proc.send_signal(signal.SIGTERM)
            for host in hosts:
                host.proc.wait(timeout=60)

    def drop(self, jobs: int) -> list[str]:
        names = []
        for _ in range(jobs):
            name = f"job-{self._dropped:03d}"
            self._dropped += 1
            manifest = {"audio": "media/speech.wav", "videos": ["media/v.mp4"], "distribute": False}
            write_atomic(self.root / "inbox" / f"{name}.yaml", yaml.safe_dump(manifest))
            names.append(name)
        return names

    def _finished(self, total: int) -> bool:
        jobs = self.store.jobs()
        bad = [j for j in jobs if j.state in (JobState.FAILED, JobState.PARTIAL, JobState.CANCELLED)]
        if bad:
            raise RuntimeError(f"bench cluster: job {bad[0].id} ended {bad[0].state}: {bad[0].error}")
        return len(jobs) == total and all(j.state in FINISHED for j in jobs)

    def throughput(self, jobs: int) -> Throughput:
        live = [h for h in self.hosts if h.proc.poll() is None]
        claims_before = sum(len(h.events("bench_claim")) for h in live)
        busy_before = busy_cpu_seconds()
        with _Sampler(self.url) as sampler:
            started = time.time()
            self.drop(jobs)
            _wait(lambda: self._finished(jobs), 60 + jobs * self.plan.cost_s * 3, "all jobs done", live)
            seconds = max(j.updated for j in self.store.jobs()) - started
        self._check_links()
        claims = [e for h in live for e in h.events("bench_claim")]
        assert len(claims) >= claims_before
        won = [e for e in claims if e["claimed"]]
        per_host = {
            f"bench-host-{h.number}": len([e for e in h.events("bench_claim") if e["claimed"]]) for h in live
        }
        other = max(0.0, busy_cpu_seconds() - busy_before)
        return Throughput(
            len(live), jobs, seconds, [float(e["ms"]) for e in won], sampler.most, round(other, 1), per_host
        )

    def _check_links(self) -> None:
        """Every job's links.json names its rendered video: the links path ran, not only the ledger."""
        for job in self.store.jobs():
            links = json.loads((self.root / "outputs" / job.id / "links.json").read_text())
            if "v.mp4" not in json.dumps(links):
                raise RuntimeError(f"bench cluster: links.json of job {job.id} does not name its video")

    def claim_latencies(self, jobs: int) -> list[float]:
        """Idle hosts; one job at a time: its video's claim (the claiming worker's clock) minus the job's
        row committed (jobs.created, the ledger's clock: the same machine's)."""
        out = []
        for _ in range(jobs):
            before = {j.id for j in self.store.jobs()}
            total = len(before) + 1
            self.drop(1)
            _wait(
                functools.partial(self._finished, total),
                60 + self.plan.cost_s * 3,
                "the job done",
                self.hosts,
            )
            (job,) = [j for j in self.store.jobs() if j.id not in before]
            claim = min(self._claims_of(job.id))
            out.append(claim - job.created)
        return out

    def _claims_of(self, job_id: str) -> list[float]:
        return [
            float(e["at"])
            for h in self.hosts
            for e in h.events("bench_claim")
            if (e["claimed"] or "").startswith(f"{job_id}/")
        ]

    def takeover(self) -> Takeover:
        """Kill -9 the host holding a fresh video's claim; time until another host claims it."""
        total = len(self.store.jobs()) + 1
        self.drop(1)
        holder = self._wait_for_holder(total)
        job_id, output, owner = holder
        victim = next(h for h in self.hosts if f"bench-host-{h.number}" in owner)
        killed = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        video = self.store.video(job_id, output)
        assert video is not None and video.lease_until is not None
        lease_left = video.lease_until - killed  # the ledger's clock is this machine's
        victim.proc.wait(timeout=30)
        wait = 60 + self.plan.lease_s * 3
        _wait(lambda: self._finished(total), wait, "the job taken over and done", self.hosts)
        taken = [t for t in self._claims_of(job_id) if t > killed]
        if not taken:
            raise RuntimeError(f"bench cluster: no host claimed {job_id}/{output} after the kill")
        return Takeover(min(taken) - killed, lease_left)

    def _wait_for_holder(self, total: int) -> tuple[str, str, str]:
        found: list[tuple[str, str, str]] = []

        def held() -> bool:
            jobs = self.store.jobs()
            if len(jobs) < total:
                return False
            for video in self.store.videos(max(jobs, key=lambda j: j.created).id):
                if video.state == VideoState.RENDERING and video.owner:
                    found.append((video.job_id, video.output, video.owner))
                    return True
            return False

        _wait(held, 60, "a host claiming the job", self.hosts, step=0.01)
        return found[0]


def _start_host(root: Path, number: int, url: str, plan: Plan, model: Path) -> Host:
    name = f"bench-host-{number}"
    as_root = os.geteuid() == 0 and shutil.which("unshare") is not None
    settings = {
        "paths": {
            "shared": ".",
            "inbox": "inbox",
            "outputs": "outputs",
            "state": f"state-{name}",  # each host's own state folder, as on its own local disk
            "models": str(model.parent.resolve()),
        },
        "store": {"url": url if as_root else f"{url}?application_name={name}"},
        "inbox": {"settle_time": "100ms"},
        "render": {"model": model.name, "workers": 1, "providers": "cpu", "lease_seconds": plan.lease_s},
    }
    config = root.resolve() / f"{name}.yaml"  # the host runs in root: a relative path would miss
    write_atomic(config, yaml.safe_dump(settings))
    slot = 0 if as_root else number
    argv = [
        sys.executable,
        "-m",
        "daemon.bench.standin",
        "--config",
        str(config),
        "render",
        "--slot",
        str(slot),
    ]
    if as_root:  # a host name of its own: what pg_stat_activity, worker names and the registry show
        argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', name, *argv]
    log_path = root / f"{name}.log"
    env = {**os.environ, COST_ENV: str(plan.cost_s)}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Host(number, proc, log_path)


class _Sampler(threading.Thread):
    """The most connections each host held at once (pg_stat_activity by application_name)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.most, self._done = url, dict[str, int](), threading.Event()

    def __enter__(self) -> _Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, application_name="bench sampler") as conn:
            while not self._done.wait(0.1):
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() GROUP BY application_name"
                ).fetchall()
                for name, count in rows:
                    match = _HOST.search(name or "")
                    if match:
                        key = f"bench-host-{match.group(1)}"
                        self.most[key] = max(self.most.get(key, 0), int(count))


def _wait(done: Callable[[], bool], timeout: float, what: str, hosts: list[Host], step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        dead = [h for h in hosts if h.proc.poll() not in (None, -signal.SIGKILL)]
        if dead:
            raise RuntimeError(f"bench cluster: bench-host-{dead[0].number} exited; see {dead[0].log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench cluster: {what} not within {timeout:g} s")
        time.sleep(step)


# -- the figures ------------------------------------------------------------------------------------------


def _pct(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _result(
    plan: Plan, runs: list[Throughput], latencies: list[float], takeovers: list[Takeover]
) -> SectionResult:
    one = runs[0].per_minute
    ideal = 60.0 / plan.cost_s  # one host's ceiling: back-to-back videos, zero overhead
    rows: list[dict[str, Any]] = []
    for run in runs:
        rows.append(
            {
                "part": "throughput",
                "hosts": run.hosts,
                "jobs": run.jobs,
                "seconds": round(run.seconds, 2),
                "jobs_per_min": round(run.per_minute, 1),
                "vs_ideal": f"{run.per_minute / (ideal * run.hosts):.0%}",
                "scaling_vs_1_host": f"{run.per_minute / (one * run.hosts):.0%}",
                "claim_ms_p50": round(_pct(run.claim_ms, 0.5), 2),
                "claim_ms_p95": round(_pct(run.claim_ms, 0.95), 2),
                "db_connections_per_host": sorted(run.connections.values()),
                "videos_per_host": run.per_host_videos,
                "other_cpu_s": run.other_cpu_s,
            }
        )
    rows.append(
        {
            "part": "claim latency (idle hosts, one job at a time)",
            "hosts": runs[-1].hosts,
            "jobs": len(latencies),
            "ms_p50": round(_pct(latencies, 0.5) * 1000, 1),
            "ms_p95": round(_pct(latencies, 0.95) * 1000, 1),
            "ms_max": round(max(latencies, default=0.0) * 1000, 1),
        }
    )
    for n, taken in enumerate(takeovers, 1):
        rows.append(
            {
                "part": "takeover after kill -9",
                "trial": n,
                "lease_s": plan.lease_s,
                "lease_left_at_kill_s": round(taken.lease_left_s, 2),
                "seconds": round(taken.seconds, 2),
            }
        )
    checks = []
    if len(runs) > 1:
        last = runs[-1]
        scaling = last.per_minute / (one * last.hosts)
        checks.append(
            Check(
                f"scaling, {last.hosts} hosts vs 1", ">= 80% (near linear)", f"{scaling:.0%}", scaling >= 0.8
            )
        )
    for taken in takeovers:
        bound = plan.lease_s + 2.0  # the lease, then a poll (1 s) and the claim
        checks.append(
            Check(
                "takeover after kill -9",
                f"<= lease + 2 s ({bound:g} s)",
                f"{taken.seconds:.2f} s",
                taken.seconds <= bound,
            )
        )
    isolation = "a UTS namespace and host name each" if os.geteuid() == 0 else "slot K of this host"
    notes = [
        f"each host: one `lipsyncd render` worker process ({isolation}, own state folder) with a fixed-cost "
        f"stand-in render of {plan.cost_s:g} s per video (frames at 25/s with progress writes and stop "
        "checks); shared inbox/outputs, one PostgreSQL ledger (throwaway cluster, fsync off), no upload",
        f"throughput: {plan.jobs} jobs of one video dropped at once, timed from the drop to the last job "
        f"done; ideal for one host {ideal:g} jobs/min; scaling = jobs/min / (hosts x 1 host's jobs/min)",
        "claim ms: the claim_next_video call's own duration under that load (successful claims)",
        f"claim latency: from the job's row committed (jobs.created) to its video's claim; lease "
        f"{plan.lease_s:g} s (renewed every third); db connections: most seen at once per host",
        f"{os.cpu_count()} CPU cores: all hosts share them",
    ]
    if takeovers:
        mean = statistics.mean(t.seconds for t in takeovers)
        notes.append(f"takeover: mean {mean:.2f} s against a {plan.lease_s:g} s lease")
    return SectionResult(rows, checks, notes)
