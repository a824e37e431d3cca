"""Links that work for the people they are sent to, through real processes, a real SeaweedFS and a real
nginx. Everything stays on this machine: Linux routes all of 127.0.0.0/8 to loopback, so a server on
0.0.0.0 or 127.0.0.2 is reached at 127.0.0.2, which proves nothing is tied to 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3, EmbeddedSettings
from tests.e2e.harness import Daemon, Share, wait_for

NGINX = Path("/usr/sbin/nginx")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a plain GET, never via a proxy


def get(url: str) -> tuple[int, bytes]:
    """What a browser or curl does with the link: one GET, no keys, no SDK."""
    try:
        with _opener.open(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def done(share: Share, job: str) -> Any:
    return (doc := share.links(job)) and doc["status"] == "done" and doc


def weed_pid(share: Share) -> int:
    return int((share.state / "embedded-s3" / "weed.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_storage_on_another_address_signs_for_it(tmp_path: Path) -> None:
    """Listening on 127.0.0.2 with no public URL, links name 127.0.0.2 (the listen address) and a plain
    GET downloads them; the same link with its host changed is refused (SigV4 signs the host)."""
    server = EmbeddedS3(tmp_path, EmbeddedSettings(bucket="reach", listen="127.0.0.2", stop_timeout_s=1))
    server.start()
    try:
        server.client().put_object(Bucket="reach", Key="a.mp4", Body=b"video bytes")
        link = server.signing_client().generate_presigned_url(
            "get_object", Params={"Bucket": "reach", "Key": "a.mp4"}, ExpiresIn=60
        )
        assert link.startswith(f"http://127.0.0.2:{server.ports.s3}/reach/a.mp4?")
        assert get(link) == (200, b"video bytes")
        assert get(link.replace("127.0.0.2", "127.0.0.1", 1))[0] == 403, "a rewritten host must be refused"
    finally:
        server.kill()


def test_links_signed_for_the_public_url_survive_upload_restarts(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    """`lipsyncd storage` on 0.0.0.0 with public_url http://127.0.0.2:PORT and a `lipsyncd upload` beside
    it: the job's link starts with the public URL (not the 127.0.0.1 lipsyncd itself connects to) and
    downloads the rendered bytes with a plain GET. Killing the upload watcher (-9) and starting it again
    leaves the storage process and its SeaweedFS untouched, and the link keeps working throughout."""
    port = free_port("0.0.0.0")
    public = f"http://127.0.0.2:{port}"
    storage = {
        "embedded_listen": "0.0.0.0",
        "embedded_port": port,
        "public_url": public,
        "embedded_stop_timeout": "1s",
    }
    share = Share(tmp_path / "shared", {"storage": storage, "links": {"refresh_before": "7d"}})
    for name in ("face", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    share.drop(
        "reach.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": True}
    )
    assert share.lipsyncd("render", "--once").returncode == 0
    server = Daemon(share, "storage")
    upload: Daemon | None = None
    try:
        wait_for(lambda: any(e["event"] == "storage_ready" for e in server.events()), 60, "storage", server)
        pid = weed_pid(share)
        upload = Daemon(share, "upload")
        links = wait_for(lambda: done(share, "reach"), 120, "the job shared", upload)
        video = links["videos"][0]
        assert video["url"].startswith(f"{public}/lipsyncd/renders/"), video["url"]
        status, body = get(video["url"])
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == video["sha256"]
        first = upload.events()[0]
        assert (first["event"], first["link_host"], first["who"]) == (
            "links_reach",
            "127.0.0.2",
            "only this machine",
        )
        assert "embedded_s3_attached" in [e["event"] for e in upload.events()]

        upload.kill9()
        assert get(video["url"])[0] == 200, "links must work while the upload watcher is down"
        upload = Daemon(share, "upload")
        wait_for(
            lambda: any(e["event"] == "upload_ready" for e in upload.events()), 60, "upload back", upload
        )
        assert upload.terminate() == 0
        assert server.proc.poll() is None
        assert weed_pid(share) == pid
        assert alive(pid)
        status, body = get(video["url"])
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == video["sha256"]
        # `lipsyncd links --refresh` (signing needs only the keys) signs for the public URL too
        refreshed = share.lipsyncd("links", "--refresh", "reach")
        assert "re-signed 1 link(s)" in refreshed.stdout, refreshed.stderr
        again = share.links("reach")["videos"][0]["url"]  # type: ignore[index]
        assert again.startswith(f"{public}/lipsyncd/renders/")
        assert get(again)[0] == 200
    finally:
        if upload is not None:
            upload.terminate()
        assert server.terminate() == 0


NGINX_CONF = """
pid {dir}/nginx.pid;
error_log {dir}/error.log;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # What a CDN or proxy in front of presigned links must do: send the path and query string on
    # unchanged (proxy_pass without a URI part), and the Host the link was signed for (nginx's
    # default, $proxy_host, is the storage's address given to proxy_pass).
    server {{
        listen 127.0.0.2:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_buffering off;
        }}
    }}
    # The usual reverse-proxy habit of passing the client's Host breaks the signature.
    server {{
        listen 127.0.0.2:{wrong_port};
        location / {{
            proxy_pass http://{upstream};
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path, external: dict[str, Any]) -> Any:
    """Debian's nginx as this test's own process (no daemon, its own prefix), in front of the session's
    SeaweedFS."""
    if not NGINX.exists():
        pytest.skip("nginx is not installed (make system-packages installs nginx-light)")
    folder = tmp_path / "nginx"
    folder.mkdir()
    folder.chmod(0o755)  # workers run as an unprivileged user when the test runs as root
    port, wrong_port = free_port("127.0.0.2"), free_port("127.0.0.2")
    upstream = external["endpoint_url"].removeprefix("http://")
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=folder, port=port, wrong_port=wrong_port, upstream=upstream))
    proc = subprocess.Popen(
        [str(NGINX), "-g", "daemon off;", "-p", str(folder), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "stderr.log").open("wb"),
    )
    deadline = time.monotonic() + 20
    while not _listening(port):
        assert proc.poll() is None, (folder / "stderr.log").read_text() + _read(folder / "error.log")
        assert time.monotonic() < deadline, "nginx did not start listening"
        time.sleep(0.1)
    yield {"url": f"http://127.0.0.2:{port}", "wrong": f"http://127.0.0.2:{wrong_port}", "dir": folder}
    proc.terminate()
    proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.2", port)) == 0


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_base_url_links_download_through_a_real_reverse_proxy(
    tmp_path: Path, media: dict[str, Path], external: dict[str, Any], nginx: dict[str, Any]
) -> None:
    """links.base_url rewrites each link to the proxy; nginx passes path, query and the signed Host to the
    storage, and the download's sha256 is the rendered one. Passing the client's Host instead gets 403."""
    share = Share(tmp_path / "shared", {"storage": external, "links": {"base_url": nginx["url"]}})
    for name in ("face", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    share.drop("cdn.yaml", {"audio": "media/speech.wav", "videos": ["media/anchor.mp4"], "distribute": True})
    assert share.lipsyncd("run", "--once").returncode == 0
    video = done(share, "cdn")["videos"][0]
    assert video["url"].startswith(nginx["url"] + "/" + external["bucket"] + "/"), video["url"]
    status, body = get(video["url"])
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == video["sha256"]
    key = video["object_key"]
    signed_query = video["url"].split("?", 1)[1]  # the proxy passed path and query on unchanged
    logged = f"GET /{external['bucket']}/{key}?{signed_query} "  # nginx logs after it answered
    wait_for(lambda: logged in _read(nginx["dir"] / "access.log"), 10, "nginx's access log line")
    assert get(video["url"].split("?")[0])[0] == 403, "the proxy must not open unsigned requests"
    wrong_host = video["url"].replace(nginx["url"], nginx["wrong"], 1)
    assert get(wrong_host)[0] == 403, "a proxy that sends the client's Host breaks the signature"
