"""The HTTP API's pure parts: client file names, tokens, rate limits, the listen address, and the
streamed multipart receiver (limits checked while the bytes arrive, files renamed in only when whole)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from daemon.api.app import Api, RateLimiter, etag
from daemon.api.ledger import KeyBusy, Ledger
from daemon.api.tokens import (
    TokenError,
    TokenFile,
    add_token,
    find,
    parse_rights,
    read_tokens,
    revoke_token,
    tokens_path,
)
from daemon.api.uploads import MultipartReceiver, UploadRefused, safe_name
from daemon.config import Config, PathsConfig, parse_listen
from daemon.ops.logging import redact_text
from daemon.submit import submit_media_dir

BOUNDARY = "xYzBoundary"


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("anchor.mp4", "anchor.mp4"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\evil.mp4", "evil.mp4"),
        ("/abs/path/.hidden.mp4", "hidden.mp4"),
        ("..", "video"),
        ("", "video"),
        ("a b;rm -rf.mp4", "a-b-rm--rf.mp4"),
        ("x\x00y.mp4", "xy.mp4"),
        ("clip.MP4/../", "video"),
    ],
)
def test_client_file_names_never_choose_a_path(client: str, expected: str) -> None:
    name = safe_name(client, "video")
    assert name == expected
    assert "/" not in name
    assert not name.startswith(".")


def test_tokens_are_stored_hashed_0600_and_found_only_by_the_exact_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api-tokens.json"
    token = add_token(path, "ci", parse_rights("submit,read"))
    other = add_token(path, "viewer", parse_rights("read"))
    text = path.read_text()
    assert token not in text
    assert other not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = read_tokens(path)
    assert find(tokens, token).name == "ci"  # type: ignore[union-attr]
    assert find(tokens, other).rights == {"read"}  # type: ignore[union-attr]
    assert find(tokens, token + "x") is None
    assert find(tokens, "") is None
    with pytest.raises(TokenError, match="exists"):
        add_token(path, "ci", parse_rights("read"))
    revoke_token(path, "ci")
    assert find(read_tokens(path), token) is None
    assert [t.name for t in read_tokens(path)] == ["viewer"]


def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    cache = TokenFile(path)
    assert cache.tokens() == []  # no file: nobody gets in
    token = add_token(path, "a", parse_rights("all"))
    assert find(cache.tokens(), token) is not None
    revoke_token(path, "a")
    assert find(cache.tokens(), token) is None


def test_rights_and_token_file_place(tmp_path: Path) -> None:
    assert parse_rights("all") == {"read", "submit", "cancel", "retry", "sign"}
    with pytest.raises(TokenError, match="give rights from"):
        parse_rights("read,admin")
    assert tokens_path(None, tmp_path, {}) == tmp_path / "api-tokens.json"
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "api-tokens").write_text(json.dumps({"tokens": []}))
    assert tokens_path(None, tmp_path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == (
        tmp_path / "creds" / "api-tokens"
    )
    assert tokens_path(Path("/x"), tmp_path, {}) == Path("/x")
    # the unit's copy of api.tokens_file, handed in by systemd, is the one it reads
    assert tokens_path(Path("/x"), tmp_path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == (
        tmp_path / "creds" / "api-tokens"
    )


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(10.0, clock=lambda: now[0])
    assert [limiter.wait_for("a") for _ in range(20)] == [0.0] * 20  # a burst of twice the rate
    assert limiter.wait_for("a") == pytest.approx(0.1)
    assert limiter.wait_for("b") == 0.0  # each token has its own bucket
    now[0] += 0.5
    assert [limiter.wait_for("a") == 0.0 for _ in range(6)] == [True] * 5 + [False]


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8750") == "127.0.0.1:8750"
    assert parse_listen("[::1]:8750") == "[::1]:8750"
    for bad in ("localhost:8750", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999"):
        with pytest.raises(ValueError, match=r"ADDRESS:PORT|IP address"):
            parse_listen(bad)


def test_tokens_never_reach_log_text() -> None:
    assert (
        redact_text("bad header Bearer lsd_abcdefghijklmnopqrstuvwxyz012345")
        == "bad header Bearer [redacted]"
    )


def test_etag_follows_the_document() -> None:
    assert etag({"a": 1, "b": 2}) == etag({"b": 2, "a": 1})
    assert etag({"a": 1}) != etag({"a": 2})


def body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def receiver(inbox: Path, **limits: int) -> MultipartReceiver:
    options = {"max_bytes": 10**6, "min_free": 0, **limits}
    free = options.pop("free", None)
    return MultipartReceiver(
        f"multipart/form-data; boundary={BOUNDARY}",
        submit_media_dir(inbox, "upload"),
        max_bytes=options["max_bytes"],
        min_free=options["min_free"],
        free_bytes=None if free is None else (lambda _path: free),
    )


def feed(target: MultipartReceiver, data: bytes, size: int = 7) -> None:
    for start in range(0, len(data), size):
        target.feed(data[start : start + size])


def test_files_and_fields_arrive_in_small_chunks(tmp_path: Path) -> None:
    video = bytes(range(256)) * 40
    upload = receiver(tmp_path)
    feed(
        upload,
        body([("name", None, b"promo"), ("videos", "a/face.mp4", video), ("videos", "face.mp4", b"2")]),
    )
    received = upload.finish()
    assert received.fields == {"name": ["promo"]}
    first, second = received.files["videos"]
    assert first.read_bytes() == video
    assert first.name == "face.mp4"
    assert second.name == "face-2.mp4"
    assert second.read_bytes() == b"2"
    assert first.parent.parent == tmp_path / "media"
    assert sorted(p.name for p in first.parent.iterdir()) == ["face-2.mp4", "face.mp4"]  # no temp files


def test_size_limit_stops_the_upload_while_it_streams(tmp_path: Path) -> None:
    upload = receiver(tmp_path, max_bytes=1000)
    with pytest.raises(UploadRefused) as refused:
        feed(upload, body([("videos", "big.mp4", b"x" * 5000)]), size=100)
    upload.abort()
    assert refused.value.status == 413
    assert upload.total <= 1100  # refused as soon as it went over, not after the whole body
    assert not [p for p in (tmp_path / "media").rglob("*") if p.is_file()]  # the temp file is gone


def test_free_space_is_checked_before_writing(tmp_path: Path) -> None:
    upload = receiver(tmp_path, min_free=10**6, free=10**6 + 10)
    with pytest.raises(UploadRefused) as refused:
        feed(upload, body([("videos", "v.mp4", b"x" * 100)]), size=1000)
    assert refused.value.status == 507
    assert "api.min_free_bytes" in str(refused.value)


def test_a_cut_body_is_not_complete(tmp_path: Path) -> None:
    upload = receiver(tmp_path)
    data = body([("videos", "v.mp4", b"x" * 100)])
    feed(upload, data[:-30])
    with pytest.raises(UploadRefused, match="ended before"):
        upload.finish()


def test_doctor_reports_the_api_tokens_and_reach(tmp_path: Path) -> None:
    from daemon.config import ApiConfig, Config, PathsConfig
    from daemon.doctor import _api

    config = Config(paths=PathsConfig(state=tmp_path))
    (check,) = _api(config)
    assert (check.ok, check.warn) == (True, False)
    assert "0 token(s)" in check.detail
    assert "every request is refused" in check.detail
    add_token(tmp_path / "api-tokens.json", "ci", parse_rights("read"))
    (tmp_path / "api-tokens.json").chmod(0o644)
    wide = Config(paths=PathsConfig(state=tmp_path), api=ApiConfig(listen="0.0.0.0:8750"))
    (check,) = _api(wide)
    assert check.warn
    assert "1 token(s)" in check.detail
    assert "readable by other users" in check.detail
    assert "TLS proxy" in check.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_root_adding_a_token_leaves_the_file_owned_like_its_folder(tmp_path: Path) -> None:
    """`sudo lipsyncd api token add` must not leave a root-owned 0600 file the service cannot read."""
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 4321, 4321)
    add_token(folder / "api-tokens.json", "ci", parse_rights("read"))
    info = (folder / "api-tokens.json").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4321, 0o600)


def test_a_restart_settles_idempotency_keys_by_what_reached_the_inbox(tmp_path: Path) -> None:
    """A key whose job's manifest was written answers that job after a restart, even when the restart
    came between the rename into the inbox and the record; any other unfinished key is free again."""
    ledger = Ledger(tmp_path, written=lambda job: False)
    assert ledger.reserve("ci", "k1") is None
    with pytest.raises(KeyBusy):
        ledger.reserve("ci", "k1")
    assert ledger.reserve("other", "k1") is None  # keys are per token
    ledger.plan("ci", "k1", "promo-1")  # ... its manifest renamed in, then the process died
    assert ledger.reserve("ci", "k2") is None
    ledger.plan("ci", "k2", "promo-2")  # ... died before the rename
    assert ledger.reserve("ci", "k3") is None  # ... died while receiving
    ledger.close()
    again = Ledger(tmp_path, written=lambda job: job == "promo-1")
    assert again.reserve("ci", "k1") == "promo-1"
    assert again.submitted("promo-1")
    assert again.reserve("ci", "k2") is None
    assert again.reserve("ci", "k3") is None
    again.record("promo-4", "ci", "k3")
    assert again.reserve("ci", "k3") == "promo-4"
    again.close()


def test_a_submitted_job_the_inbox_refused_reads_as_refused_in_its_words(tmp_path: Path) -> None:
    """GET of a job the API submitted that the intake refused: its failed/NAME.error.txt, looked up by
    name (not every report in failed/), and a summary that no longer says it waits."""
    paths = PathsConfig(inbox=tmp_path / "inbox", outputs=tmp_path / "out", state=tmp_path / "state")
    api = Api(Config(paths=paths), environ={})
    try:
        failed = paths.inbox / "failed"
        failed.mkdir(parents=True)
        api.ledger.record("promo-1", "ci", None)
        api.ledger.record("promo-2", "ci", None)
        (failed / "promo-1.yaml").write_text("audio: gone.wav\n")
        report = "lipsyncd refused promo-1.yaml\n\n- audio: no file gone.wav\n"
        (failed / "promo-1.error.txt").write_text(report)
        refused, waiting = api.view("promo-1"), api.view("promo-2")
        assert refused is not None
        assert waiting is not None
        assert (refused["job"], refused["status"]) == ("promo-1", "refused")
        assert refused["manifest"] == "promo-1.yaml"
        assert "no file gone.wav" in json.dumps(refused["error"])
        assert refused["summary"] == "refused by the inbox: see error"
        assert (waiting["status"], waiting["summary"]) == (
            "submitted",
            "in the inbox, waiting for the render watcher to take it",
        )
        assert api.view("never-submitted") is None
    finally:
        api.close()
