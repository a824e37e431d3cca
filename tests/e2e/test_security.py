"""Security as a user or an attacker on the share would test it, against real daemons and real SeaweedFS:
links the storage refuses, secrets that never leave the daemon (logs in JSON and journald format, links.json,
error files, the process listing), deliberate file modes, and manifests or planted symlinks that try to make
the daemon read outside the share or write outside the outputs.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import av
import botocore.exceptions
import pytest

from daemon.distribute.embedded import EmbeddedS3
from daemon.distribute.s3 import Credentials, StorageSettings, make_client
from daemon.samples import speech_like, write_audio, write_face_clip
from tests.e2e import sandbox
from tests.e2e.harness import Daemon, Share, statuses, wait_for

FAST_INBOX = {"settle_time": "0.3s", "rescan_interval": "2s"}


def job(**extra: Any) -> dict[str, Any]:
    return {"audio": "media/voice.wav", "videos": ["media/face.mp4"], **extra}


def done(share: Share, name: str) -> Any:
    return (doc := share.links(name)) and doc["status"] in ("done", "partial", "failed") and doc


def http_status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# -- webhook receivers that fail once, then accept ----------------------------------------------------


class _Hooks(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        first = not any(p.split("?")[0] == self.path.split("?")[0] for p in _Hooks.seen)
        _Hooks.seen.append(self.path)
        self.send_response(500 if first else 200)  # the first try fails, so retries get logged too
        self.end_headers()
        self.wfile.write(b'{"errcode": 0, "errmsg": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Hooks:
    """Webhook settings with secrets in files (tokens in URLs, signing keys) plus one hook that is down."""

    folder: Path
    secrets: dict[str, str] = field(default_factory=dict)
    server: http.server.HTTPServer = field(init=False)

    def __post_init__(self) -> None:
        _Hooks.seen = []
        self.server = http.server.HTTPServer(("127.0.0.1", 0), _Hooks)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.secrets = {
            name: f"{name}-{uuid.uuid4().hex}" for name in ("ding_token", "ding_sign", "wecom_key")
        }
        self.secrets |= {name: f"{name}-{uuid.uuid4().hex}" for name in ("json_hmac", "down_token")}

    def config(self) -> dict[str, Any]:
        base, s = f"http://127.0.0.1:{self.server.server_port}", self.secrets
        return {
            "ding": {
                "kind": "dingtalk",
                "url_file": self._file("ding-url", f"{base}/ding/robot/send?access_token={s['ding_token']}"),
                "secret_file": self._file("ding-secret", s["ding_sign"]),
            },
            "wecom": {
                "kind": "wecom",
                "url_file": self._file("wecom-url", f"{base}/wecom/send?key={s['wecom_key']}"),
            },
            "signed": {
                "kind": "json",
                "url": f"{base}/json",
                "secret_file": self._file("json-secret", s["json_hmac"]),
            },
            "down": {
                "kind": "json",
                "url_file": self._file("down-url", f"http://127.0.0.1:1/x?key={s['down_token']}"),
            },
        }

    def _file(self, name: str, text: str) -> str:
        path = self.folder / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        return str(path)

    def delivered(self) -> set[str]:
        """Hooks that got a request after their first (failed) one."""
        paths = [p.split("/")[1] for p in _Hooks.seen]
        return {p for p in paths if paths.count(p) >= 2}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


def process_listing() -> str:
    return subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Processes started inside inherit `mask` (the units set UMask=0027; a shell usually has 0022)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- one real `lipsyncd run` on the embedded defaults, shared by the tests that read its traces --------


@dataclass
class EmbeddedRun:
    share: Share
    daemon: Daemon
    hooks: Hooks
    secrets: dict[str, str]
    listing: str = ""

    def stop(self) -> str:
        if self.daemon.proc.poll() is None:
            assert self.daemon.terminate(timeout=90) == 0
        return self.daemon.output()

    def identities(self) -> Credentials:
        doc = json.loads((self.share.state / "embedded-s3" / "identities.json").read_text())
        pair = doc["identities"][0]["credentials"][0]
        return Credentials(pair["accessKey"], pair["secretKey"])


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRun]:
    """Both watchers and the embedded SeaweedFS (keys it made itself), debug-level JSON logs, four
    webhooks with secrets, a shared job, a 2-second link, a private job and a broken manifest. The daemon
    makes its own state directory, under a shell's umask 0022."""
    root = tmp_path_factory.mktemp("embedded-run")
    hooks = Hooks(root)
    share = Share(
        root / "shared",
        {"inbox": FAST_INBOX, "logging": {"format": "json", "level": "debug"}, "webhooks": hooks.config()},
    )
    sandbox.tiny_media(share.inbox / "media")
    with umask(0o022):
        daemon = Daemon(share, "run")
    run = EmbeddedRun(share, daemon, hooks, dict(hooks.secrets))
    try:
        sandbox.ready(daemon, "upload_ready", timeout=90)
        share.drop("shared.yaml", job(distribute=True, notify=["ding", "wecom", "signed", "down"]))
        share.drop("brief.yaml", job(distribute=True, link_ttl="2s"))
        share.drop("private.yaml", job())
        share.drop("broken.yaml", {"audio": "media/nothing.wav", "videos": ["media/face.mp4"], "colour": 1})
        for name in ("shared", "brief", "private"):
            wait_for(lambda n=name: done(share, n), 120, f"{name} done", daemon)  # type: ignore[misc]
        wait_for(lambda: hooks.delivered() >= {"ding", "wecom", "json"}, 30, "webhooks delivered", daemon)
        run.secrets["s3_secret_key"] = run.identities().secret_key
        run.listing = process_listing()
        yield run
    finally:
        run.stop()
        hooks.close()


def bucket_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/{parts.path.split('/')[1]}/"


def test_storage_refuses_unsigned_tampered_expired_and_misused_links(embedded_run: EmbeddedRun) -> None:
    share = embedded_run.share
    url = share.links("shared")["videos"][0]["url"]  # type: ignore[index]
    assert http_status(url) == 200
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", url)
    assert signature is not None
    flipped = signature.group(1)[:-1] + ("0" if signature.group(1)[-1] != "0" else "1")
    tries = {
        "unsigned object": url.split("?")[0],
        "unsigned bucket listing": bucket_url(url) + "?list-type=2",
        "signature changed": url.replace(signature.group(1), flipped),
        "other object, same signature": url.replace("/face.mp4?", "/other.mp4?"),
        "lifetime stretched": re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=604800", url),
        "date moved": re.sub(r"X-Amz-Date=(\d{8})T", lambda m: f"X-Amz-Date={int(m.group(1)) + 1}T", url),
    }
    refused = {what: http_status(u) for what, u in tries.items()}
    refused["PUT with a GET link"] = http_status(url, "PUT", b"overwritten")
    refused["DELETE with a GET link"] = http_status(url, "DELETE")
    brief = share.links("brief")["videos"][0]  # type: ignore[index]
    expires = datetime.fromisoformat(brief["expires_at"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, expires - time.time()) + 1.5)
    refused["expired (2 s link)"] = http_status(brief["url"])
    assert {what: code for what, code in refused.items() if code not in (403, 405)} == {}
    assert http_status(url) == 200, "the good link still works and the object was not overwritten"


def test_storage_refuses_wrong_keys(embedded_run: EmbeddedRun) -> None:
    real = embedded_run.identities()
    endpoint = json.loads((embedded_run.share.state / "embedded-s3" / "ports.json").read_text())["s3"]
    settings = StorageSettings(endpoint_url=f"http://127.0.0.1:{endpoint}", bucket="lipsyncd", prefix="")
    for credentials in (
        Credentials(real.access_key, "not-the-secret"),
        Credentials("NOBODY", real.secret_key),
    ):
        client = make_client(settings, credentials)
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            client.list_objects_v2(Bucket="lipsyncd")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_no_secret_in_the_process_listing(embedded_run: EmbeddedRun) -> None:
    listing = embedded_run.listing
    weed = [line for line in listing.splitlines() if "weed" in line and "-s3.config=" in line]
    assert weed, "the embedded SeaweedFS must be in the listing"
    assert leaks(listing, embedded_run.secrets) == []
    assert "secretKey" not in listing
    assert "aws_secret_access_key" not in listing


def test_no_secret_in_links_json_or_error_files(embedded_run: EmbeddedRun) -> None:
    share = embedded_run.share
    documents = [p.read_text() for p in share.outputs.glob("*/links.json")]
    errors = [p.read_text() for p in (share.inbox / "failed").glob("*.error.txt")]
    assert len(documents) == 3
    assert len(errors) == 1
    for text in documents + errors:
        assert leaks(text, embedded_run.secrets) == []


def test_no_secret_in_any_log_line_json_format(embedded_run: EmbeddedRun) -> None:
    output = embedded_run.stop()
    events = {e["event"] for e in embedded_run.daemon.events()}
    assert {"webhook_retry", "webhook_sent", "video_ready", "manifest_rejected"} <= events
    assert leaks(output, embedded_run.secrets) == []
    signatures = re.findall(r"X-Amz-Signature=([0-9a-f]{64})", " ".join(
        p.read_text() for p in embedded_run.share.outputs.glob("*/links.json")
    ))  # fmt: skip
    assert signatures, "link signatures must not be logged"
    assert not any(s in output for s in signatures), "link signatures must not be logged"
    weed_log = embedded_run.share.state / "embedded-s3" / "weed.log"
    assert leaks(weed_log.read_text(errors="replace"), embedded_run.secrets) == []


def test_modes_when_the_daemon_makes_its_state_dir(embedded_run: EmbeddedRun) -> None:
    share = embedded_run.share
    private = {
        share.state: 0o700,
        share.state / "lipsyncd.db": 0o600,
        share.state / "embedded-s3": 0o700,
        share.state / "embedded-s3" / "identities.json": 0o600,
        share.state / "embedded-s3" / "ports.json": 0o600,
    }
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in private} == {
        str(p): oct(m) for p, m in private.items()
    }
    public = [
        share.outputs / "private",
        share.outputs / "private" / "face.mp4",
        *share.outputs.glob("*/links.json"),
        *(share.inbox / "failed").glob("*.error.txt"),
    ]
    unreadable = [str(p) for p in public if p.stat().st_mode & 0o044 != 0o044]
    assert unreadable == [], "outputs, links.json and error files are for the share's users to read"


# -- journald format -----------------------------------------------------------------------------------


def test_no_secret_in_any_log_line_journald_format(
    tmp_path: Path, embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str
) -> None:
    """The render and upload watchers log to a real systemd-journald; every field of every entry they
    wrote is searched. Storage keys come from a credentials file, as LoadCredential= gives them."""
    from tests.functional.test_journald import JOURNALD, _journald_alive

    if os.geteuid() != 0 or not JOURNALD.exists() or not shutil.which("journalctl"):
        pytest.skip("needs root and systemd-journald")
    hooks = Hooks(tmp_path)
    keys = tmp_path / "s3-credentials"
    keys.write_text(
        f"aws_access_key_id={embedded_s3.access_key}\naws_secret_access_key={embedded_s3.secret_key}\n"
    )
    storage = {
        "endpoint_url": embedded_s3.endpoint_url,
        "bucket": s3_bucket,
        "prefix": s3_prefix.rstrip("/"),
        "credentials_file": str(keys),
    }
    share = Share(
        tmp_path / "shared",
        {"storage": storage, "logging": {"format": "journald", "level": "debug"}, "webhooks": hooks.config()},
    )
    sandbox.tiny_media(share.inbox / "media")
    name = f"journal-{uuid.uuid4().hex[:8]}"
    share.drop(f"{name}.yaml", job(distribute=True, notify=["ding", "wecom", "signed", "down"]))
    share.drop(f"{name}-broken.yaml", {"audio": "media/none.wav", "videos": ["x"]})
    secrets = {**hooks.secrets, "s3_secret_key": embedded_s3.secret_key}
    with journal(_journald_alive) as where:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 2))
        try:
            result = share.lipsyncd("run", "--once", timeout=180)
        finally:
            hooks.close()
        entries = journal_entries(where, since, job=name)
    assert result.returncode == 0, result.stderr[-2000:]
    assert statuses(share.links(name)) == ["ready"]
    assert {"job_queued", "video_ready", "webhook_retry"} <= {e.get("EVENT") for e in entries}
    text = json.dumps(entries)
    assert leaks(text + result.stdout + result.stderr, secrets) == []


@contextlib.contextmanager
def journal(alive: Any) -> Iterator[list[str]]:
    """The running journald, or one started by hand for this test."""
    from tests.functional.test_journald import JOURNAL_DIR, JOURNALD

    if alive():
        yield []
        return
    proc = subprocess.Popen([str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(alive, 10, "journald socket")
        yield ["-D", JOURNAL_DIR]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def journal_entries(where: list[str], since: str, job: str) -> list[dict[str, Any]]:
    """Every entry the lipsyncd watchers wrote since `since`, once the job's last event is in."""
    found: list[dict[str, Any]] = []

    def complete() -> bool:
        found[:] = read_journal_json(where, since)
        return any(e.get("JOB") == job and e.get("EVENT") == "job_distributed" for e in found)

    wait_for(complete, 15, "the job's entries in the journal")
    return found


def read_journal_json(where: list[str], since: str) -> list[dict[str, Any]]:
    command = ["journalctl", *where, "--since", since, "-o", "json", "--no-pager"]
    matches = ["SYSLOG_IDENTIFIER=lipsyncd-render", "+", "SYSLOG_IDENTIFIER=lipsyncd-upload"]
    out = subprocess.run([*command, *matches], capture_output=True, text=True, check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- modes under the unit's umask --------------------------------------------------------------------


def test_modes_under_the_units_umask_with_a_state_dir_made_by_systemd(tmp_path: Path) -> None:
    """StateDirectory= makes the state dir 0755 before the daemon starts; the units set UMask=0027. Then
    nothing in the state tree may be readable by others, and the outputs stay readable by the group."""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    share.state.mkdir()
    share.state.chmod(0o755)
    sandbox.tiny_media(share.inbox / "media")
    share.drop("unit.yaml", job())
    with umask(0o027):
        assert share.lipsyncd("render", "--once").returncode == 0
    world = [str(p) for p in share.state.rglob("*") if p.stat().st_mode & 0o007]
    assert world == []
    assert (share.state / "lipsyncd.db").stat().st_mode & 0o077 == 0
    outputs = [
        share.outputs / "unit",
        share.outputs / "unit" / "face.mp4",
        share.outputs / "unit" / "links.json",
    ]
    assert [str(p) for p in outputs if p.stat().st_mode & 0o040 == 0] == [], "the share's group reads outputs"


def test_the_job_stores_wal_is_as_private_as_the_store(tmp_path: Path) -> None:
    """A state dir that exists already (0755) and a shell's umask 0022: SQLite's -wal and -shm files hold
    the same rows as the store (paths, presigned URLs, upload ids), so they must be as private (was 0644)."""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    share.state.mkdir()
    share.state.chmod(0o755)
    with umask(0o022):
        daemon = Daemon(share, "render")
    try:
        sandbox.ready(daemon)
        modes = {p.name: p.stat().st_mode & 0o777 for p in share.state.glob("lipsyncd.db*")}
    finally:
        daemon.terminate()
    assert set(modes) == {"lipsyncd.db", "lipsyncd.db-wal", "lipsyncd.db-shm"}
    assert {name: oct(mode) for name, mode in modes.items() if mode & 0o077} == {}


# -- reading outside the share, writing outside the outputs --------------------------------------------


@pytest.fixture
def around(tmp_path: Path) -> tuple[Share, Path]:
    """A share and, beside it, a folder that is not part of it holding things worth stealing or breaking."""
    share = Share(tmp_path / "shared", {"inbox": FAST_INBOX})
    sandbox.tiny_media(share.inbox / "media")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "dir").mkdir(parents=True)
    write_face_clip(elsewhere / "secret.mp4", 0.4, 25, (64, 64), seed=9)  # 64x64: tells its renders apart
    (elsewhere / "payroll.txt").write_text("TOP SECRET PAYROLL\n" * 50)
    (elsewhere / "precious.bin").write_bytes(b"precious bytes")
    return share, elsewhere


def outside(tmp_path: Path, share: Share) -> dict[str, str]:
    """What lies around the share (its own folders, state and logs left out)."""
    skip = [share.root, share.state, tmp_path / "shared-models"]
    return {k: v for k, v in sandbox.listing(tmp_path, skip=skip).items() if not k.startswith("shared")}


def rendered_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.width, stream.height


def test_manifests_cannot_name_their_way_out(tmp_path: Path, around: tuple[Share, Path]) -> None:
    """Job names with `..` and slashes, media through symlinks (a file, a folder) and absolute paths
    pointing outside: names are made safe, escaping media is refused; nothing outside changes."""
    share, elsewhere = around
    media = share.inbox / "media"
    (media / "linked.mp4").symlink_to(elsewhere / "secret.mp4")
    (media / "linked-dir").symlink_to(elsewhere)
    before = outside(tmp_path, share)
    share.drop("up.yaml", job(name="../x"))
    share.drop("deep.yaml", job(name="../../../../tmp/lipsyncd-escape"))
    share.drop("slash.yaml", job(name="/etc/cron.d/evil"))
    share.drop("via-link.yaml", {"audio": "media/voice.wav", "videos": ["media/linked.mp4"]})
    share.drop("via-dir.yaml", {"audio": "media/voice.wav", "videos": ["media/linked-dir/secret.mp4"]})
    share.drop("absolute.yaml", {"audio": "media/voice.wav", "videos": [str(elsewhere / "secret.mp4")]})
    assert share.lipsyncd("render", "--once").returncode == 0
    assert outside(tmp_path, share) == before, "nothing outside the share may change"
    assert not Path("/tmp/lipsyncd-escape").exists()
    assert not Path("/etc/cron.d/evil").exists()
    jobs = sorted(p.name for p in share.outputs.iterdir())
    assert all((share.outputs / j).resolve().parent == share.outputs.resolve() for j in jobs)
    assert {p.name for p in (share.inbox / "done").iterdir()} == {"up.yaml", "deep.yaml", "slash.yaml"}
    failed = {p.name for p in (share.inbox / "failed").glob("*.error.txt")}
    assert failed == {"via-link.error.txt", "via-dir.error.txt", "absolute.error.txt"}
    for name in failed:
        assert "outside the shared folder" in (share.inbox / "failed" / name).read_text()


def test_a_planted_job_folder_symlink_does_not_redirect_outputs(
    tmp_path: Path, around: tuple[Share, Path]
) -> None:
    share, elsewhere = around
    share.outputs.mkdir(parents=True)
    (share.outputs / "victim").symlink_to(elsewhere / "dir")
    before = outside(tmp_path, share)
    share.drop("victim.yaml", job())
    assert share.lipsyncd("render", "--once").returncode == 0
    assert outside(tmp_path, share) == before, "the daemon wrote outside the outputs"
    assert "symbolic link" in (share.inbox / "failed" / "victim.error.txt").read_text()


def test_a_planted_temp_file_symlink_is_not_written_through(
    tmp_path: Path, around: tuple[Share, Path]
) -> None:
    share, elsewhere = around
    (share.outputs / "trap").mkdir(parents=True)
    (share.outputs / "trap" / ".face.part.mp4").symlink_to(elsewhere / "precious.bin")
    before = outside(tmp_path, share)
    share.drop("trap.yaml", job())
    assert share.lipsyncd("render", "--once").returncode == 0
    assert (elsewhere / "precious.bin").read_bytes() == b"precious bytes"
    assert outside(tmp_path, share) == before
    assert not (share.outputs / "trap" / "face.mp4").is_symlink()
    assert statuses(share.links("trap")) == ["rendered"]
    assert rendered_size(share.outputs / "trap" / "face.mp4") == (96, 96)


def test_media_swapped_for_a_symlink_after_the_check_is_not_read(around: tuple[Share, Path]) -> None:
    share, elsewhere = around
    media = share.inbox / "media"
    write_face_clip(media / "slow.mp4", 4.0, 25, (320, 320))  # with 12 s of audio: keeps the renderer busy
    write_audio(media / "long.wav", speech_like(12.0))
    shutil.copy(media / "face.mp4", media / "swap.mp4")
    daemon = Daemon(share, "render")
    try:
        sandbox.ready(daemon)
        share.drop("blocker.yaml", {"audio": "media/long.wav", "videos": ["media/slow.mp4"]})
        wait_for(lambda: statuses(share.links("blocker")) == ["rendering"], 60, "blocker rendering", daemon)
        share.drop("swap.yaml", {"audio": "media/voice.wav", "videos": ["media/swap.mp4"]})
        wait_for(lambda: statuses(share.links("swap")) == ["queued"], 30, "swap queued", daemon)
        (media / "swap.mp4").unlink()
        (media / "swap.mp4").symlink_to(elsewhere / "secret.mp4")
        doc = wait_for(lambda: done(share, "swap"), 60, "swap job ends", daemon)
    finally:
        daemon.terminate()
    out = share.outputs / "swap" / "swap.mp4"
    assert not (out.exists() and rendered_size(out) == (64, 64)), "the file outside the share was rendered"
    assert doc["videos"][0]["status"] == "failed"


def test_a_rendered_video_swapped_for_a_symlink_is_not_uploaded(
    tmp_path: Path,
    around: tuple[Share, Path],
    embedded_s3: EmbeddedS3,
    s3_client: Any,
    s3_bucket: str,
    s3_prefix: str,
) -> None:
    share, elsewhere = around
    keys = tmp_path / "s3-credentials"
    keys.write_text(
        f"aws_access_key_id={embedded_s3.access_key}\naws_secret_access_key={embedded_s3.secret_key}\n"
    )
    prefix = s3_prefix.rstrip("/")
    config = {
        "endpoint_url": embedded_s3.endpoint_url,
        "bucket": s3_bucket,
        "prefix": prefix,
        "credentials_file": str(keys),
    }
    share = Share(share.root, {"inbox": FAST_INBOX, "storage": config})
    share.drop("exfil.yaml", job(distribute=True))
    assert share.lipsyncd("render", "--once").returncode == 0
    rendered = share.outputs / "exfil" / "face.mp4"
    rendered.unlink()
    rendered.symlink_to(elsewhere / "payroll.txt")
    assert share.lipsyncd("upload", "--once").returncode == 0
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix + "/").get("Contents", [])
    stored = [s3_client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read() for o in listed]
    assert not any(b"PAYROLL" in body for body in stored), "a file outside the outputs reached the bucket"
    video = share.links("exfil")["videos"][0]  # type: ignore[index]
    assert video["status"] == "rendered"
    assert "not the rendered file" in video["error"]
    assert (elsewhere / "payroll.txt").exists(), "nothing outside is deleted either"
