"""The HTTP API's routes (FastAPI): a thin door onto `lipsyncd submit`, the job store and control.py.

Every route but /v1/health needs a bearer token with the right for it (401 without one, 403 without the
right); errors are JSON {"error": "plain words"} with the words the CLI and the error files use."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import structlog
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon import __version__
from daemon.api.ledger import KeyBusy, Ledger
from daemon.api.tokens import Token, TokenError, TokenFile, find, tokens_path
from daemon.api.uploads import MultipartReceiver, Received, UploadRefused
from daemon.config import Config, systemd_credential
from daemon.links import job_view
from daemon.manifest import job_name
from daemon.status import ACTIVE, Filter, parse_since, refused_document, select
from daemon.store import JobState, JobStore
from daemon.submit import Checks, MediaDir, Submission, SubmitError, submit, submit_media_dir

log = structlog.get_logger(__name__)

MAX_JSON_BYTES = 1_000_000
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces
POLL_EVERY = 0.25  # seconds between two looks at the store while a client waits for a change
SSE_HEARTBEAT = 15.0
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class JobRequest(BaseModel):
    """POST /v1/jobs as JSON: media already in the share, named relative to the share's folder."""

    model_config = ConfigDict(extra="forbid")
    audio: str = Field(description="the audio file, relative to the share (paths.shared)")
    videos: list[str] = Field(min_length=1, description="the presenter videos, relative to the share")
    name: str | None = Field(None, description="the job's name; a short random suffix keeps it unique")
    distribute: bool = False
    link_ttl: str | None = Field(None, description="link lifetime such as 24h (at most 7d)")
    notify: list[str] = Field(default_factory=list, description="webhook names from the configuration")
    model: str | None = None


@dataclass
class RateLimiter:
    """A token bucket per API token: `rate` requests a second, bursts of twice that."""

    rate: float
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait_for(self, name: str) -> float:
        """0 when the request may go now (and counts it), else seconds until it may."""
        burst = 2 * self.rate
        level, then = self._buckets.get(name, (burst, self.clock()))
        now = self.clock()
        level = min(burst, level + (now - then) * self.rate)
        if level < 1:
            self._buckets[name] = (level, now)
            return (1 - level) / self.rate
        self._buckets[name] = (level - 1, now)
        return 0.0


class Api:
    """What the routes share: the store, the API's ledger, the tokens, the limits."""

    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        self.config = config
        self.store = JobStore(config.state_dir, timeout=config.store.busy_timeout, url=config.store.url)
        self.ledger = Ledger(config.state_dir, written=self._written)
        self.tokens = TokenFile(tokens_path(config.api.tokens_file, config.state_dir, environ))
        self.limiter = RateLimiter(config.api.rate_limit)
        self.credentials = systemd_credential("s3", environ)

    def _written(self, job: str) -> bool:
        """Whether this job's manifest reached the inbox: there, claimed, filed, or already a job."""
        inbox = self.config.inbox_dir
        folders = (inbox, inbox / ".claimed", inbox / "done", inbox / "failed")
        return self.store.job(job) is not None or any((f / f"{job}.yaml").exists() for f in folders)

    def close(self) -> None:
        self.store.close()
        self.ledger.close()

    def checks(self) -> Checks:
        from daemon.render.modelspec import available_models

        return Checks(tuple(self.config.webhooks), tuple(available_models(self.config.models_dir)))

    # -- views --------------------------------------------------------------------------------------

    def view(self, job_id: str) -> dict[str, Any] | None:
        """The links.json view of a job; for a job this API submitted that the render watcher has not
        taken yet, a short view saying so (or why the inbox refused it)."""
        job = self.store.job(job_id)
        if job is not None:
            return job_view(job, self.store.videos(job_id), self.config.outputs_dir / job_id)
        if not self.ledger.submitted(job_id):
            return None
        manifest = f"{job_id}.yaml"
        refused = refused_document(self.config.inbox_dir / "failed" / f"{job_id}.error.txt")
        if refused is not None and refused["manifest"] == manifest:
            summary = "refused by the inbox: see error"
            return {**_waiting(job_id, manifest), **refused, "job": job_id, "summary": summary}
        return _waiting(job_id, manifest)

    def views(self, states: tuple[JobState, ...], only: Filter, limit: int) -> list[dict[str, Any]]:
        jobs = self.store.jobs(*states)
        if not only.failed and only.since is None:  # no filter on the views: build only the last `limit`
            jobs = jobs[-limit:]
        outputs = self.config.outputs_dir
        documents = [job_view(job, self.store.videos(job.id), outputs / job.id) for job in jobs]
        return select(documents, only)[-limit:]


def _waiting(job_id: str, manifest: str) -> dict[str, Any]:
    return {
        "version": 1,
        "revision": 0,
        "job": job_id,
        "manifest": manifest,
        "status": "submitted",
        "error": None,
        "videos": [],
        "summary": "in the inbox, waiting for the render watcher to take it",
        "problems": [],
    }


def etag(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return '"' + hashlib.sha256(text).hexdigest()[:32] + '"'


# -- the application ---------------------------------------------------------------------------------


def create_app(config: Config, environ: Mapping[str, str] | None = None) -> FastAPI:
    api = Api(config, os.environ if environ is None else environ)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        api.close()

    app = FastAPI(
        lifespan=lifespan,
        title="lipsyncd",
        version=__version__,
        description="Submit lip-sync jobs, follow them and fetch their links. See docs/api.md.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = api
    app.add_middleware(RequestLog)
    _errors(app)
    bearer = HTTPBearer(auto_error=False, description="a token from `lipsyncd api token add`")

    def need(right: str) -> Any:
        def check(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Token:
            return _authorise(api, credentials, right)

        return Depends(check)

    _job_routes(app, api, need)
    _control_routes(app, api, need)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    return app


def _job_routes(app: FastAPI, api: Api, need: Callable[[str], Any]) -> None:
    can_submit = need("submit")

    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Whether the API runs and reaches the job store (no token needed; says nothing else)."""
        try:
            api.store.revision("")
        except Exception:  # noqa: BLE001 - any failure of the store is the answer
            raise ApiError(503, "the job store cannot be read; see `lipsyncd doctor`") from None
        return {"status": "ok", "version": __version__}

    @app.post(
        "/v1/jobs",
        status_code=202,
        tags=["jobs"],
        openapi_extra={"requestBody": _submit_body()},
        responses={202: {"description": "the manifest is in the inbox; GET the job to follow it"}},
    )
    async def create_job(request: Request, token: Token = can_submit) -> Response:
        """Submit a job: multipart (audio and videos uploaded, or `audio_path` / `video_path` fields
        naming media in the share) or JSON (media in the share). Same checks as `lipsyncd submit`."""
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.match(key):
            raise ApiError(400, "the Idempotency-Key header must be 1 to 200 printable ASCII characters")
        if key is not None:
            try:
                earlier = api.ledger.reserve(token.name, key)
            except KeyBusy:
                raise ApiError(
                    409, "a request with this Idempotency-Key is still being received; wait for it"
                ) from None
            if earlier is not None:
                return _accepted(earlier, replayed=True)
        try:
            job_id = await _submit(api, request, _planner(api, token, key))
        except BaseException as exc:
            if key is not None:
                api.ledger.release(token.name, key)
            if isinstance(exc, ClientDisconnect):  # nobody to answer; its upload is already removed
                return Response(status_code=400)
            raise
        api.ledger.record(job_id, token.name, key)
        log.info("api_job_submitted", job=job_id, client=token.name)
        return _accepted(job_id, replayed=False)

    _read_routes(app, api, need)


def _read_routes(app: FastAPI, api: Api, need: Callable[[str], Any]) -> None:
    can_read = need("read")

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(
        status: str | None = Query(None, description="states, comma-separated: queued,rendering,done,..."),
        failed: bool = Query(False, description="only jobs with a failure"),
        since: str | None = Query(None, description="changed since: 2h, 30m, 1d ago, or an ISO date"),
        limit: int = Query(50, ge=1, le=1000),
        token: Token = can_read,
    ) -> dict[str, Any]:
        """Jobs, oldest first (the last `limit` after the filters), each as its links.json view."""
        states = _states(status)
        try:
            only = Filter(None, failed, parse_since(since) if since else None)
        except ValueError as exc:
            raise ApiError(400, str(exc).replace("--since", "since")) from None
        return {"jobs": api.views(states, only, limit)}

    @app.get("/v1/jobs/{job}", tags=["jobs"], responses={304: {"description": "unchanged (If-None-Match)"}})
    async def read_job(
        job: str,
        request: Request,
        wait: float = Query(0, ge=0, description="seconds to wait for a change from If-None-Match's ETag"),
        token: Token = can_read,
    ) -> Response:
        """The job's links.json view, with an ETag. With If-None-Match and ?wait=N the answer comes when
        the job changes (or 304 after N seconds): a long poll."""
        known = request.headers.get("if-none-match")
        deadline = time.monotonic() + min(wait, api.config.api.long_poll_max)
        while True:
            document = await anyio.to_thread.run_sync(api.view, job)
            if document is None:
                raise ApiError(404, f"no job named {job!r}")
            tag = etag(document)
            if tag != known:
                return JSONResponse(document, headers={"ETag": tag, "Cache-Control": "no-cache"})
            if time.monotonic() >= deadline or await request.is_disconnected():
                return Response(status_code=304, headers={"ETag": tag})
            await asyncio.sleep(POLL_EVERY)

    @app.get("/v1/jobs/{job}/events", tags=["jobs"], response_class=StreamingResponse)
    async def job_events(job: str, request: Request, token: Token = can_read) -> StreamingResponse:
        """Server-sent events: `event: job` with the view each time it changes; ends when the job is
        finished (done, partial, failed, cancelled, refused)."""
        if await anyio.to_thread.run_sync(api.view, job) is None:
            raise ApiError(404, f"no job named {job!r}")
        return StreamingResponse(
            _events(api, job, request), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


def _control_routes(app: FastAPI, api: Api, need: Callable[[str], Any]) -> None:
    can_cancel, can_retry, can_sign = need("cancel"), need("retry"), need("sign")

    @app.post("/v1/jobs/{job}/cancel", tags=["control"])
    def cancel_job(job: str, token: Token = can_cancel) -> dict[str, Any]:
        """Stop a queued, rendering or rendered job (`lipsyncd cancel`)."""
        from daemon.control import cancel

        return _control(api, job, lambda store, inbox: cancel(store, inbox, job), "cancelled", token)

    @app.post("/v1/jobs/{job}/retry", tags=["control"])
    def retry_job(
        job: str,
        every_video: bool = Query(False, alias="all", description="render every video again"),
        token: Token = can_retry,
    ) -> dict[str, Any]:
        """Render a finished job's failed and cancelled videos again (`lipsyncd retry`)."""
        from daemon.control import retry

        change = lambda store, inbox: retry(store, inbox, job, every_video=every_video)  # noqa: E731
        return _control(api, job, change, "queued again", token)

    @app.post("/v1/jobs/{job}/links/refresh", tags=["control"])
    def refresh_job_links(job: str, token: Token = can_sign) -> dict[str, Any]:
        """Re-sign the job's links that expire within links.refresh_before (`lipsyncd links --refresh`)."""
        from daemon.distribute.refresh import refresh_links
        from daemon.distribute.s3 import StorageError

        if api.store.job(job) is None:
            raise ApiError(404, f"no job named {job!r}")
        try:
            # the views are left to the watchers: this unit may write only the inbox
            count = refresh_links(api.config, job, credentials_file=api.credentials, write_views=False)
        except StorageError as exc:  # the storage cannot sign now: its plain words, as the CLI prints them
            raise ApiError(503, str(exc)) from None
        log.info("api_links_refreshed", job=job, links=count, client=token.name)
        document = api.view(job)
        return {"refreshed": count, "job": document}


def _authorise(api: Api, credentials: HTTPAuthorizationCredentials | None, right: str) -> Token:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "this needs a bearer token (Authorization: Bearer TOKEN); make one with "
                       "`lipsyncd api token add NAME --can ...`", challenge)  # fmt: skip
    try:
        token = find(api.tokens.tokens(), credentials.credentials)
    except TokenError as exc:
        log.error("api_tokens_unreadable", error=str(exc))
        raise ApiError(503, "the API's token file cannot be read; see the API's log") from None
    if token is None:
        raise ApiError(401, "this token is not known (revoked, or mistyped)", challenge)
    if not token.may(right):
        raise ApiError(
            403, f"the token {token.name!r} may not {right}; it may: {', '.join(sorted(token.rights))}"
        )
    wait = api.limiter.wait_for(token.name)
    if wait:
        raise ApiError(
            429, f"too many requests for the token {token.name!r} (api.rate_limit is "
            f"{api.config.api.rate_limit:g} a second); try again in {wait:.1f} s",
            {"Retry-After": str(max(1, round(wait)))},
        )  # fmt: skip
    return token


def _states(status: str | None) -> tuple[JobState, ...]:
    if not status:
        return ()
    names = [s.strip() for s in status.split(",") if s.strip()]
    known = [s.value for s in JobState]
    unknown = [s for s in names if s not in known]
    if unknown:
        raise ApiError(400, f"status {', '.join(unknown)!r}: give states from {', '.join(known)}")
    return tuple(JobState(s) for s in names)


def _accepted(job_id: str, *, replayed: bool) -> JSONResponse:
    url = f"/v1/jobs/{job_id}"
    body = {"job": job_id, "manifest": f"{job_id}.yaml", "status": "submitted", "url": url,
            "events": f"{url}/events", "replayed": replayed}  # fmt: skip
    return JSONResponse(body, status_code=202, headers={"Location": url})


def _control(
    api: Api, job: str, change: Callable[[Any, Any], Any], verb: str, token: Token
) -> dict[str, Any]:
    from daemon.control import ControlError
    from daemon.inbox import Inbox

    inbox = Inbox(api.config.inbox_dir, settle_time=api.config.inbox.settle_time)
    if api.store.job(job) is None:
        if api.ledger.submitted(job):
            raise ApiError(409, f"job {job!r} is still in the inbox: the render watcher has not taken it yet")
        raise ApiError(404, f"no job named {job!r}")
    try:
        outcome = change(api.store, inbox)
    except ControlError as exc:
        raise ApiError(409, str(exc)) from None
    log.info("api_job_changed", job=job, change=verb, client=token.name)
    return {"message": outcome.line(verb), "job": api.view(job)}


async def _events(api: Api, job: str, request: Request) -> AsyncIterator[str]:
    last, quiet_since = None, time.monotonic()
    while not await request.is_disconnected():
        document = await anyio.to_thread.run_sync(api.view, job)
        if document is None:
            return
        tag = etag(document)
        if tag != last:
            last, quiet_since = tag, time.monotonic()
            data = json.dumps(document, ensure_ascii=False)
            yield f"event: job\nid: {tag.strip(chr(34))}\ndata: {data}\n\n"
            if document["status"] not in (*ACTIVE, "submitted"):
                return
        elif time.monotonic() - quiet_since > SSE_HEARTBEAT:
            quiet_since = time.monotonic()
            yield ": still waiting\n\n"  # a comment: keeps proxies from closing a quiet stream
        await asyncio.sleep(POLL_EVERY)


# -- submitting ----------------------------------------------------------------------------------------


def _planner(api: Api, token: Token, key: str | None) -> Callable[[str], None]:
    """Writes the job's name beside its Idempotency-Key before the manifest goes into the inbox, so a
    restart between the two still answers a retry with that job (see ledger.py)."""
    if key is None:
        return lambda job: None
    return lambda job: api.ledger.plan(token.name, key, job)


async def _submit(api: Api, request: Request, plan: Callable[[str], None]) -> str:
    """Receive the request, write its media into the share and its manifest into the inbox; the new
    job's name. Its media folder is removed on any failure, a client gone mid-upload included."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        options = await _json_body(request)
        return await anyio.to_thread.run_sync(_submit_paths, api, options, {}, plan)
    if kind == "application/x-www-form-urlencoded":  # a form without files: share paths only
        fields = parse_qs((await _small_body(request)).decode("utf-8", "replace"), keep_blank_values=True)
        options, _ = _form_options(Received(fields=fields))
        return await anyio.to_thread.run_sync(_submit_paths, api, options, {}, plan)
    if kind != "multipart/form-data":
        raise ApiError(
            415, "send the job as multipart/form-data (files), application/json or a plain form (share paths)"
        )
    length = request.headers.get("content-length")
    limit = api.config.api.max_upload_bytes
    if length is not None and length.isdigit() and int(length) > limit + MAX_JSON_BYTES:
        raise ApiError(413, f"the upload is larger than api.max_upload_bytes ({limit} bytes); send smaller "
                       "files, or put them into the share and give their names instead")  # fmt: skip
    if length is not None and length.isdigit():
        _check_room(api, int(length))
    media = submit_media_dir(api.config.inbox_dir, "upload")
    try:
        received = await _receive(api, request, media)
        options, uploaded = _form_options(received)
        job_id = await anyio.to_thread.run_sync(_submit_paths, api, options, uploaded, plan)
    except BaseException:
        await anyio.to_thread.run_sync(media.remove)
        raise
    return job_id


def _check_room(api: Api, coming: int) -> None:
    """Refuse at once an upload whose declared size would leave less than api.min_free_bytes free
    (the receiver checks again while it writes: a Content-Length is a promise, not a measure)."""
    folder = api.config.inbox_dir / "media"
    free = shutil.disk_usage(folder if folder.is_dir() else api.config.inbox_dir).free
    if free - coming < api.config.api.min_free_bytes:
        raise ApiError(
            507,
            f"the share's disk has {free} bytes free, and this upload ({coming} bytes) must leave "
            f"api.min_free_bytes ({api.config.api.min_free_bytes}) free; free some space and send the job "
            "again",
        )


async def _receive(api: Api, request: Request, media: MediaDir) -> Received:
    receiver = MultipartReceiver(
        request.headers["content-type"],
        media,
        max_bytes=api.config.api.max_upload_bytes,
        min_free=api.config.api.min_free_bytes,
    )
    try:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(receiver.feed, chunk)
        return receiver.finish()
    except UploadRefused as exc:
        log.warning("api_upload_refused", status=exc.status, reason=str(exc), bytes=receiver.total)
        raise ApiError(exc.status, str(exc)) from None
    except ClientDisconnect:
        log.warning("api_upload_cut", bytes=receiver.total)
        raise
    finally:
        receiver.abort()


async def _small_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(413, f"a job without files is at most {MAX_JSON_BYTES} bytes")
    return bytes(body)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _small_body(request)
    try:
        parsed = JobRequest.model_validate_json(body)
    except ValueError as exc:
        raise ApiError(400, "the JSON job is not valid: " + _pydantic_words(exc)) from None
    return parsed.model_dump()


_FORM_TEXT = {"name", "distribute", "link_ttl", "notify", "model", "audio_path", "video_path"}


def _form_options(received: Received) -> tuple[dict[str, Any], dict[str, list[Path]]]:
    unknown = sorted((set(received.fields) - _FORM_TEXT) | (set(received.files) - {"audio", "videos"}))
    if unknown:
        raise ApiError(400, f"unknown form fields: {', '.join(unknown)} (see docs/api.md)")
    fields = received.fields

    def one(name: str) -> str | None:
        values = fields.get(name, [])
        if len(values) > 1:
            raise ApiError(400, f"the form field {name!r} is given {len(values)} times; give it once")
        return values[0] if values else None

    distribute = (one("distribute") or "").strip().lower()
    if distribute not in TRUE + FALSE:
        raise ApiError(400, f"distribute {distribute!r}: give true or false")
    options = {
        "name": one("name"),
        "audio": one("audio_path"),
        "videos": fields.get("video_path", []),
        "distribute": distribute in TRUE,
        "link_ttl": one("link_ttl"),
        "notify": fields.get("notify", []),
        "model": one("model"),
    }
    return options, received.files


def _submit_paths(
    api: Api, options: dict[str, Any], uploaded: dict[str, list[Path]], plan: Callable[[str], None]
) -> str:
    """Through `lipsyncd submit`'s code: its checks, its manifest written atomically into the inbox."""
    audio_files = uploaded.get("audio", [])
    if len(audio_files) + (options["audio"] is not None) != 1:
        raise ApiError(400, "give one audio: an `audio` file or an `audio_path` in the share")
    audio = audio_files[0] if audio_files else _in_share(api.config.shared, options["audio"])
    videos = [*uploaded.get("videos", []), *(_in_share(api.config.shared, v) for v in options["videos"])]
    if not videos:
        raise ApiError(400, "give at least one video: `videos` files or `video_path` names in the share")
    base = job_name(options["name"] or videos[0].stem)[:90] or "job"
    job_id = f"{base}-{secrets.token_hex(4)}"  # known now, before the render watcher takes the manifest
    request = Submission(
        audio=audio,
        videos=tuple(videos),
        name=job_id,
        distribute=bool(options["distribute"]),
        link_ttl=options["link_ttl"],
        notify=tuple(options["notify"]),
        model=options["model"],
    )
    plan(job_id)
    try:
        path = submit(request, inbox=api.config.inbox_dir, shared=api.config.shared, checks=api.checks())
    except SubmitError as exc:
        raise ApiError(400, str(exc)) from None
    if path.stem != job_id:  # cannot happen with a random suffix; never answer with a wrong name
        raise ApiError(500, f"the manifest was written as {path.name}, not {job_id}.yaml")
    return job_id


def _in_share(shared: Path, name: str) -> Path:
    """A client's name for media in the share; never anything outside it (submit would copy it in)."""
    try:
        path = (shared / name).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        raise ApiError(400, f"{name!r} is not a usable file name") from None
    if not path.is_relative_to(shared):
        raise ApiError(400, f"{name!r} is not inside the share; name media relative to the share's folder")
    if not path.is_file():
        raise ApiError(400, f"{name!r}: no such file in the share")
    return path


def _submit_body() -> dict[str, Any]:
    form = {
        "type": "object",
        "properties": {
            "audio": {"type": "string", "format": "binary"},
            "videos": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "audio_path": {"type": "string", "description": "audio in the share, instead of a file"},
            "video_path": {
                "type": "array",
                "items": {"type": "string"},
                "description": "videos in the share",
            },
            "name": {"type": "string"},
            "distribute": {"type": "boolean"},
            "link_ttl": {"type": "string"},
            "notify": {"type": "array", "items": {"type": "string"}},
            "model": {"type": "string"},
        },
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": form},
            "application/json": {"schema": JobRequest.model_json_schema()},
        },
    }


# -- errors and the request log ---------------------------------------------------------------------

_ERROR_ANSWERS = {
    "400": "the request is not valid (or the daemon would refuse the job), in plain words",
    "401": "no token, or a token that is not known",
    "403": "the token may not do this",
    "429": "too many requests for this token (Retry-After says when to try again)",
    "404": "no job of that name",
    "409": "the job's state does not allow this, or its Idempotency-Key is still being received",
    "413": "the upload is larger than api.max_upload_bytes",
    "415": "not multipart/form-data, application/json or a plain form",
    "507": "the share's disk is (or would be) too full for the upload",
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the error answers this API really gives: {"error": "..."} JSON, 400
    (not 422) for a request that is not valid, and 401/403/429 on every route that needs a token."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "what is wrong and what to do, in plain words"}
        },
        "required": ["error"],
    }
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            answers = operation["responses"]
            answers.pop("422", None)
            asks = operation.get("parameters") or operation.get("requestBody")
            wanted = ["400"] if asks else []
            wanted += ["401", "403", "429"] if operation.get("security") else []
            wanted += ["404"] if "{job}" in path else []
            wanted += ["409"] if path.endswith(("/cancel", "/retry")) else []
            wanted += ["409", "413", "415", "507"] if "requestBody" in operation else []
            for code in wanted:
                answers.setdefault(code, {"description": _ERROR_ANSWERS[code], **error})
    app.openapi_schema = document
    return document


def _pydantic_words(exc: Exception) -> str:
    errors: list[dict[str, Any]] = getattr(exc, "errors", list)()
    if not errors:
        return str(exc)
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors
    )


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "the request is not valid: " + _pydantic_words(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        words = {404: "no such address; see /openapi.json", 405: "this address does not take that method"}
        return JSONResponse(
            {"error": words.get(exc.status_code, str(exc.detail))}, status_code=exc.status_code
        )


class RequestLog:
    """One log line per request: method, path, status, time. Never headers (tokens) nor bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            log.info("api_request", method=scope["method"], path=scope["path"], status=status[0],
                     ms=round((time.monotonic() - started) * 1000, 1))  # fmt: skip
