"""The logging chain: formats, context fields, redaction, journald encoding. Real structlog output."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from daemon.ops.journal import JournalEntry, encode, field_name, make_entry
from daemon.ops.logging import configure_logging, redact_text, resolve_format

PRESIGNED = (
    "https://s3.local:8333/lipsyncd/2026/11/24/promo/anchor_a.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261124%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261124T080000Z"
    "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
)
SIGNATURE = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_bound_context_and_level() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    structlog.contextvars.bind_contextvars(job="spring-promo", video="anchor_a", stage="render")
    structlog.get_logger("t").info("batch_done", frames=32)
    structlog.get_logger("t").debug("not_shown")
    [record] = json_lines(out)
    assert record["event"] == "batch_done"
    assert record["frames"] == 32
    assert (record["job"], record["video"], record["stage"], record["level"]) == (
        "spring-promo",
        "anchor_a",
        "render",
        "info",
    )
    assert str(record["timestamp"]).endswith("Z")


def test_secrets_and_signatures_never_reach_the_output() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    log = structlog.get_logger("t")
    log.info("link_ready", url=PRESIGNED, secret_key="hunter2", aws_access_key_id="AKIAEXAMPLE")
    log.info(
        "webhook_sent", target="https://oapi.dingtalk.com/robot/send?access_token=tok123&sign=c2lnbg%3D%3D"
    )
    log.info("nested", request={"headers": {"Authorization": "AWS4 Credential=x"}, "urls": [PRESIGNED]})
    try:
        raise RuntimeError(f"403 Forbidden for {PRESIGNED}")
    except RuntimeError as exc:
        log.exception("upload_failed", error=exc)
    text = out.getvalue()
    for secret in (SIGNATURE, "hunter2", "AKIAEXAMPLE", "tok123", "c2lnbg", "Credential=x"):
        assert secret not in text
    first = json_lines(out)[0]
    assert "X-Amz-Expires=86400" in str(first["url"])  # the rest of the URL stays useful
    assert "X-Amz-Signature=[redacted]" in str(first["url"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a?Signature=abc&Expires=1", "a?Signature=[redacted]&Expires=1"),
        ("x?timestamp=1&sign=abc%3D", "x?timestamp=1&sign=[redacted]"),
        ("design=keep&resign=keep", "design=keep&resign=keep"),
        ("no query here", "no query here"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_stdlib_warnings_go_through_the_same_chain() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("botocore.retries").warning("retrying %s", PRESIGNED)
    logging.getLogger("botocore.retries").info("chatter below WARNING is dropped")
    [record] = json_lines(out)
    assert record["logger"] == "botocore.retries"
    assert record["level"] == "warning"
    assert SIGNATURE not in str(record["event"])


def test_console_format_is_plain_text_without_a_tty() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    structlog.get_logger("t").info("model_loaded", model="baseline", token="t0k")
    line = out.getvalue()
    assert "model_loaded" in line
    assert "model=baseline" in line
    assert "t0k" not in line
    assert "\x1b[" not in line  # no colour codes into a file


def test_auto_picks_journald_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert resolve_format("auto", {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream) == "journald"
        assert resolve_format("auto", {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream) == "json"
        assert resolve_format("auto", {}, stream) == "json"
    assert resolve_format("auto", {}, io.StringIO()) == "json"
    with pytest.raises(ValueError, match="unknown log format"):
        resolve_format("xml", {}, io.StringIO())


def test_unknown_level_is_refused_in_plain_words() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("json", "loud", stream=io.StringIO())


@pytest.mark.parametrize(
    ("key", "name"),
    [("job", "JOB"), ("video-name", "VIDEO_NAME"), ("_private", "PRIVATE"), ("2pass", "F_2PASS")],
)
def test_field_names_follow_journald_rules(key: str, name: str) -> None:
    assert field_name(key) == name


def test_own_fields_cannot_be_overwritten() -> None:
    assert field_name("message") == "F_MESSAGE"
    assert field_name("priority") == "F_PRIORITY"
    assert len(field_name("x" * 100)) == 64


def parse_native(payload: bytes) -> dict[str, str]:
    """Reads journald's native protocol back, both the KEY=value and the length-prefixed form."""
    fields, pos = {}, 0
    while pos < len(payload):
        end = payload.index(b"\n", pos)
        line = payload[pos:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            pos = end + 1
        else:
            key, (size,) = line, struct.unpack("<Q", payload[end + 1 : end + 9])
            value = payload[end + 9 : end + 9 + size]
            pos = end + 9 + size + 1
        fields[key.decode()] = value.decode()
    return fields


def test_entry_encoding_round_trips() -> None:
    entry = make_entry(
        {"event": "job_failed", "level": "error", "job": "x", "exception": "Traceback\n  line", "n": 3},
        "lipsyncd-render",
    )
    fields = parse_native(encode(entry))
    assert fields["PRIORITY"] == "3"
    assert fields["SYSLOG_IDENTIFIER"] == "lipsyncd-render"
    assert fields["EVENT"] == "job_failed"
    assert fields["JOB"] == "x"
    assert fields["N"] == "3"
    assert fields["EXCEPTION"] == "Traceback\n  line"
    assert fields["MESSAGE"].startswith("job_failed job=x n=3\nTraceback")
    assert "LEVEL" not in fields
    assert "TIMESTAMP" not in fields


def test_journald_sink_sends_native_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        configure_logging("journald", "info", identifier="lipsyncd-upload", journal_socket=path)
        structlog.contextvars.bind_contextvars(job="x", video="anchor_b")
        structlog.get_logger("t").warning("upload_retry", url=PRESIGNED, password="pw")
        fields = parse_native(server.recv(65536))
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "lipsyncd-upload"
    assert (fields["JOB"], fields["VIDEO"], fields["PASSWORD"]) == ("x", "anchor_b", "[redacted]")
    assert SIGNATURE not in fields["URL"]
    assert SIGNATURE not in fields["MESSAGE"]


def test_journald_sink_falls_back_to_stderr_with_a_priority_prefix(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("journald", journal_socket=str(tmp_path / "no-journal"), stream=out)
    structlog.get_logger("t").error("storage_down", job="x")
    assert out.getvalue() == "<3>storage_down job=x\n"


def test_journal_entry_is_plain_data() -> None:
    entry = JournalEntry(fields=(("MESSAGE", "hi"),), message="hi", priority=6)
    assert encode(entry) == b"MESSAGE=hi\n"
