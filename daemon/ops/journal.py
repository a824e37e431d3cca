"""journald's native protocol, written out: one datagram of fields per log entry (systemd.journal-fields(7)).

A field is `NAME=value\\n`; a value holding a newline is sent as `NAME\\n` + 64-bit little-endian length +
bytes + `\\n`. Entries too big for one datagram go in a sealed memfd passed over the socket, as
sd_journal_sendv() does. When the socket is gone the entry is written to the fallback stream instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

# syslog priorities (RFC 5424) for structlog's level names.
PRIORITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "warn": 4, "error": 3, "exception": 3}
PRIORITY |= {"critical": 2, "fatal": 2, "alert": 1, "emergency": 0}
_OWN = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "EVENT"}
_SKIP = {"level", "timestamp"}  # PRIORITY carries the level; journald stamps entries itself
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
MAX_NAME = 64


@dataclass(frozen=True)
class JournalEntry:
    """One log entry: journald fields in order, and the plain line used when journald is away."""

    fields: tuple[tuple[str, str], ...]
    message: str
    priority: int


def field_name(key: str) -> str:
    """A journald-legal field name: A-Z, 0-9, _; not starting with _ or a digit; at most 64 chars."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _OWN:
        name = "F_" + name
    return name[:MAX_NAME]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def make_entry(event_dict: Mapping[str, Any], identifier: str) -> JournalEntry:
    """Turn a processed structlog event into a journal entry; MESSAGE reads well in `journalctl -u`."""
    event = _text(event_dict.get("event", ""))
    extra = {k: v for k, v in event_dict.items() if k not in _SKIP and k not in ("event", "exception")}
    message = " ".join([event, *(f"{k}={_text(v)}" for k, v in extra.items())])
    if "exception" in event_dict:
        message += "\n" + _text(event_dict["exception"])
    priority = PRIORITY.get(str(event_dict.get("level", "info")).lower(), 6)
    fields = [("MESSAGE", message), ("PRIORITY", str(priority))]
    fields += [("SYSLOG_IDENTIFIER", identifier), ("EVENT", event)]
    fields += [(field_name(k), _text(v)) for k, v in event_dict.items() if k not in _SKIP and k != "event"]
    return JournalEntry(fields=tuple(fields), message=message, priority=priority)


def encode(entry: JournalEntry) -> bytes:
    """The native-protocol payload for one entry."""
    return b"".join(_encode_field(name, value) for name, value in entry.fields)


def _encode_field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournalSender:
    """Sends entries to journald's socket; stateless per send, so it is thread-safe and survives restarts."""

    def __init__(self, path: str, *, fallback: TextIO) -> None:
        self._path = path
        self._fallback = fallback

    def send(self, entry: JournalEntry) -> None:
        payload = encode(entry)
        try:
            self._send(payload)
        except OSError:
            # "<N>" is the syslog prefix journald's stdout/stderr stream reads as the priority.
            self._fallback.write(f"<{entry.priority}>{entry.message}\n")
            self._fallback.flush()

    def _send(self, payload: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(payload, self._path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                _send_memfd(sock, self._path, payload)


def _send_memfd(sock: socket.socket, path: str, payload: bytes) -> None:
    """Too big for a datagram: hand journald a sealed memfd holding the payload (it refuses unsealed ones)."""
    fd = os.memfd_create("lipsyncd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, path)
    finally:
        os.close(fd)
