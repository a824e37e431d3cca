"""Who can open the links: the host a link names decides it (the CDN base URL, else the public URL the
link is signed for, else the address lipsyncd itself connects to)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from daemon.config import Config
from daemon.distribute.embedded import connect_host

LOOPBACK_HINT = "set storage.embedded_listen and storage.public_url (or links.base_url) to share them"


@dataclass(frozen=True)
class Reach:
    host: str  # the host people's links name
    local_only: bool  # a loopback host: only this machine can open them

    @property
    def who(self) -> str:
        return "only this machine" if self.local_only else f"machines that can reach {self.host}"

    def sentence(self) -> str:
        if self.local_only:
            return f"links can be opened by only this machine ({self.host} is loopback): {LOOPBACK_HINT}"
        return f"links can be opened by machines that can reach {self.host}"


def link_host(config: Config) -> str:
    s = config.storage
    url = config.links.base_url or s.public_url or s.endpoint_url
    if url:
        return urlsplit(url).hostname or url
    return connect_host(s.embedded_listen)


def is_loopback(host: str) -> bool:
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def reach(config: Config) -> Reach:
    host = link_host(config)
    return Reach(host, is_loopback(host))
