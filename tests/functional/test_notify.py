"""Webhooks: exact payload shapes and signatures, checked by real local HTTP receivers.

The receivers are small http.server instances on loopback standing in for the WeCom, DingTalk and
Feishu endpoints, which cannot be reached from tests; they check what those vendors document.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.distribute.notify import (
    Delivery,
    FailedVideo,
    JobLinks,
    Notifier,
    NotifyError,
    TokenBucket,
    VideoLink,
    WebhookSettings,
    dingtalk_payload,
    feishu_payload,
    json_payload,
    judge,
    wecom_payload,
)

EXPIRES = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
LINKS = JobLinks(
    "spring-promo",
    (
        VideoLink(
            "anchor_a.mp4", "http://127.0.0.1:8333/b/a.mp4?X-Amz-Signature=abc", EXPIRES, "aa" * 32, 2_500_000
        ),
        VideoLink(
            "anchor_b.mp4", "http://127.0.0.1:8333/b/b.mp4?X-Amz-Signature=def", EXPIRES, "bb" * 32, 1_000
        ),
    ),
)


class Receiver:
    """A loopback HTTP endpoint that records requests and answers from a script (last answer repeats)."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers = answers
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                url = urllib.parse.urlsplit(self.path)
                receiver.requests.append(
                    {
                        "path": url.path,
                        "query": urllib.parse.parse_qs(url.query),
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                status, answer = receiver.answers[min(len(receiver.requests), len(receiver.answers)) - 1]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                receiver.got.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", query: str = "") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}" + (f"?{query}" if query else "")

    def json(self, index: int = 0) -> Any:
        return json.loads(self.requests[index]["body"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([(200, {"errcode": 0, "errmsg": "ok"})])
    yield r
    r.close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("SEC0123456789abcdef\n")
    return path


def deliver(settings: WebhookSettings, links: JobLinks = LINKS, timeout: float = 10) -> Delivery:
    results: list[Delivery] = []
    done = threading.Event()

    def on_result(delivery: Delivery) -> None:
        results.append(delivery)
        done.set()

    with Notifier([settings], on_result=on_result) as notifier:
        notifier.send([settings.name], links)
        assert done.wait(timeout), "no delivery result in time"
    return results[0]


# -- payload shapes (pure) ------------------------------------------------------------------------------


def test_wecom_markdown_shape() -> None:
    payload = wecom_payload(LINKS)
    assert list(payload) == ["msgtype", "markdown"]
    assert payload["msgtype"] == "markdown"
    content = payload["markdown"]["content"]
    assert content.splitlines()[0] == "**lipsyncd: spring-promo is ready (2 videos)**"
    assert (
        "- [anchor_a.mp4](http://127.0.0.1:8333/b/a.mp4?X-Amz-Signature=abc) (2.5 MB, link valid until "
        "2026-11-25 08:00 UTC)" in content
    )


def test_wecom_content_stays_under_its_4096_byte_limit() -> None:
    many = JobLinks(
        "big", tuple(VideoLink(f"v{i}.mp4", "http://x/" + "q" * 400, EXPIRES, "", 1) for i in range(40))
    )
    content = wecom_payload(many)["markdown"]["content"]
    assert len(content.encode()) <= 4096
    assert content.rstrip().endswith("more in links.json")


def test_dingtalk_markdown_shape() -> None:
    payload = dingtalk_payload(LINKS)
    assert payload["msgtype"] == "markdown"
    assert payload["markdown"]["title"] == "lipsyncd: spring-promo is ready (2 videos)"
    assert "[anchor_b.mp4](http://127.0.0.1:8333/b/b.mp4?X-Amz-Signature=def)" in payload["markdown"]["text"]


def test_feishu_post_and_card_shapes() -> None:
    post = feishu_payload(LINKS, "post")
    assert post["msg_type"] == "post"
    assert "sign" not in post
    zh = post["content"]["post"]["zh_cn"]
    assert zh["title"] == "lipsyncd: spring-promo is ready (2 videos)"
    assert zh["content"][0][0] == {"tag": "a", "text": "anchor_a.mp4", "href": LINKS.videos[0].url}
    card = feishu_payload(LINKS, "interactive")
    assert card["msg_type"] == "interactive"
    assert card["card"]["header"]["title"] == {"tag": "plain_text", "content": zh["title"]}
    assert card["card"]["elements"][0]["tag"] == "markdown"


def test_a_partial_job_says_so_and_why_in_every_kind_of_message() -> None:
    failed = FailedVideo("cut.mp4", "media/cut.mp4", "the video media/cut.mp4 is cut short")
    partial = JobLinks(LINKS.job, LINKS.videos[:1], "partial", "1 of 2 ready", (failed,))
    body = json_payload(partial)
    assert (body["status"], body["summary"]) == ("partial", "1 of 2 ready")
    assert body["failed"] == [{"name": "cut.mp4", "source": "media/cut.mp4", "error": failed.error}]
    assert [v["name"] for v in body["videos"]] == ["anchor_a.mp4"]
    expected_title = "lipsyncd: spring-promo is partly ready (1 of 2 ready, 1 failed)"
    for text in (
        wecom_payload(partial)["markdown"]["content"],
        dingtalk_payload(partial)["markdown"]["text"],
        json.dumps(feishu_payload(partial, "post"), ensure_ascii=False),
        json.dumps(feishu_payload(partial, "interactive"), ensure_ascii=False),
    ):
        assert expected_title in text
        assert "media/cut.mp4 failed: the video media/cut.mp4 is cut short" in text


def test_generic_json_shape() -> None:
    assert json_payload(LINKS) == {
        "job": "spring-promo",
        "status": "done",
        "summary": "",
        "failed": [],
        "videos": [
            {
                "name": "anchor_a.mp4",
                "url": LINKS.videos[0].url,
                "expires_at": "2026-11-25T08:00:00Z",
                "sha256": "aa" * 32,
                "size": 2_500_000,
            },
            {
                "name": "anchor_b.mp4",
                "url": LINKS.videos[1].url,
                "expires_at": "2026-11-25T08:00:00Z",
                "sha256": "bb" * 32,
                "size": 1_000,
            },
        ],
    }


def test_vendor_answers_are_judged() -> None:
    assert judge("wecom", 200, b'{"errcode":0,"errmsg":"ok"}').ok
    assert judge("feishu", 200, b'{"code":0,"msg":"success"}').ok
    refused = judge("dingtalk", 200, b'{"errcode":310000,"errmsg":"sign not match"}')
    assert (refused.ok, refused.retry, refused.reason) == (False, False, "code 310000: sign not match")
    assert judge("wecom", 200, b'{"errcode":45009,"errmsg":"freq"}').retry  # rate limited: later
    assert judge("json", 503, b"").retry
    assert not judge("json", 404, b"").retry
    assert judge("json", 204, b"").ok


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(20, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(20)] == [0.0] * 20
    assert bucket.try_take() == pytest.approx(3.0)  # 20 per minute: one every 3 s
    now[0] += 3.0
    assert bucket.try_take() == 0.0


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind 'slack'"):
        WebhookSettings("x", "slack", "https://example.invalid/")
    with pytest.raises(ValueError, match="exactly one of url or url_file"):
        WebhookSettings("x", "json")
    with pytest.raises(NotifyError, match="cannot read its secret file"):
        Notifier(
            [WebhookSettings("x", "dingtalk", "https://example.invalid/", secret_file=tmp_path / "none")]
        )


# -- delivery to local receivers ------------------------------------------------------------------------


def test_wecom_robot_gets_the_markdown(receiver: Receiver) -> None:
    result = deliver(WebhookSettings("ops-wecom", "wecom", receiver.url(query="key=ROBOT-KEY")))
    assert (result.ok, result.attempts) == (True, 1)
    assert receiver.requests[0]["query"] == {"key": ["ROBOT-KEY"]}
    assert receiver.json() == wecom_payload(LINKS)
    assert receiver.requests[0]["headers"]["Content-Type"].startswith("application/json")


def test_dingtalk_request_is_signed(receiver: Receiver, secret_file: Path) -> None:
    before = int(time.time() * 1000)
    result = deliver(
        WebhookSettings(
            "dt", "dingtalk", receiver.url("/robot/send", "access_token=TOKEN"), secret_file=secret_file
        )
    )
    assert result.ok
    query = receiver.requests[0]["query"]
    assert query["access_token"] == ["TOKEN"]
    timestamp = int(query["timestamp"][0])
    assert before <= timestamp <= int(time.time() * 1000)
    # DingTalk's documented check: base64(HMAC-SHA256(secret, "timestamp\nsecret")), url-encoded in the URL
    secret = "SEC0123456789abcdef"
    expected = base64.b64encode(
        hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    )
    assert query["sign"] == [expected.decode()]  # parse_qs has undone the url-encoding
    assert receiver.json() == dingtalk_payload(LINKS)


def test_feishu_body_is_signed(secret_file: Path) -> None:
    receiver = Receiver([(200, {"code": 0, "msg": "success"})])
    try:
        result = deliver(
            WebhookSettings(
                "fs", "feishu", receiver.url("/open-apis/bot/v2/hook/TOKEN"), secret_file=secret_file
            )
        )
        assert result.ok
        body = receiver.json()
        timestamp = int(body["timestamp"])
        assert abs(timestamp - time.time()) < 10
        # Feishu's documented check: HMAC-SHA256 keyed with "timestamp\nsecret" over an empty message
        key = f"{timestamp}\nSEC0123456789abcdef".encode()
        assert body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        assert {k: v for k, v in body.items() if k not in ("timestamp", "sign")} == feishu_payload(
            LINKS, "post"
        )
    finally:
        receiver.close()


def test_generic_json_hook_gets_the_links_and_a_body_signature(receiver: Receiver, secret_file: Path) -> None:
    result = deliver(WebhookSettings("js", "json", receiver.url(), secret_file=secret_file))
    assert result.ok
    assert receiver.json() == json_payload(LINKS)
    signature = receiver.requests[0]["headers"]["X-Lipsyncd-Signature"]
    expected = hmac.new(b"SEC0123456789abcdef", receiver.requests[0]["body"], hashlib.sha256).hexdigest()
    assert signature == "sha256=" + expected


def test_url_can_come_from_a_file(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "url").write_text(receiver.url(query="key=FROM-FILE") + "\n")
    assert deliver(WebhookSettings("w", "wecom", url_file=tmp_path / "url")).ok
    assert receiver.requests[0]["query"] == {"key": ["FROM-FILE"]}


def test_failures_are_retried_then_delivered() -> None:
    receiver = Receiver(
        [(500, {}), (200, {"errcode": 45009, "errmsg": "api freq out of limit"}), (200, {"errcode": 0})]
    )
    try:
        with capture_logs() as logs:
            result = deliver(
                WebhookSettings("w", "wecom", receiver.url(), retry_base_s=0.05, retry_cap_s=0.1)
            )
        assert (result.ok, result.attempts, len(receiver.requests)) == (True, 3, 3)
        assert [e["reason"] for e in logs if e["event"] == "webhook_retry"] == [
            "HTTP 500",
            "code 45009: api freq out of limit",
        ]
    finally:
        receiver.close()


def test_a_refusal_is_not_retried_and_no_secret_is_logged(secret_file: Path) -> None:
    receiver = Receiver([(200, {"errcode": 310000, "errmsg": "sign not match"})])
    try:
        with capture_logs() as logs:
            result = deliver(
                WebhookSettings(
                    "dt", "dingtalk", receiver.url(query="access_token=TOKEN"), secret_file=secret_file
                )
            )
        assert (result.ok, result.attempts, result.error) == (False, 1, "code 310000: sign not match")
        text = repr(logs)
        assert "TOKEN" not in text
        assert "SEC0123456789abcdef" not in text
        assert "sign=" not in text
        assert receiver.requests[0]["query"]["sign"][0] not in text
        assert any(e["event"] == "webhook_failed" and e["hook"] == "dt" for e in logs)
    finally:
        receiver.close()


def test_a_hanging_endpoint_neither_blocks_send_nor_other_hooks(receiver: Receiver) -> None:
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen()  # accepts connections, never answers
    results: list[Delivery] = []
    hooks = [
        WebhookSettings(
            "stuck",
            "json",
            f"http://127.0.0.1:{hang.getsockname()[1]}/",
            timeout_s=0.5,
            max_attempts=2,
            retry_base_s=0.05,
        ),
        WebhookSettings("fine", "wecom", receiver.url()),
    ]
    try:
        notifier = Notifier(hooks, on_result=results.append)
        began = time.monotonic()
        notifier.send(["stuck", "fine", "unknown-name"], LINKS)
        assert time.monotonic() - began < 0.1
        assert receiver.got.wait(5)  # the healthy hook is served while the other one hangs
        deadline = time.monotonic() + 10
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        by_hook = {r.hook: r for r in results}
        assert by_hook["fine"].ok
        assert (by_hook["stuck"].ok, by_hook["stuck"].attempts) == (False, 2)
        assert "timed out" in by_hook["stuck"].error
        began = time.monotonic()
        notifier.close()
        assert time.monotonic() - began < 2
    finally:
        hang.close()
