"""Bearer tokens for the HTTP API: stored as sha256 hashes with what each may do, never in clear.

A token is shown once, when `lipsyncd api token add` makes it; the file keeps its hash, its name and its
rights. The API reads the file again when it changes, so a revoked token stops working at once."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.files import write_atomic

RIGHTS = ("read", "submit", "cancel", "retry", "sign")  # sign: re-sign a job's download links
PREFIX = "lsd_"  # recognisable in a leaked config or a secret scanner's report
CREDENTIAL_NAME = "api-tokens"  # LoadCredential=api-tokens:... in lipsyncd-api.service
FILE_NAME = "api-tokens.json"


class TokenError(Exception):
    """A token file or a token command that cannot be used, in plain words."""


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str
    rights: frozenset[str]
    created: float

    def may(self, right: str) -> bool:
        return right in self.rights


def tokens_path(configured: Path | None, state_dir: Path, environ: Mapping[str, str]) -> Path:
    """The systemd credential api-tokens when the unit passes one (its copy of api.tokens_file), else
    api.tokens_file, else STATE/api-tokens.json."""
    folder = environ.get("CREDENTIALS_DIRECTORY")
    if folder and (Path(folder) / CREDENTIAL_NAME).is_file():
        return Path(folder) / CREDENTIAL_NAME
    return configured if configured is not None else state_dir / FILE_NAME


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_rights(text: str) -> frozenset[str]:
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    if "all" in wanted:
        return frozenset(RIGHTS)
    unknown = sorted(wanted - set(RIGHTS))
    if unknown or not wanted:
        raise TokenError(
            f"--can {text!r}: give rights from {', '.join(RIGHTS)} (or all), separated by commas"
        )
    return frozenset(wanted)


def read_tokens(path: Path) -> list[Token]:
    """The tokens in `path`; none when the file does not exist (then every request is refused)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise TokenError(f"{path}: cannot read the API tokens ({exc})") from None
    try:
        return [
            Token(t["name"], t["sha256"], frozenset(t["rights"]), float(t.get("created", 0)))
            for t in data["tokens"]
        ]
    except (KeyError, TypeError) as exc:
        raise TokenError(
            f"{path}: not an API tokens file (missing {exc}); make it with `lipsyncd api token add`"
        ) from None


def write_tokens(path: Path, tokens: Iterable[Token]) -> None:
    """Temp file + rename, 0600, owned like its folder (root adding a token for the lipsyncd user)."""
    document = {
        "version": 1,
        "tokens": [
            {"name": t.name, "sha256": t.sha256, "rights": sorted(t.rights), "created": t.created}
            for t in tokens
        ],
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = path.parent.stat()

    def place(tmp: Path, final: Path) -> Path:
        mine = tmp.stat()
        if os.geteuid() == 0 and (mine.st_uid, mine.st_gid) != (folder.st_uid, folder.st_gid):
            os.chown(tmp, folder.st_uid, folder.st_gid)
        os.replace(tmp, final)
        return final

    write_atomic(path, json.dumps(document, indent=2) + "\n", mode=0o600, place=place)


def add_token(path: Path, name: str, rights: frozenset[str]) -> str:
    """Returns the new token; only its hash is kept."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise TokenError(f"token name {name!r}: use letters, digits, '-', '_' or '.'")
    tokens = read_tokens(path)
    if any(t.name == name for t in tokens):
        raise TokenError(f"a token named {name!r} exists; revoke it first or choose another name")
    token = PREFIX + secrets.token_urlsafe(32)  # 256 bits: a plain hash is enough, no slow KDF needed
    write_tokens(path, [*tokens, Token(name, digest(token), rights, time.time())])
    return token


def revoke_token(path: Path, name: str) -> None:
    tokens = read_tokens(path)
    if not any(t.name == name for t in tokens):
        raise TokenError(f"no API token named {name!r} in {path}")
    write_tokens(path, [t for t in tokens if t.name != name])


def find(tokens: Iterable[Token], presented: str) -> Token | None:
    """The token whose hash matches; every stored hash is compared, each in constant time."""
    wanted, found = digest(presented), None
    for token in tokens:
        if hmac.compare_digest(token.sha256, wanted):
            found = token
    return found


class TokenFile:
    """The tokens file, read again when its size, time or inode change (one stat per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._tokens: list[Token] = []

    def tokens(self) -> list[Token]:
        try:
            info = self.path.stat()
            seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            self._seen, self._tokens = None, []
            return []
        if seen != self._seen:
            self._tokens, self._seen = read_tokens(self.path), seen
        return self._tokens
