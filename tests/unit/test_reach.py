"""Who can open the links: the host a link names (CDN base URL, public URL, endpoint, listen address)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.config import Config, LinksConfig, StorageConfig
from daemon.distribute.reach import is_loopback, reach


def config(links: dict[str, Any] | None = None, **storage: Any) -> Config:
    return Config(storage=StorageConfig(**storage), links=LinksConfig(**(links or {})))


@pytest.mark.parametrize(
    ("cfg", "host", "local"),
    [
        (config(), "127.0.0.1", True),  # the default: loopback
        (config(embedded_listen="0.0.0.0"), "127.0.0.1", True),  # listening everywhere, signed for loopback
        (config(embedded_listen="127.0.0.2"), "127.0.0.2", True),
        (config(embedded_listen="192.168.1.20"), "192.168.1.20", False),
        (config(embedded_listen="0.0.0.0", public_url="http://media.lan:8333"), "media.lan", False),
        (config(public_url="http://localhost:8333"), "localhost", True),
        (config(endpoint_url="https://s3.example.com"), "s3.example.com", False),
        (config({"base_url": "https://cdn.example.com"}), "cdn.example.com", False),  # the CDN's host wins
        (config(embedded_listen="::"), "::1", True),
    ],
)
def test_reach_names_the_host_people_open(cfg: Config, host: str, local: bool) -> None:
    where = reach(cfg)
    assert (where.host, where.local_only) == (host, local)
    if local:
        assert where.who == "only this machine"
        assert "storage.public_url" in where.sentence()
    else:
        assert where.who == f"machines that can reach {host}"


def test_loopback_names() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "LOCALHOST", "a.localhost"]))
    assert not any(map(is_loopback, ["10.0.0.1", "0.0.0.0", "media.lan", "localhost.example.com"]))


def test_doctor_warns_when_links_are_loopback_only() -> None:
    from daemon.doctor import _links

    (local,) = _links(config())
    assert (local.ok, local.warn, local.mark) == (True, True, "WARN")
    assert "only this machine (127.0.0.1 is loopback)" in local.detail
    (shared,) = _links(config(embedded_listen="0.0.0.0", public_url="http://media.lan:8333"))
    assert (shared.warn, shared.mark) == (False, "OK ")
    assert shared.detail == "links can be opened by machines that can reach media.lan"
