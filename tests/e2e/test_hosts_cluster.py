"""Many hosts on one ledger (issue 13): a real PostgreSQL started by the test, the session's SeaweedFS, one
shared folder, and 3 render + 2 upload "hosts": processes with their own config, state directory and
service.host_name, the shared folder and store.url in common, the inbox polled. One host (render-3) reaches
PostgreSQL only through a TCP relay on 127.0.0.2 that the test cuts and restores.

The hosts run for the whole module; each test drops its own jobs, does its harm, and checks the crash
suite's invariants over everything so far (a reader watches every links.json the whole time)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3
from daemon.samples import speech_like, write_audio, write_face_clip
from tests import postgres
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
)
from tests.e2e.harness import Daemon, Share, wait_for
from tests.tcp_relay import Relay

RENDER_HOSTS = ("render-1", "render-2", "render-3")
UPLOAD_HOSTS = ("upload-1", "upload-2")
CUT_HOST = "render-3"  # its store.url is the relay's
LEASE_S = 3.0
TEMPS_CHECK = "no temp file left in outputs or inbox"  # crash_checks.check_files


@dataclass
class Host:
    name: str
    role: str
    share: Share  # its own config file (and state directory); the shared folder is everyone's
    daemon: Daemon | None = None
    killed: bool = False  # by the test: not to be taken for a crash

    @property
    def worker(self) -> str:
        return f"{self.name}:{self.role}@0"

    def start(self) -> None:
        self.daemon = Daemon(self.share, self.role, "--slot", "0")
        self.killed = False

    def kill9(self) -> None:
        assert self.daemon is not None
        self.killed = True
        self.daemon.kill9()

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.proc.poll() is None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = self.daemon.events() if self.daemon else []
        return [e for e in found if name is None or e.get("event") == name]

    def ready(self) -> bool:
        return bool(self.daemon) and f'"{self.role}_ready"' in self.daemon.output()  # type: ignore[union-attr]


@dataclass
class Fleet:
    root: Path
    url: str  # the ledger's database
    relay: Relay
    storage: dict[str, Any]
    client: Any
    pg: postgres.Cluster
    hosts: dict[str, Host] = field(default_factory=dict)
    manifests: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shared = self.root / "shared"
        relay_url = self.url.replace(
            f"127.0.0.1:{self.pg.port}", f"{self.relay.address[0]}:{self.relay.port}"
        )
        for name in (*RENDER_HOSTS, *UPLOAD_HOSTS):
            url = relay_url if name == CUT_HOST else self.url
            self.hosts[name] = Host(
                name, "render" if name in RENDER_HOSTS else "upload", self._share(name, url)
            )
        self.outputs = self.hosts[RENDER_HOSTS[0]].share.outputs
        self.reader = LinksReader(self.outputs)

    def _share(self, name: str, url: str) -> Share:
        lease = f"{LEASE_S:g}s"
        share = Share(
            self.shared,
            {
                "paths": {"state": str(self.root / f"{name}-state"), "models": str(self.root / "models")},
                "service": {"host_name": name},
                "store": {"url": url},
                "storage": self.storage,
                "inbox": {"observer": "polling", "poll_interval": "0.2s", "settle_time": "0.5s"},
                # lossless: big.mp4 makes a 3-part upload, long enough to be caught holding its claim
                "render": {"preset": "ultrafast", "crf": 0, "max_attempts": 100, "lease_seconds": lease},
                "upload": {
                    "lease_seconds": lease,
                    "multipart_threshold": "5MiB",
                    "part_size": "5MiB",
                    "part_workers": 1,
                },
            },
        )
        config = self.root / f"{name}.yaml"
        share.config.rename(config)
        share.config = config
        return share

    # -- hosts
    def up(self) -> None:
        """Every host running (started again if a test killed it) and ready."""
        for host in self.hosts.values():
            if not host.running():
                host.start()
        for host in self.hosts.values():
            wait_for(host.ready, 120, f"{host.name} ready", host.daemon)

    def alive(self) -> None:
        for host in self.hosts.values():
            assert host.daemon is not None
            if host.daemon.proc.poll() is not None and not host.killed:
                raise AssertionError(f"{host.name} exited:\n{host.daemon.output()[-3000:]}")

    def by_worker(self, worker: str) -> Host:
        return next(h for h in self.hosts.values() if h.worker == worker)

    # -- jobs
    def drop(self, job: str, audio: str, videos: list[str]) -> str:
        self.manifests[f"{job}.yaml"] = len(videos)
        self.hosts[RENDER_HOSTS[0]].share.drop(
            f"{job}.yaml", {"audio": audio, "videos": videos, "distribute": True}
        )
        return job

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as db:
            return db.execute(sql, args).fetchall()

    def rendering(self, job: str, worker: str | None = None) -> list[tuple[str, str, int]]:
        """(video, owner, epoch) of the job's videos being rendered (some frames done) by `worker`/anyone."""
        return [
            (output, owner, epoch)
            for output, owner, epoch in self.rows(
                "SELECT output, owner, epoch FROM videos WHERE job_id = %s AND state = 'rendering'"
                " AND progress > 0",
                job,
            )
            if worker is None or owner == worker
        ]

    def done(self, job: str, timeout: float = 120) -> dict[str, Any]:
        share = self.hosts[RENDER_HOSTS[0]].share

        def finished() -> dict[str, Any] | None:
            self.alive()
            doc = share.links(job)
            return doc if doc and doc["status"] == "done" else None

        return wait_for(finished, timeout, f"job {job} done")  # type: ignore[no-any-return]

    def beats_since(self, moment: float) -> dict[str, bool]:
        """Each worker: has it beaten the registry since `moment` (the database's clock)?"""
        rows = self.rows("SELECT name, last_beat FROM workers")
        return {name: beat > moment for name, beat in rows}

    def db_now(self) -> float:
        return float(self.rows("SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])

    # -- the end
    def checks(self) -> list[Check]:
        jobs, videos = store_rows(self.shared, self.url)
        return [
            check_jobs(self.manifests, jobs, videos),
            check_links_match_store(self.outputs, jobs, videos),
            check_objects(self.client, self.storage["bucket"], self.storage["prefix"] + "/", videos),
            check_downloads(self.outputs, self.reader),
            *check_history(self.reader),
            *check_files(self.shared, self.manifests),
        ]

    def assert_invariants(self, settle_s: float = 20, *, a_host_frozen: bool = False) -> None:
        """The crash suite's checks, once the last eviction and its links.json rewrite are through. While
        a host is frozen (SIGSTOP) its temp file may stand mid-write: that check waits for the thaw."""
        deadline = time.monotonic() + settle_s
        while True:
            self.alive()
            checks = [c for c in self.checks() if not (a_host_frozen and c.name == TEMPS_CHECK)]
            failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
            if not failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not failed, "\n".join(failed)

    def ready_once(self, job: str) -> None:
        """Users saw each video turn ready once and stay so (no ready, then something else)."""
        seen = {out: h.statuses for (j, out), h in self.reader.videos.items() if j == job}
        assert seen, f"the reader never saw {job}"
        assert all(s.count("ready") == 1 and s[-1] == "ready" for s in seen.values()), seen


def write_media(folder: Path) -> None:
    """Tiny clips: a render of `short` takes about a second, of `long` several (it can be hit mid-way);
    big.mp4 against mid.wav makes a multipart upload."""
    folder.mkdir(parents=True, exist_ok=True)
    write_face_clip(folder / "a.mp4", 1.0, 25, (256, 256), seed=1)
    write_face_clip(folder / "b.mp4", 1.0, 25, (256, 256), seed=2)
    write_audio(folder / "short.wav", speech_like(1.0, seed=5))
    write_audio(folder / "long.wav", speech_like(10.0, seed=7))
    write_face_clip(folder / "big.mp4", 1.0, 25, (960, 540), seed=4)  # with mid.wav: over 10 MB
    write_audio(folder / "mid.wav", speech_like(2.6, seed=6))


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.Cluster]:
    """A cluster of the module's own: one test restarts it."""
    reason = postgres.unavailable()
    if reason:
        pytest.skip(f"no PostgreSQL for the hosts cluster: {reason}")
    cluster = postgres.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, pg: postgres.Cluster, embedded_s3: EmbeddedS3
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("hosts")
    keys = root / "s3-credentials"
    keys.write_text(
        f"aws_access_key_id={embedded_s3.access_key}\naws_secret_access_key={embedded_s3.secret_key}\n"
    )
    keys.chmod(0o600)
    storage = {
        "endpoint_url": embedded_s3.endpoint_url,
        "bucket": embedded_s3.settings.bucket,
        "prefix": f"tests/hosts-{uuid.uuid4().hex[:8]}",
        "credentials_file": str(keys),
    }
    relay = Relay(("127.0.0.1", pg.port)).start()
    fleet = Fleet(root, pg.database(), relay, storage, embedded_s3.client(), pg)
    write_media(fleet.shared / "inbox" / "media")
    fleet.reader.start()
    try:
        fleet.up()
        yield fleet
    finally:
        fleet.reader.stop.set()
        for host in fleet.hosts.values():
            if host.daemon is not None:
                host.daemon.proc.send_signal(signal.SIGCONT)
                host.daemon.terminate(timeout=60)
        relay.close()


# -- the tests --------------------------------------------------------------------------------------------


def test_one_manifest_seen_by_every_host_at_once_makes_one_job(fleet: Fleet) -> None:
    """The render hosts are frozen while manifests are dropped, then thawed together: all three poll the
    shared inbox and find the same settled manifests at once. Each becomes one job (no NAME-2), queued by
    one host (the others lose the rename into .claimed/, or find the manifest taken in the ledger)."""
    fleet.up()
    renders = [fleet.hosts[n] for n in RENDER_HOSTS]
    for host in renders:
        host.daemon.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        names = [fleet.drop(f"same-{n}", "media/short.wav", ["media/a.mp4"]) for n in range(3)]
        time.sleep(0.6)  # past inbox.settle_time (0.5 s): settled when the hosts look
    finally:
        for host in renders:
            host.daemon.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    started = time.monotonic()
    for name in names:
        fleet.done(name)
    took = time.monotonic() - started
    queued = [e["job"] for h in renders for e in h.events("job_queued") if e["job"].startswith("same-")]
    assert sorted(queued) == names, "each manifest queued once, by one host"
    elsewhere = [e for h in renders for e in h.events() if e.get("event", "").endswith("_elsewhere")]
    # on one local disk the atomic rename into .claimed/ settles most races before the ledger's take does
    # (a loser finds the file gone); on a network share the take decides (functional/test_shared_intake)
    fleet.assert_invariants()
    for name in names:
        fleet.ready_once(name)
    print(f"3 manifests, 3 jobs, done {took:.1f} s after the thaw; {len(elsewhere)} found taken elsewhere")


def test_a_host_killed_mid_render_loses_its_video_to_another_after_the_lease(fleet: Fleet) -> None:
    """kill -9 the host rendering a video: after its lease another render host takes the video (epoch 2)
    and the video is ready once as users see it; the killed host's row in the registry goes stale."""
    fleet.up()
    job = fleet.drop("killed", "media/long.wav", ["media/a.mp4"])
    (video, owner, epoch), *_ = wait_for(lambda: fleet.rendering(job), 60, "a host rendering the video")
    killed = fleet.by_worker(owner)
    killed.kill9()
    began = time.monotonic()
    links = fleet.done(job)
    took = time.monotonic() - began
    shown = links["videos"][0]
    assert shown["worker"] != owner, shown
    assert shown["worker"].endswith(":render@0"), shown
    # two render claims (the killed one, the one after the lease), then an upload claim
    ((epoch_now, attempts, state),) = fleet.rows(
        "SELECT epoch, attempts, state FROM videos WHERE job_id = %s", job
    )
    assert (attempts, state) == (2, "ready")
    assert epoch_now >= epoch + 2
    taker = fleet.by_worker(shown["worker"])
    assert [e["previous"] for e in taker.events("lease_taken_over") if e["job"] == job] == [owner]
    fleet.up()  # the killed host back, for the tests after this one
    fleet.assert_invariants()
    fleet.ready_once(job)
    print(f"killed {killed.name} mid-render of {video}; ready {took:.1f} s later via {taker.name}")


def test_a_host_paused_past_its_lease_has_every_late_write_refused(fleet: Fleet) -> None:
    """SIGSTOP the host rendering a video past its lease; another takes the video over and publishes it.
    SIGCONT: its late heartbeat is refused (claim_lost), its render abandoned: no completion, no publish
    over the new owner's file, no links.json write (the same bytes and row)."""
    fleet.up()
    job = fleet.drop("paused", "media/long.wav", ["media/b.mp4"])
    (video, owner, epoch), *_ = wait_for(lambda: fleet.rendering(job), 60, "a host rendering the video")
    paused = fleet.by_worker(owner)
    assert paused.daemon is not None
    logged = len(paused.events())
    paused.daemon.proc.send_signal(signal.SIGSTOP)
    try:
        links = fleet.done(job)
        fleet.assert_invariants(a_host_frozen=True)  # uploaded, evicted, and links.json says so
        final = fleet.outputs / job / video
        page = fleet.outputs / job / "links.json"
        before = page.read_bytes()
        rows = fleet.rows("SELECT owner, epoch, attempts, state, sha256 FROM videos WHERE job_id = %s", job)
    finally:
        paused.daemon.proc.send_signal(signal.SIGCONT)

    def after() -> list[dict[str, Any]]:
        return paused.events()[logged:]

    lost = wait_for(
        lambda: [e for e in after() if e.get("event") == "claim_lost"], 30, "claim_lost", paused.daemon
    )
    assert (lost[0]["job"], lost[0]["video"], lost[0]["worker"], lost[0]["epoch"]) == (
        job,
        video,
        owner,
        epoch,
    )
    wait_for(
        lambda: [e for e in after() if e.get("event") == "render_abandoned"],
        30,
        "render_abandoned",
        paused.daemon,
    )
    assert not [e for e in after() if e.get("event") == "video_rendered"]
    assert links["videos"][0]["worker"] != owner
    assert rows[0][0] != owner
    assert rows[0][1] > epoch
    # its late writes changed nothing: the row, the view, and no file published over the new owner's
    assert (
        fleet.rows("SELECT owner, epoch, attempts, state, sha256 FROM videos WHERE job_id = %s", job) == rows
    )
    assert page.read_bytes() == before
    assert not [e for e in after() if e.get("event") == "links_view_repaired"]
    assert not final.exists(), "nothing published again after the eviction"
    fleet.assert_invariants()  # the one object's bytes are the new owner's render (check_downloads)
    fleet.ready_once(job)


def test_an_upload_host_paused_past_its_lease_has_its_late_writes_refused(fleet: Fleet) -> None:
    """SIGSTOP the upload host sending a multipart upload, past its lease: the other upload host takes the
    upload over, makes the video ready and evicts the local copy. SIGCONT: its late heartbeat or write is
    refused (claim_lost); it logs no video_ready, and the row, links.json and the one object stay the new
    owner's."""
    import psycopg

    fleet.up()
    job = fleet.drop("upload-paused", "media/mid.wav", ["media/big.mp4"])
    uploads = [fleet.hosts[n] for n in UPLOAD_HOSTS]
    with psycopg.connect(fleet.url, autocommit=True) as db:
        query = "SELECT owner, epoch FROM videos WHERE job_id = %s AND state = 'uploading'"
        deadline = time.monotonic() + 90
        while not (held := db.execute(query, (job,)).fetchall()):  # polled as fast as it answers
            assert time.monotonic() < deadline, "no upload claim seen"
        owner, epoch = held[0]
        paused = fleet.by_worker(owner)
        assert paused.daemon is not None
        logged = len(paused.events())
        paused.daemon.proc.send_signal(signal.SIGSTOP)
        try:
            still = db.execute(query, (job,)).fetchall()
            if still != [(owner, epoch)]:
                pytest.skip(f"the upload ended before the pause reached it ({still}); nothing frozen mid-way")
            links = fleet.done(job)
            fleet.assert_invariants(a_host_frozen=True)  # the eviction and its links.json rewrite are through
            page = fleet.outputs / job / "links.json"
            before = page.read_bytes()
            columns = "owner, epoch, state, url, uploaded_by, object_key"
            rows = fleet.rows(f"SELECT {columns} FROM videos WHERE job_id = %s", job)
        finally:
            paused.daemon.proc.send_signal(signal.SIGCONT)

    def after() -> list[dict[str, Any]]:
        return paused.events()[logged:]

    lost = wait_for(
        lambda: [e for e in after() if e.get("event") == "claim_lost"], 30, "claim_lost", paused.daemon
    )
    assert (lost[0]["job"], lost[0]["worker"], lost[0]["epoch"]) == (job, owner, epoch)
    time.sleep(LEASE_S)  # what it does once thawed (its upload finds the local copy gone) is done by now
    # its upload may go on and find the local copy evicted by the new owner: abandoned, not a failure
    assert not [e for e in after() if e.get("event") in ("video_ready", "upload_failed")], after()
    (other,) = [h for h in uploads if h is not paused]
    assert links["videos"][0]["uploaded_by"] == other.worker
    assert rows[0][4] == other.worker
    assert rows[0][1] > epoch
    assert fleet.rows(f"SELECT {columns} FROM videos WHERE job_id = %s", job) == rows
    fleet.assert_invariants()  # one object per video, and its bytes are the rendered ones
    fleet.ready_once(job)
    # what users read is what it was before the thaw, and the thawed host wrote no view of it (the new
    # owner's view check may rewrite the same bytes: a new inode is no late write)
    now = page.read_bytes()
    assert now == before, f"links.json changed after the thaw:\n{before.decode()}\n---\n{now.decode()}"
    assert not [e for e in after() if e.get("event") == "links_view_repaired" and e.get("job") == job]


def test_a_host_cut_off_from_postgresql_comes_back_and_its_late_writes_are_refused(fleet: Fleet) -> None:
    """Cut render-3's road to PostgreSQL (the relay drops its connections and refuses new ones) while it
    renders: its lease lapses, another host renders the video; restored, render-3 reconnects (its
    registry row beats again), its stale completion is refused, and every video is ready once."""
    fleet.up()
    cut = fleet.hosts[CUT_HOST]
    others = [fleet.hosts[n] for n in RENDER_HOSTS if n != CUT_HOST]
    for host in others:  # render-3 takes the job's first video: the others wait frozen meanwhile
        host.daemon.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        job = fleet.drop("cut", "media/long.wav", ["media/a.mp4", "media/b.mp4"])
        (video, owner, epoch), *_ = wait_for(
            lambda: fleet.rendering(job, cut.worker), 60, f"{CUT_HOST} rendering", cut.daemon
        )
        logged = len(cut.events())
        fleet.relay.cut()
    finally:
        for host in others:
            host.daemon.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    try:
        wait_for(
            lambda: (
                fleet.rows("SELECT epoch FROM videos WHERE job_id = %s AND output = %s", job, video)[0][0]
                > epoch
            ),
            60,
            "the video taken over by another host",
        )
    finally:
        cut_at = fleet.db_now()
        fleet.relay.restore()
    links = fleet.done(job)
    wait_for(lambda: fleet.beats_since(cut_at).get(cut.worker), 30, f"{CUT_HOST} beating again", cut.daemon)

    def refused() -> list[dict[str, Any]]:
        # a render finished while cut off writes its completion again every second: the beat that shows
        # the host back can come just before the refused write
        return [
            e
            for e in cut.events()[logged:]
            if e.get("event") in ("claim_lost", "render_abandoned") and e.get("video") == video
        ]

    wait_for(refused, 30, f"{CUT_HOST}'s late completion refused", cut.daemon)
    after = cut.events()[logged:]
    assert not [e for e in after if e.get("event") == "video_rendered" and e.get("video") == video]
    assert {v["output"]: v["worker"] for v in links["videos"]}[video] != owner
    fleet.assert_invariants()
    fleet.ready_once(job)


def test_postgresql_restarted_mid_run_loses_and_doubles_nothing(fleet: Fleet) -> None:
    """Stop PostgreSQL (-m fast: every connection dropped) while renders run, keep it down 2 s (connections
    refused: longer than a worker's loop, its beats and a progress write), start it again: every host waits
    and reconnects (beats the registry again), no render is failed for it, and every video is rendered,
    uploaded and ready once."""
    fleet.up()
    job = fleet.drop("restart", "media/long.wav", ["media/a.mp4", "media/b.mp4"])
    wait_for(lambda: len(fleet.rendering(job)) == 2, 60, "both videos rendering, on two hosts")
    logged = {name: len(host.events()) for name, host in fleet.hosts.items()}
    began = time.monotonic()
    fleet.pg.restart(down_s=2.0)
    restarted_at = fleet.db_now()
    down = time.monotonic() - began
    links = fleet.done(job, 180)
    wait_for(lambda: all(fleet.beats_since(restarted_at).values()), 30, "every worker beating again")
    assert [v["status"] for v in links["videos"]] == ["ready", "ready"]
    failures = ("render_crashed", "job_crashed", "video_failed", "upload_failed", "upload_worker_crashed")
    said = [
        f"{name}: {e['event']}"
        for name, host in fleet.hosts.items()
        for e in host.events()[logged[name] :]
        if e.get("event") in failures
    ]
    assert not said, said
    waited = [
        name
        for name, h in fleet.hosts.items()
        if any("ledger" in e.get("event", "") for e in h.events()[logged[name] :])
    ]
    fleet.assert_invariants()
    fleet.ready_once(job)
    print(f"PostgreSQL down and up again in {down:.1f} s; hosts that saw it: {waited}")
