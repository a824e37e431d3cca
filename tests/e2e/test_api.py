"""`lipsyncd api` as clients see it: a real uvicorn server on loopback, a real HTTP client (httpx).

One server (module-scoped, no watchers running) answers the door's checks: tokens and rights, uploads
and share paths becoming manifests through `lipsyncd submit`'s code, hostile file names, limits, a full
disk, a client gone mid-upload, Idempotency-Key, ETag and rate limits. The last test runs the whole
product (`lipsyncd run` + the API): submit over HTTP, wait on the event stream, download every link."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from daemon.api.tokens import add_token, parse_rights
from daemon.inbox import Inbox
from daemon.manifest import load_manifest
from daemon.store import JobStore
from tests.e2e.harness import REPO, Daemon, Share, wait_for
from tests.e2e.sandbox import can_mount, tmpfs

DEMO = REPO / "examples" / "demo"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Api:
    """A running `lipsyncd api` and tokens for it."""

    def __init__(self, share: Share, *rights: str) -> None:
        self.share, self.port = share, free_port()
        tokens = share.state / "api-tokens.json"  # as `lipsyncd api token add` writes (tested below)
        self.tokens = {r: add_token(tokens, r.replace(",", "-"), parse_rights(r)) for r in rights}
        self.daemon = Daemon(share, "api", "--listen", f"127.0.0.1:{self.port}")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._up, 30, "the API listening", self.daemon)

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, right: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[right]}"} if right else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events() if e.get("event") == name]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    share = Share(
        root / "shared", {"api": {"max_upload_bytes": "4MiB", "min_free_bytes": 0, "rate_limit": 20}}
    )
    for name in ("anchor.mp4", "speech.wav"):
        (share.root / "media").mkdir(exist_ok=True)
        (share.root / "media" / name).write_bytes((DEMO / name).read_bytes())
    server = Api(share, "submit,read", "read", "all")
    yield server
    server.daemon.terminate()
    logged = server.daemon.output()
    assert all(token not in logged for token in server.tokens.values()), "a token reached the log"
    errors = [e for e in server.daemon.events() if e.get("level") == "error"]
    assert not errors, errors  # a client gone mid-upload, a full disk: warnings, never a traceback


def manifests(share: Share) -> list[str]:
    return sorted(p.name for p in share.inbox.glob("*.yaml"))


def media_folders(share: Share) -> list[Path]:
    return sorted(p for p in (share.inbox / "media").iterdir() if p.is_dir())


def files(audio: bytes = b"RIFF-audio", *videos: tuple[str, bytes]) -> list[tuple[str, Any]]:
    return [("audio", ("speech.wav", audio)), *(("videos", v) for v in videos)]


def test_no_token_wrong_token_and_a_read_only_token_get_nothing_done(api: Api) -> None:
    before = manifests(api.share)
    with api.client() as anonymous:
        assert anonymous.get("/v1/health").json()["status"] == "ok"  # the one open address
        answer = anonymous.get("/v1/jobs")
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in answer.json()["error"]
        wrong = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer lsd_not-a-real-token-at-all-123"})
        assert wrong.status_code == 401
        assert "not known" in wrong.json()["error"]
    with api.client("read") as reader:
        assert reader.get("/v1/jobs").status_code == 200
        refused = reader.post("/v1/jobs", files=files(b"x", ("anchor.mp4", b"v")))
        assert refused.status_code == 403
        assert refused.json()["error"] == "the token 'read' may not submit; it may: read"
        assert reader.post("/v1/jobs/any/cancel").status_code == 403
    assert manifests(api.share) == before


def test_the_committed_openapi_document_is_the_one_served(api: Api) -> None:
    """docs/openapi.json is regenerated with `python -m daemon.api.openapi docs/openapi.json`."""
    served = httpx.get(f"{api.url}/openapi.json").json()
    assert served == json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_uploaded_files_become_a_manifest_with_media_in_the_share(api: Api) -> None:
    video = (DEMO / "anchor.mp4").read_bytes()
    with api.client("submit,read") as client:
        answer = client.post(
            "/v1/jobs",
            data={"name": "promo", "distribute": "true", "link_ttl": "2h"},
            files=files(b"RIFF-audio", ("../../../etc/cron.d/evil.mp4", video), ("..\\..\\x.mp4", b"v2")),
        )
        assert answer.status_code == 202, answer.text
        job = answer.json()["job"]
        assert job.startswith("promo-")
        assert answer.headers["location"] == f"/v1/jobs/{job}"
        manifest = api.share.inbox / f"{job}.yaml"
        document = yaml.safe_load(manifest.read_text())
        assert document["distribute"] is True
        assert document["link_ttl"] == "2h"
        media = [Path(p) for p in (document["audio"], *document["videos"])]
        assert [p.name for p in media] == ["speech.wav", "evil.mp4", "x.mp4"]  # names, never paths
        assert all(p.is_relative_to(api.share.inbox / "media") for p in media)
        assert media[1].read_bytes() == video
        assert media[0].read_bytes() == b"RIFF-audio"
        # before the render watcher takes it: a view that says so, with an ETag
        view = client.get(f"/v1/jobs/{job}")
        assert view.json()["status"] == "submitted"
        again = client.get(f"/v1/jobs/{job}", headers={"If-None-Match": view.headers["etag"]})
        assert again.status_code == 304
        started = time.monotonic()
        waited = client.get(f"/v1/jobs/{job}?wait=1", headers={"If-None-Match": view.headers["etag"]})
        assert waited.status_code == 304
        assert time.monotonic() - started >= 0.9


def test_share_paths_and_paths_out_of_the_share(api: Api) -> None:
    with api.client("submit,read") as client:
        answer = client.post("/v1/jobs", json={"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]})
        assert answer.status_code == 202, answer.text
        document = yaml.safe_load((api.share.inbox / f"{answer.json()['job']}.yaml").read_text())
        assert document["videos"] == [str(api.share.root / "media" / "anchor.mp4")]  # used where it is
        before = manifests(api.share)
        for outside in (
            "../../../../etc/hostname",
            "/etc/hostname",
            "media/../../shared-state/api-tokens.json",
        ):
            refused = client.post("/v1/jobs", json={"audio": outside, "videos": ["media/anchor.mp4"]})
            assert refused.status_code == 400
            assert (
                refused.json()["error"]
                == f"{outside!r} is not inside the share; name media relative to the share's folder"
            )
        odd = client.post("/v1/jobs", json={"audio": "media/a\u0000.wav", "videos": ["media/anchor.mp4"]})
        assert odd.status_code == 400
        form = client.post(
            "/v1/jobs", data={"audio_path": "media/speech.wav", "video_path": "media/nothing.mp4"}
        )
        assert form.json()["error"] == "'media/nothing.mp4': no such file in the share"
        assert manifests(api.share) == before


def test_a_job_the_daemon_would_refuse_is_refused_with_its_words_and_leaves_nothing(api: Api) -> None:
    before, folders = manifests(api.share), media_folders(api.share)
    with api.client("submit,read") as client:
        answer = client.post("/v1/jobs", data={"link_ttl": "30d"}, files=files(b"a", ("v.mp4", b"v")))
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(
        "the daemon would refuse this job: 'link_ttl' '30d' is out of range"
    )
    assert manifests(api.share) == before
    assert media_folders(api.share) == folders


def test_an_oversized_upload_is_stopped_and_leaves_nothing(api: Api) -> None:
    before, folders = manifests(api.share), media_folders(api.share)
    big = b"\0" * (5 * 2**20)
    with api.client("submit,read") as client:
        answer = client.post("/v1/jobs", files=files(b"a", ("big.mp4", big)))
        assert answer.status_code == 413
        assert "api.max_upload_bytes" in answer.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
            yield b'--B\r\nContent-Disposition: form-data; name="videos"; filename="a.mp4"\r\n\r\n'
            for _ in range(80):
                yield b"\0" * 65536

        streamed = client.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=B"}
        )
        assert streamed.status_code == 413
    assert manifests(api.share) == before
    assert media_folders(api.share) == folders


def test_the_same_idempotency_key_twice_makes_one_job(api: Api) -> None:
    before = manifests(api.share)
    with api.client("submit,read") as client:
        key = {"Idempotency-Key": "order-4711"}
        first = client.post("/v1/jobs", files=files(b"a", ("v.mp4", b"v")), headers=key)
        second = client.post("/v1/jobs", files=files(b"a", ("v.mp4", b"v")), headers=key)
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json()["job"] == second.json()["job"]
        assert (first.json()["replayed"], second.json()["replayed"]) == (False, True)
        other = client.post(
            "/v1/jobs", files=files(b"a", ("v.mp4", b"v")), headers={"Idempotency-Key": "order-4712"}
        )
        assert other.json()["job"] != first.json()["job"]
    assert len(manifests(api.share)) == len(before) + 2


def test_a_client_gone_mid_upload_leaves_nothing_in_the_inbox(api: Api) -> None:
    before, folders = manifests(api.share), media_folders(api.share)
    cut = len(api.events("api_upload_cut"))
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.tokens['submit,read']}\r\n"
        "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 3000000\r\n\r\n"
        '--B\r\nContent-Disposition: form-data; name="videos"; filename="a.mp4"\r\n\r\n'
    ).encode()
    with socket.create_connection(("127.0.0.1", api.port)) as raw:
        raw.sendall(head + b"\0" * 1_000_000)
        wait_for(lambda: len(media_folders(api.share)) > len(folders), 10, "the upload being written")
    wait_for(
        lambda: len(api.events("api_upload_cut")) > cut, 10, "the server seeing the client go", api.daemon
    )
    wait_for(lambda: media_folders(api.share) == folders, 10, "the half upload removed")
    assert manifests(api.share) == before


def test_a_disk_that_fills_mid_upload_is_refused_and_cleaned(api: Api, tmp_path: Path) -> None:
    if not can_mount(tmp_path):
        pytest.skip("needs root with CAP_SYS_ADMIN to mount a small tmpfs")
    before = manifests(api.share)
    with tmpfs(api.share.inbox / "media", "1m"), api.client("submit,read") as client:
        declared = client.post("/v1/jobs", files=files(b"a", ("v.mp4", b"\1" * (3 * 2**20))))
        assert declared.status_code == 507  # its Content-Length does not fit: refused before a byte
        assert declared.json()["error"].startswith("the share's disk has ")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the disk fills while it is written
            yield b'--B\r\nContent-Disposition: form-data; name="videos"; filename="a.mp4"\r\n\r\n'
            for _ in range(48):
                yield b"\1" * 65536

        multipart = {"Content-Type": "multipart/form-data; boundary=B"}
        answer = client.post("/v1/jobs", content=chunks(), headers=multipart)
        assert answer.status_code == 507, answer.text
        assert answer.json()["error"].startswith("the share's disk filled up during the upload")
        assert list((api.share.inbox / "media").iterdir()) == []
    assert manifests(api.share) == before


def test_list_filters_revoke_and_rate_limit(api: Api) -> None:
    with api.client("read") as reader:
        assert reader.get("/v1/jobs", params={"status": "queued,done"}).json() == {"jobs": []}
        bad = reader.get("/v1/jobs", params={"status": "finished"})
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("status 'finished': give states from")
        assert reader.get("/v1/jobs/nope").json() == {"error": "no job named 'nope'"}
        # 20/s, bursts of 40: back-to-back requests (a few ms each) run out of the burst
        answers = (reader.get("/v1/jobs/nope") for _ in range(1000))
        limited = next(a for a in answers if a.status_code != 404)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "api.rate_limit" in limited.json()["error"]
    spare = api.share.lipsyncd("api", "token", "add", "spare", "--can", "read").stdout.strip()
    headers = {"Authorization": f"Bearer {spare}"}
    assert httpx.get(f"{api.url}/v1/jobs", headers=headers).status_code == 200
    listed = api.share.lipsyncd("api", "token", "list").stdout
    assert "spare                    read\n" in listed
    assert spare not in listed
    assert api.share.lipsyncd("api", "token", "revoke", "spare").returncode == 0
    assert httpx.get(f"{api.url}/v1/jobs", headers=headers).status_code == 401  # at once, no restart


def test_cancel_and_retry_a_job_the_intake_took(api: Api) -> None:
    """The intake's step done here by hand (the module's server runs no watchers): the manifest the API
    wrote becomes a queued job in the store, then the API cancels it and queues it again."""
    with api.client("all") as client:
        job = client.post(
            "/v1/jobs", json={"audio": "media/speech.wav", "videos": ["media/anchor.mp4"]}
        ).json()["job"]
        assert client.post(f"/v1/jobs/{job}/cancel").status_code == 409  # still in the inbox
        inbox = Inbox(api.share.inbox, settle_time=0)
        inbox.make_folders()
        claimed = inbox.claim(api.share.inbox / f"{job}.yaml")
        assert claimed is not None
        store = JobStore(api.share.state)
        try:
            taken = load_manifest(claimed, base_dir=api.share.inbox, shared=api.share.root)
            assert store.add_job(taken, claimed_path=claimed, base_dir=api.share.inbox).id == job
        finally:
            store.close()
        assert client.get(f"/v1/jobs/{job}").json()["status"] == "queued"
        cancelled = client.post(f"/v1/jobs/{job}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["job"]["status"] == "cancelled"
        assert (api.share.inbox / "failed" / f"{job}.yaml").exists()  # filed as `lipsyncd cancel` files it
        again = client.post(f"/v1/jobs/{job}/retry")
        assert again.status_code == 200, again.text
        assert again.json()["job"]["status"] == "queued"
        assert again.json()["message"].startswith(f"{job}: queued again (was cancelled")
        assert claimed.exists()  # back where the intake claimed it, as `lipsyncd retry` leaves it
        listed = client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]
        assert [d["job"] for d in listed] == [job]
        assert client.post(f"/v1/jobs/{job}/retry").status_code == 409  # queued: nothing to retry


def sse_until_finished(client: httpx.Client, job: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    with client.stream("GET", f"/v1/jobs/{job}/events", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))
    return last


def test_submit_over_http_wait_and_download_every_link(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any]
) -> None:
    """The whole product: `lipsyncd run` renders and uploads what the API put in the inbox. One job, its
    audio uploaded and its video named in the share (one render: both ways in, at the price of one)."""
    quick = {"inbox": {"settle_time": "0.2s", "rescan_interval": "1s"}, "storage": external}  # session's S3
    share = Share(tmp_path / "shared", quick)
    (share.root / "media").mkdir()
    (share.root / "media" / "anchor.mp4").write_bytes(media["face"].read_bytes())
    run = Daemon(share, "run")
    server = Api(share, "all")
    try:
        with server.client("all") as client:
            job = client.post(
                "/v1/jobs",
                data={"name": "both", "distribute": "true", "video_path": "media/anchor.mp4"},
                files=[("audio", ("speech.wav", media["speech"].read_bytes()))],
            ).json()["job"]
            final = sse_until_finished(client, job)
            assert final["status"] == "done", final
            view = client.get(f"/v1/jobs/{job}").json()
            assert view == json.loads((share.outputs / job / "links.json").read_text())  # the same view
            assert view["videos"][0]["source"] == str(share.root / "media" / "anchor.mp4")
            for video in view["videos"]:
                body = httpx.get(video["url"], timeout=30).content
                assert hashlib.sha256(body).hexdigest() == video["sha256"]
            listed = [d["job"] for d in client.get("/v1/jobs", params={"status": "done"}).json()["jobs"]]
            assert listed == [job]
            resigned = client.post(f"/v1/jobs/{job}/links/refresh")
            assert resigned.status_code == 200
            assert resigned.json()["refreshed"] == 0
            done = client.post(f"/v1/jobs/{job}/cancel")
            assert done.status_code == 409
            assert "cannot be cancelled" in done.json()["error"]
    finally:
        server.daemon.terminate()
        run.terminate()


def test_a_second_api_on_the_same_state_refuses_to_start(api: Api) -> None:
    second = api.share.lipsyncd("api", "--listen", f"127.0.0.1:{free_port()}", timeout=60)
    assert second.returncode == 75, second.stderr
    assert "api" in second.stderr
