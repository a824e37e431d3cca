"""One structlog processor chain for the whole daemon, with three sinks: journald, console, JSON lines.

Under systemd the events go to journald over its native protocol, so every bound field (JOB, VIDEO,
STAGE, MODEL...) becomes a journal field and `journalctl -u lipsyncd-render JOB=x` tells one job's story.
Secrets and presigned-URL signatures are scrubbed before any sink sees an event.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from daemon.ops.journal import JournalEntry, JournalSender, make_entry

REDACTED = "[redacted]"

# Key names that carry secrets whatever their value looks like.
SECRET_KEY = re.compile(
    r"secret|passw|token|access_?key|signature|credential|authorization|api_?key|private_?key|cookie",
    re.IGNORECASE,
)
# Query parameters of signed URLs (SigV4, SigV2, DingTalk/Feishu robots) whose values must not be logged.
SIGNED_PARAM = re.compile(
    r"(?<![A-Za-z0-9_-])(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|sign|"
    r"AWSAccessKeyId|access_token)=[^&\s\"'<>#]*",
    re.IGNORECASE,
)
# an HTTP API bearer token (daemon/api/tokens.py makes them lsd_ + 43 characters), wherever it appears
API_TOKEN = re.compile(r"lsd_[A-Za-z0-9_-]{20,}")
FORMATS = ("auto", "journald", "console", "json")
# fields every event of this process carries, from any thread (HOST, WORKER): set once at start-up
_PROCESS_FIELDS: dict[str, str] = {}
_PRIMITIVES = (bool, int, float, type(None))


def redact_text(text: str) -> str:
    """Replace the value of every signed-URL parameter in `text`, keeping the parameter name."""
    text = SIGNED_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return API_TOKEN.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret_key(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v) for v in value]
    # Objects (exceptions, Paths, botocore errors) are rendered with str() later: scrub that text now.
    text = str(value)
    cleaned = redact_text(text)
    return value if cleaned == text else cleaned


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and SECRET_KEY.search(key) is not None


def redact(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret-named keys, strip signatures from every value."""
    return {k: REDACTED if _is_secret_key(k) else _redact_value(v) for k, v in event_dict.items()}


def resolve_format(fmt: str, environ: Mapping[str, str], stream: TextIO) -> str:
    """Pick the sink for "auto": journald when systemd connected stderr to the journal, else by TTY."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if stderr_is_journal(environ.get("JOURNAL_STREAM", ""), stream):
        return "journald"
    return "console" if _isatty(stream) else "json"


def stderr_is_journal(journal_stream: str, stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode of the journal stream it gave us (sd_journal_stream_fd(3))."""
    dev, _, ino = journal_stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def bind_process(**fields: str) -> None:
    """Fields for every event of this process, whichever thread logs it (context variables stay in the
    thread that bound them; a worker's threads must still say which host and worker they belong to)."""
    _PROCESS_FIELDS.update(fields)


def add_process_fields(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the process's fields, unless the event gives its own value."""
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def shared_processors() -> list[Processor]:
    """Everything before the renderer; the same for every sink so fields never differ by format."""
    return [
        structlog.contextvars.merge_contextvars,
        add_process_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,  # exceptions become text here, so redact() covers them
        redact,
    ]


class JournaldRenderer:
    """Last processor of the journald sink: a JournalEntry, in structlog's (args, kwargs) form."""

    def __init__(self, identifier: str) -> None:
        self._identifier = identifier

    def __call__(
        self, _logger: WrappedLogger, _name: str, event_dict: EventDict
    ) -> tuple[tuple[JournalEntry], dict[str, Any]]:
        return (make_entry(event_dict, self._identifier),), {}


class JournaldLogger:
    """A structlog logger whose every method sends an already-rendered entry to journald."""

    def __init__(self, sender: JournalSender) -> None:
        self._sender = sender

    def msg(self, entry: JournalEntry) -> None:
        self._sender.send(entry)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = failure = msg


class JournaldLoggerFactory:
    def __init__(self, sender: JournalSender) -> None:
        self._logger = JournaldLogger(sender)

    def __call__(self, *args: Any) -> JournaldLogger:
        return self._logger


def _renderer(fmt: str, identifier: str, stream: TextIO) -> Processor:
    if fmt == "journald":
        return JournaldRenderer(identifier)
    if fmt == "console":
        colors = _isatty(stream)
        return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)
    return structlog.processors.JSONRenderer(ensure_ascii=False)


def _logger_factory(fmt: str, stream: TextIO, journal_socket: str) -> Any:
    if fmt == "journald":
        return JournaldLoggerFactory(JournalSender(journal_socket, fallback=stream))
    return structlog.WriteLoggerFactory(file=stream)


class StdlibBridge(logging.Handler):
    """Sends stdlib log records (boto3, watchdog, urllib3) through the structlog chain."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            logger.log(record.levelno, record.getMessage(), logger=record.name, exc_info=record.exc_info)
        except Exception:  # noqa: BLE001 - a log call must never take the daemon down
            self.handleError(record)


def _route_stdlib(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    root.setLevel(max(level, logging.WARNING))  # third-party chatter only from WARNING up


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    *,
    identifier: str = "lipsyncd",
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    journal_socket: str = "/run/systemd/journal/socket",
) -> None:
    """Configure structlog (and the stdlib logging of libraries) once, at start-up.

    fmt: "auto" | "journald" | "console" | "json"; level: debug | info | warning | error | critical.
    environ/stream default to os.environ/sys.stderr; tests pass their own.
    """
    stream = sys.stderr if stream is None else stream
    chosen = resolve_format(fmt, os.environ if environ is None else environ, stream)
    min_level = _level_number(level)
    structlog.configure(
        processors=[*shared_processors(), _renderer(chosen, identifier, stream)],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=_logger_factory(chosen, stream, journal_socket),
        cache_logger_on_first_use=False,  # so a SIGHUP reload can reconfigure module-level loggers
    )
    _route_stdlib(min_level)


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning, error or critical")
    return number
