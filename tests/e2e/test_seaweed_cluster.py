"""Storage that scales: lipsyncd against a SeaweedFS cluster (1 master with replication 001, 3 volume
servers, a filer and an S3 gateway on 127.0.0.2), started from the same `weed` binary. Stopping one volume
server must lose no object and stop no upload: every volume has a second copy on another server, reads go
to the copy that is left, and writes go to volumes whose two copies are both alive (the master grows new
ones on the two servers left when a bucket has none)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from daemon.distribute.s3 import ensure_bucket, make_client
from daemon.distribute.uploader import MiB, SqliteJournal, UploadResult, UploadSettings, upload_file
from daemon.samples import speech_like, write_audio, write_face_clip
from tests.e2e.harness import Daemon, Share, wait_for
from tests.e2e.test_distribution import done, fetch, journalled_parts
from tests.seaweed_cluster import SeaweedCluster, weed_processes_under

PARTS = UploadSettings(multipart_threshold=5 * MiB, part_size=5 * MiB, retry_base_s=0.2, retry_deadline_s=60)


@pytest.fixture(scope="module")
def seaweed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedCluster]:
    cluster = SeaweedCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout_s=2.0)  # throw-away data: not worth the filer's 15 s gRPC drain
        assert not weed_processes_under(cluster.root), "a weed process outlived the cluster's stop()"


@pytest.fixture
def cluster(seaweed_cluster: SeaweedCluster) -> SeaweedCluster:
    """The module's cluster with all three volume servers up (a previous test may have stopped one)."""
    for index in range(seaweed_cluster.volume_servers):
        seaweed_cluster.start_volume(index)
    return seaweed_cluster


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256_of(client: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def busiest_server(cluster: SeaweedCluster, keys: list[str], bucket: str) -> tuple[int, list[str]]:
    """The volume server holding a copy of the most objects' chunks, and those objects: the stop that
    hurts most."""
    layout = cluster.volume_layout(bucket)
    used = {key: set(cluster.chunk_volumes(key, bucket)) for key in keys}
    counts = Counter(server for vids in used.values() for vid in vids for server in layout[vid])
    url = counts.most_common(1)[0][0]
    index = next(i for i in range(cluster.volume_servers) if cluster.volume_url(i) == url)
    return index, [key for key, vids in used.items() if any(url in layout[vid] for vid in vids)]


def test_objects_survive_one_volume_server_killed_and_writes_go_on(
    cluster: SeaweedCluster, tmp_path: Path
) -> None:
    client, bucket = cluster.client(), cluster.bucket
    stored: dict[str, str] = {}
    for number, size in enumerate([1, 4096, 300_000, 2 * MiB + 7, 5 * MiB]):
        body = os.urandom(size)
        client.put_object(Bucket=bucket, Key=f"survive/put-{number}", Body=body)
        stored[f"survive/put-{number}"] = hashlib.sha256(body).hexdigest()
    journal = SqliteJournal(tmp_path / "journal.db")
    for number in range(2):  # through the project's own uploader: 3 parts each
        big = random_file(tmp_path / f"big-{number}.bin", 12 * MiB + number)
        result = upload_file(client, bucket, f"survive/multipart-{number}", big, journal, PARTS)
        assert result.parts == 3
        stored[result.key] = result.sha256
    layout = cluster.volume_layout(bucket)
    assert layout, "the bucket's volumes are not in the master's /vol/status"
    assert all(len(servers) == 2 for servers in layout.values()), f"001 means two copies: {layout}"
    victim, exposed = busiest_server(cluster, list(stored), bucket)
    assert any(key.startswith("survive/multipart") for key in exposed), "the stop must hit multipart data"

    cluster.stop_volume(victim, signal.SIGKILL)

    assert cluster.volume_url(victim) not in cluster.registered_volume_servers()
    for key, digest in stored.items():
        assert sha256_of(client, bucket, key) == digest, f"{key} changed or was lost with one server down"
    # new writes in the same bucket go to volumes whose two copies are both alive
    body = os.urandom(700_000)
    client.put_object(Bucket=bucket, Key="survive/during-outage", Body=body)
    assert sha256_of(client, bucket, "survive/during-outage") == hashlib.sha256(body).hexdigest()
    # a bucket made during the outage has no volumes yet: the master grows them on the two servers left
    ensure_bucket(client, "grown-in-outage")
    client.put_object(Bucket="grown-in-outage", Key="first", Body=body)
    assert sha256_of(client, "grown-in-outage", "first") == hashlib.sha256(body).hexdigest()
    grown = cluster.volume_layout("grown-in-outage")
    assert grown, "the new bucket got no volumes"
    assert all(len(servers) == 2 for servers in grown.values()), f"still two copies: {grown}"
    assert all(cluster.volume_url(victim) not in servers for servers in grown.values())


def test_control_without_replication_the_same_stop_loses_objects(tmp_path: Path) -> None:
    """The check above can fail: with replication 000 (one copy) the same stop makes objects unreadable."""
    with SeaweedCluster(tmp_path / "single-copy", replication="000") as single:
        once = dataclasses.replace(single.storage_settings(), max_attempts=1)  # a lost object: no retries
        client = make_client(once, single.credentials)
        keys = [f"control/{number}" for number in range(6)]
        for key in keys:
            client.put_object(Bucket=single.bucket, Key=key, Body=os.urandom(400_000))
        victim, exposed = busiest_server(single, keys, single.bucket)
        single.stop_volume(victim, signal.SIGKILL)
        lost = []
        for key in keys:
            try:
                client.get_object(Bucket=single.bucket, Key=key)["Body"].read()
            except botocore.exceptions.ClientError:
                lost.append(key)
        single.stop(timeout_s=2.0)
    assert exposed, "no object had its only copy on the stopped server"
    assert lost == exposed, "exactly the objects whose only copy was on the stopped server are lost"


class HeldClient:
    """The real client, holding back every part after the first `hold_after` until the test releases them, so
    the upload is mid-way (parts in flight) while the volume server shuts down, however fast the stop is; it
    notes when each part was accepted."""

    def __init__(self, client: Any, hold_after: int) -> None:
        self._client, self._hold_after = client, hold_after
        self._lock = threading.Lock()
        self._asked = 0
        self.released = threading.Event()
        self.accepted: list[float] = []

    def upload_part(self, **kwargs: Any) -> Any:
        with self._lock:
            self._asked += 1
            held = self._asked > self._hold_after
        if held and not self.released.wait(60):
            raise TimeoutError("the test never released the held parts")
        answer = self._client.upload_part(**kwargs)
        self.accepted.append(time.monotonic())
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_upload_in_progress_completes_while_a_volume_server_stops(
    cluster: SeaweedCluster, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "render.mp4", 40 * MiB + 11)  # 9 parts of 5 MiB
    client = HeldClient(cluster.client(), hold_after=2)
    first_part = threading.Event()
    outcome: list[UploadResult | BaseException] = []

    def progress(done: int, total: int) -> None:
        if done:
            first_part.set()

    def upload() -> None:
        try:
            settings = dataclasses.replace(PARTS, max_part_workers=2)
            journal = SqliteJournal(tmp_path / "journal.db")
            outcome.append(
                upload_file(
                    client,
                    cluster.bucket,
                    "inflight/render.mp4",
                    source,
                    journal,
                    settings,
                    on_progress=progress,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=upload, name="test-upload")
    worker.start()
    try:
        assert first_part.wait(30), "no part went up within 30 s"
        parts_before = len(client.accepted)
        cluster.stop_volume(2, signal.SIGTERM)  # the graceful stop an operator does for maintenance
        dropped_at = time.monotonic()
        assert not outcome, "the upload finished before the volume server stopped: nothing was proven"
    finally:
        client.released.set()
        worker.join(120)
    assert outcome, "the upload did not end within 120 s"
    assert isinstance(outcome[0], UploadResult), f"the upload failed: {outcome[0]!r}"
    result = outcome[0]
    after = [t for t in client.accepted if t > dropped_at]
    assert result.parts == 9
    assert parts_before < 9, "every part was in before the stop"
    assert after, "no part went up after the master dropped the server"
    assert sha256_of(client, cluster.bucket, result.key) == hashlib.sha256(source.read_bytes()).hexdigest()


def test_daemon_links_download_the_render_with_a_volume_server_killed_midway(
    cluster: SeaweedCluster, tmp_path: Path
) -> None:
    """lipsyncd pointed at the cluster by storage.endpoint_url and a credentials file, as an operator does:
    the upload watcher is paused after its first part, a volume server is killed, the watcher goes on."""
    storage = {
        "endpoint_url": cluster.endpoint_url,
        "bucket": cluster.bucket,
        "prefix": "daemon",
        "credentials_file": str(cluster.write_credentials_file(tmp_path / "s3-credentials")),
    }
    share = Share(
        tmp_path / "shared",
        {
            "storage": storage,
            "upload": {"multipart_threshold": "5MiB", "part_size": "5MiB", "part_workers": 1},
            "render": {"crf": 0, "preset": "ultrafast"},  # lossless 960x540: > 10 MB, three parts or more
        },
    )
    write_face_clip(share.inbox / "media" / "clip.mp4", 1.0, 25, (960, 540), seed=4)
    write_audio(share.inbox / "media" / "voice.wav", speech_like(2.6, seed=7))
    share.drop("scaled.yaml", {"audio": "media/voice.wav", "videos": ["media/clip.mp4"], "distribute": True})
    assert share.lipsyncd("render", "--once").returncode == 0
    upload = Daemon(share, "upload")
    try:
        deadline = time.monotonic() + 60
        while journalled_parts(share.state) < 1:  # tight poll: a part takes milliseconds on loopback
            assert upload.proc.poll() is None, upload.output()[-3000:]
            assert time.monotonic() < deadline, "no part was journalled within 60 s"
            time.sleep(0.002)
        os.kill(upload.proc.pid, signal.SIGSTOP)  # hold it midway while the server goes
        try:
            parts_before = journalled_parts(share.state)
            cluster.stop_volume(0, signal.SIGKILL)
        finally:
            os.kill(upload.proc.pid, signal.SIGCONT)
        links = wait_for(lambda: done(share, "scaled"), 120, "upload finished with a server down", upload)
    finally:
        upload.terminate()
    finished = [e for e in upload.events() if e["event"] == "upload_done"]
    assert len(finished) == 1
    assert finished[0]["parts"] > parts_before, "every part was in before the server was killed"
    video = links["videos"][0]
    assert video["url"].startswith(cluster.endpoint_url + "/"), "the link points at the cluster's gateway"
    assert hashlib.sha256(fetch(video["url"])).hexdigest() == video["sha256"]
