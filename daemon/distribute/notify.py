"""Webhooks sent once per finished job with its links: WeCom, DingTalk, Feishu/Lark, or plain JSON.

The payload builders and signatures are pure functions. `Notifier` delivers in one thread per hook,
so `send` never blocks the caller and a hanging endpoint delays only its own hook; each hook is
rate-limited (token bucket, 20 per minute by default: the vendors' own limit), every request has a
short timeout, and failures are retried with backoff. Robot URLs carry tokens and the signed query
strings carry signatures, so no URL is ever logged; hooks are named by their configured name only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

KINDS = ("wecom", "dingtalk", "feishu", "json")
# vendor codes that mean "too many messages, try later"; any other non-zero code is final
_RATE_LIMIT_CODES = frozenset({45009, 130101, 11232, -1})
_BODY_LIMITS = {"wecom": 4000, "dingtalk": 18000, "feishu": 28000}  # bytes of text we put in a message
_MAX_RESPONSE = 64 * 1024


class NotifyError(Exception):
    """A webhook is configured wrongly; the message says which and what to do."""


@dataclass(frozen=True)
class WebhookSettings:
    """One webhook, referred to by `name` from a job manifest's `notify:` list."""

    name: str
    kind: str  # "wecom" (group robot), "dingtalk" (custom robot), "feishu" (Feishu/Lark bot), "json"
    url: str = ""  # the robot's webhook address (it contains the robot's token: prefer url_file)
    secret_file: Path | None = None  # DingTalk "SEC..." / Feishu signing secret / JSON HMAC key
    url_file: Path | None = None  # a file holding the webhook address, instead of `url`
    feishu_msg_type: str = "post"  # Feishu only: "post" (rich text) or "interactive" (card)
    timeout_s: float = 5.0  # per request: connect + answer; a hanging endpoint cannot hold us longer
    per_minute: int = 20  # rate limit for this hook
    max_attempts: int = 6  # then the message is dropped and the failure logged
    retry_base_s: float = 2.0  # backoff: full jitter, doubling from here
    retry_cap_s: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"webhook {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}.")
        if bool(self.url) == (self.url_file is not None):
            raise ValueError(f"webhook {self.name!r}: give exactly one of url or url_file.")
        if self.feishu_msg_type not in ("post", "interactive"):
            raise ValueError(f"webhook {self.name!r}: feishu_msg_type must be 'post' or 'interactive'.")
        if self.per_minute < 1 or self.max_attempts < 1 or self.timeout_s <= 0:
            raise ValueError(
                f"webhook {self.name!r}: per_minute, max_attempts and timeout_s must be positive."
            )


@dataclass(frozen=True)
class VideoLink:
    name: str
    url: str
    expires_at: datetime
    sha256: str
    size: int


@dataclass(frozen=True)
class FailedVideo:
    name: str  # the output it would have been
    source: str  # as the manifest wrote it
    error: str  # why, in plain words


@dataclass(frozen=True)
class JobLinks:
    """What a notification says: the job and a link per finished video; for a `partial` job, also the
    videos that failed and why."""

    job: str
    videos: tuple[VideoLink, ...]
    status: str = "done"  # the job's final state: done or partial
    summary: str = ""  # "2 of 3 ready"
    failed: tuple[FailedVideo, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """The outcome of one message to one hook, handed to Notifier's on_result."""

    hook: str
    job: str
    ok: bool
    attempts: int
    error: str = ""


@dataclass(frozen=True)
class HookRequest:
    url: str
    body: bytes
    headers: dict[str, str]


# -- text ----------------------------------------------------------------------------------------------


def title(links: JobLinks) -> str:
    count = len(links.videos)
    if links.failed:
        ready = links.summary or f"{count} ready"
        return f"lipsyncd: {links.job} is partly ready ({ready}, {len(links.failed)} failed)"
    return f"lipsyncd: {links.job} is ready ({count} video{'s' if count != 1 else ''})"


def _failed_line(video: FailedVideo) -> str:
    return f"- {video.source} failed: {video.error}"


def _lines(links: JobLinks) -> list[str]:
    """A line per link, then one per failed video (the reasons, so nobody waits for what will not come)."""
    return [_video_line(v) for v in links.videos] + [_failed_line(v) for v in links.failed]


def _video_line(video: VideoLink) -> str:
    until = video.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"- [{video.name}]({video.url}) ({video.size / 1e6:.1f} MB, link valid until {until})"


def _fit(head: str, lines: list[str], limit: int) -> str:
    """As many lines as fit in `limit` bytes, then a note saying how many were left out."""
    kept: list[str] = []
    for index, line in enumerate(lines):
        rest = len(lines) - index - 1
        candidate = "\n".join([head, *kept, line]) + (f"\n... and {rest} more in links.json" if rest else "")
        if len(candidate.encode()) > limit:
            return "\n".join([head, *kept, f"... and {len(lines) - index} more in links.json"])
        kept.append(line)
    return "\n".join([head, *kept])


def markdown(links: JobLinks, limit: int = 1 << 20) -> str:
    return _fit(f"**{title(links)}**", _lines(links), limit)


# -- payloads (pure) -----------------------------------------------------------------------------------


def wecom_payload(links: JobLinks) -> dict[str, Any]:
    """WeCom group robot, markdown message (content at most 4096 bytes)."""
    return {"msgtype": "markdown", "markdown": {"content": markdown(links, _BODY_LIMITS["wecom"])}}


def dingtalk_payload(links: JobLinks) -> dict[str, Any]:
    """DingTalk custom robot, markdown message."""
    return {
        "msgtype": "markdown",
        "markdown": {"title": title(links), "text": markdown(links, _BODY_LIMITS["dingtalk"])},
    }


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk: urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")))."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


def dingtalk_url(url: str, secret: str, timestamp_ms: int) -> str:
    joiner = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{joiner}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu/Lark: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_payload(
    links: JobLinks, msg_type: str = "post", secret: str | None = None, timestamp_s: int | None = None
) -> dict[str, Any]:
    """Feishu/Lark bot: a rich-text post or an interactive card; signed when a secret is set."""
    payload = _feishu_card(links) if msg_type == "interactive" else _feishu_post(links)
    if secret:
        stamp = int(time.time()) if timestamp_s is None else timestamp_s
        payload = {"timestamp": str(stamp), "sign": feishu_sign(secret, stamp), **payload}
    return payload


def _feishu_post(links: JobLinks) -> dict[str, Any]:
    rows = [
        [{"tag": "a", "text": v.name, "href": v.url}, {"tag": "text", "text": _feishu_note(v)}]
        for v in links.videos
    ] + [[{"tag": "text", "text": _failed_line(v)}] for v in links.failed]
    return {"msg_type": "post", "content": {"post": {"zh_cn": {"title": title(links), "content": rows}}}}


def _feishu_note(video: VideoLink) -> str:
    until = video.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f" ({video.size / 1e6:.1f} MB, link valid until {until})"


def _feishu_card(links: JobLinks) -> dict[str, Any]:
    body = _fit("", _lines(links), _BODY_LIMITS["feishu"]).lstrip("\n")
    return {
        "msg_type": "interactive",
        "card": {
            "header": {"title": {"tag": "plain_text", "content": title(links)}},
            "elements": [{"tag": "markdown", "content": body}],
        },
    }


def json_payload(links: JobLinks) -> dict[str, Any]:
    """The generic webhook: {"job", "status" (done or partial), "summary" ("2 of 3 ready"),
    "videos": [{"name", "url", "expires_at", "sha256", "size"}], "failed": [{"name", "source", "error"}]}."""
    videos = [
        {
            "name": v.name,
            "url": v.url,
            "expires_at": v.expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "sha256": v.sha256,
            "size": v.size,
        }
        for v in links.videos
    ]
    failed = [{"name": v.name, "source": v.source, "error": v.error} for v in links.failed]
    return {
        "job": links.job,
        "status": links.status,
        "summary": links.summary,
        "videos": videos,
        "failed": failed,
    }


def json_signature(secret: str, body: bytes) -> str:
    """Header X-Lipsyncd-Signature for the generic webhook: sha256=HEX(HMAC-SHA256(secret, body))."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def build_request(
    kind: str, url: str, secret: str | None, links: JobLinks, now: float, msg_type: str
) -> HookRequest:
    """The exact HTTP request for one message (pure: `now` is the Unix time to sign with)."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if kind == "wecom":
        payload = wecom_payload(links)
    elif kind == "dingtalk":
        payload = dingtalk_payload(links)
        url = dingtalk_url(url, secret, int(now * 1000)) if secret else url
    elif kind == "feishu":
        payload = feishu_payload(links, msg_type, secret, int(now))
    else:
        payload = json_payload(links)
    body = json.dumps(payload, ensure_ascii=False).encode()
    if kind == "json" and secret:
        headers["X-Lipsyncd-Signature"] = json_signature(secret, body)
    return HookRequest(url, body, headers)


# -- answers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retry: bool
    reason: str = ""


def judge(kind: str, status: int, body: bytes) -> Outcome:
    """Did the vendor take the message? WeCom/DingTalk answer errcode, Feishu code, both 0 on success."""
    if status == 429 or status >= 500:
        return Outcome(False, True, f"HTTP {status}")
    if not 200 <= status < 300:
        return Outcome(False, False, f"HTTP {status}")
    if kind == "json":
        return Outcome(True, False)
    return _judge_vendor(body)


def _judge_vendor(body: bytes) -> Outcome:
    try:
        answer = json.loads(body)
    except ValueError:
        return Outcome(False, True, "the answer was not JSON")
    if not isinstance(answer, dict):
        return Outcome(False, True, "the answer was not a JSON object")
    code = answer.get("errcode", answer.get("code", answer.get("StatusCode")))
    if code == 0:
        return Outcome(True, False)
    message = str(answer.get("errmsg", answer.get("msg", answer.get("StatusMessage", ""))))[:200]
    return Outcome(False, code in _RATE_LIMIT_CODES, f"code {code}: {message}")


def post(request: HookRequest, timeout_s: float) -> tuple[int, bytes]:
    """POST and return (status, body); an HTTP error status is an answer, not an exception."""
    # the scheme was checked to be http(s) in load_hook
    http = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as response:  # noqa: S310 - http(s) only, see load_hook
            return response.status, response.read(_MAX_RESPONSE)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(_MAX_RESPONSE) if exc.fp else b""


def _network_reason(exc: BaseException, timeout_s: float) -> str:
    """Why a request failed, in words that never include the URL (it carries tokens)."""
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    if isinstance(reason, TimeoutError):
        return f"no answer: timed out after {timeout_s:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    return type(exc).__name__


# -- rate limit ----------------------------------------------------------------------------------------


class TokenBucket:
    """`per_minute` messages per minute, in bursts of at most `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.rate, self.clock = float(per_minute), per_minute / 60.0, clock
        self.tokens, self.stamp = self.capacity, clock()

    def try_take(self) -> float:
        """Take a token: 0.0 on success, else the seconds to wait before one is there."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def take(self, stop: threading.Event) -> bool:
        """Wait for a token; False when stop was set first."""
        while (wait_s := self.try_take()) > 0:
            if stop.wait(wait_s):
                return False
        return not stop.is_set()


# -- delivery ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hook:
    settings: WebhookSettings
    url: str
    secret: str | None


def _read_secret(path: Path, hook: str, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise NotifyError(f"webhook {hook!r}: cannot read its {what} file {path}: {exc.strerror}.") from None
    if not value:
        raise NotifyError(f"webhook {hook!r}: its {what} file {path} is empty.")
    return value


def load_hook(settings: WebhookSettings) -> _Hook:
    url = _read_secret(settings.url_file, settings.name, "url") if settings.url_file else settings.url
    secret = _read_secret(settings.secret_file, settings.name, "secret") if settings.secret_file else None
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise NotifyError(f"webhook {settings.name!r}: its address must start with https:// (or http://).")
    return _Hook(settings, url, secret)


class _HookWorker(threading.Thread):
    def __init__(
        self, hook: _Hook, stop: threading.Event, on_result: Callable[[Delivery], None] | None
    ) -> None:
        super().__init__(name=f"notify-{hook.settings.name}", daemon=True)
        self.hook, self.stop, self.on_result = hook, stop, on_result
        self.inbox: queue.Queue[JobLinks] = queue.Queue()
        self.bucket = TokenBucket(hook.settings.per_minute)
        self.rng = random.Random()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                links = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._report(self._deliver(links))
            finally:
                self.inbox.task_done()
        if not self.inbox.empty():
            log.warning("webhook_dropped_on_exit", hook=self.hook.settings.name, pending=self.inbox.qsize())

    def _deliver(self, links: JobLinks) -> Delivery:
        settings, reason = self.hook.settings, ""
        for attempt in range(1, settings.max_attempts + 1):
            if not self.bucket.take(self.stop):
                return Delivery(settings.name, links.job, False, attempt - 1, "stopped before sending")
            outcome = self._attempt(links)
            if outcome.ok or not outcome.retry:
                return Delivery(settings.name, links.job, outcome.ok, attempt, outcome.reason)
            reason = outcome.reason
            if attempt == settings.max_attempts:
                break
            delay = self.rng.uniform(0, min(settings.retry_cap_s, settings.retry_base_s * 2 ** (attempt - 1)))
            log.warning("webhook_retry", hook=settings.name, job=links.job, attempt=attempt, reason=reason)
            if self.stop.wait(delay):
                break
        return Delivery(settings.name, links.job, False, attempt, reason)

    def _attempt(self, links: JobLinks) -> Outcome:
        hook = self.hook
        request = build_request(
            hook.settings.kind, hook.url, hook.secret, links, time.time(), hook.settings.feishu_msg_type
        )
        try:
            status, body = post(request, hook.settings.timeout_s)
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, a bad address
            return Outcome(False, True, _network_reason(exc, hook.settings.timeout_s))
        return judge(hook.settings.kind, status, body)

    def _report(self, delivery: Delivery) -> None:
        if delivery.ok:
            log.info("webhook_sent", hook=delivery.hook, job=delivery.job, attempts=delivery.attempts)
        else:
            log.error(
                "webhook_failed",
                hook=delivery.hook,
                job=delivery.job,
                attempts=delivery.attempts,
                reason=delivery.error,
            )
        if self.on_result is not None:
            try:
                self.on_result(delivery)
            except Exception:  # a broken callback must not kill the hook's thread
                log.exception("webhook_result_callback_failed", hook=delivery.hook)


class Notifier:
    """Sends JobLinks to named webhooks in the background. Use as a context manager, or call close()."""

    def __init__(
        self, hooks: Iterable[WebhookSettings], *, on_result: Callable[[Delivery], None] | None = None
    ) -> None:
        self._stop = threading.Event()
        self._workers = {s.name: _HookWorker(load_hook(s), self._stop, on_result) for s in hooks}
        for worker in self._workers.values():
            worker.start()

    @property
    def names(self) -> list[str]:
        return sorted(self._workers)

    def send(self, hook_names: Iterable[str], links: JobLinks) -> None:
        """Queue the message for each named hook and return at once. Unknown names are logged."""
        for name in hook_names:
            worker = self._workers.get(name)
            if worker is None:
                log.warning("webhook_unknown", hook=name, job=links.job, known=self.names)
                continue
            worker.inbox.put_nowait(links)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued message was delivered (or gave up); False if time ran out first."""
        deadline = time.monotonic() + timeout_s
        while any(w.inbox.unfinished_tasks for w in self._workers.values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the hook threads; a request in flight ends by its own timeout."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
