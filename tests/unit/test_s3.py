"""Storage settings, object keys, link lifetimes and presigning (signing needs no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from daemon.distribute.s3 import (
    MAX_PRESIGN_TTL,
    Credentials,
    StorageError,
    StorageSettings,
    load_credentials_file,
    make_client,
    object_key,
    parse_ttl,
    presign_get,
    rewrite_base,
)


@pytest.fixture
def client() -> object:
    settings = StorageSettings(endpoint_url="http://127.0.0.1:9", bucket="videos")
    return make_client(settings, Credentials("AKIDEXAMPLE", "secret-example"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90m", 5400),
        ("7d", 604800),
        ("1w", 604800),
        ("3600", 3600),
        (3600, 3600),
        (" 2 H ", 7200),
    ],
)
def test_parse_ttl(text: str | int, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8d", "longer than the 7-day limit"),
        (604801, "longer than the 7-day limit"),
        ("0", "must be positive"),
        (-5, "must be positive"),
        ("1.5h", "not a duration"),
        ("soon", "not a duration"),
        (True, "not a duration"),
    ],
)
def test_parse_ttl_refuses_bad_values(text: str | int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ttl(text)


def test_object_key_layout() -> None:
    when = datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=8)))  # still Feb 28 in UTC
    assert object_key("lipsyncd/", "spring-promo", "anchor_a.mp4", when) == (
        "lipsyncd/2026/02/28/spring-promo/anchor_a.mp4"
    )
    assert object_key("", "job", "主播 1.mp4", datetime(2026, 1, 2)) == "2026/01/02/job/主播 1.mp4"


@pytest.mark.parametrize("bad", ["a/b", "..", "", "x\n"])
def test_object_key_refuses_path_tricks(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in an object name"):
        object_key("p", bad, "v.mp4", datetime.now(UTC))


def test_presign_get_expires_exactly_ttl_after_signing(client: object) -> None:
    link = presign_get(client, "videos", "p/2026/01/02/job/a.mp4", 3600)
    query = parse_qs(urlsplit(link.url).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert query["X-Amz-Expires"] == ["3600"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # signature v4
    assert link.expires_at == signed + timedelta(seconds=3600)
    assert urlsplit(link.url).path == "/videos/p/2026/01/02/job/a.mp4"  # path-style addressing
    url, expires_at = link  # it unpacks as (url, expires_at)
    assert (url, expires_at) == (link.url, link.expires_at)


def test_presign_get_refuses_more_than_seven_days(client: object) -> None:
    with pytest.raises(ValueError, match="7-day limit"):
        presign_get(client, "videos", "k", MAX_PRESIGN_TTL + 1)
    with pytest.raises(ValueError, match="positive"):
        presign_get(client, "videos", "k", 0)


def test_presign_get_with_a_cdn_base_url(client: object) -> None:
    link = presign_get(client, "videos", "k/a.mp4", 60, base_url="https://cdn.example.com/media/")
    parts = urlsplit(link.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "cdn.example.com", "/media/videos/k/a.mp4")
    assert "X-Amz-Signature=" in parts.query
    with pytest.raises(ValueError, match="scheme and host"):
        rewrite_base(link.url, "cdn.example.com")


def test_client_settings(client: object) -> None:
    config = client.meta.config  # type: ignore[attr-defined]
    assert config.signature_version == "s3v4"
    assert config.s3 == {"addressing_style": "path"}
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries["mode"] == "standard"


def test_settings_refuse_unknown_choices() -> None:
    with pytest.raises(ValueError, match="addressing_style"):
        StorageSettings(addressing_style="sideways")
    with pytest.raises(ValueError, match="request_checksum_calculation"):
        StorageSettings(request_checksum_calculation="always")
    with pytest.raises(ValueError, match="bucket name"):
        StorageSettings(bucket="No_Such")


@pytest.mark.parametrize(
    "text",
    [
        "AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY=s3cr3t\n",
        "export AWS_ACCESS_KEY_ID='AKID'\nexport AWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n",
        "[default]\naws_access_key_id = AKID\naws_secret_access_key = s3cr3t\n",
    ],
)
def test_credentials_file_forms(tmp_path: Path, text: str) -> None:
    path = tmp_path / "creds"
    path.write_text(text)
    credentials = load_credentials_file(path)
    assert (credentials.access_key, credentials.secret_key) == ("AKID", "s3cr3t")
    assert "s3cr3t" not in repr(credentials)


def test_credentials_file_problems_are_explained(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="Cannot read the storage credentials file"):
        load_credentials_file(tmp_path / "missing")
    (tmp_path / "half").write_text("AWS_ACCESS_KEY_ID=AKID\n")
    with pytest.raises(StorageError, match="no access key pair"):
        load_credentials_file(tmp_path / "half")


def test_credentials_come_from_the_file_named_in_settings(tmp_path: Path) -> None:
    (tmp_path / "creds").write_text("AWS_ACCESS_KEY_ID=AKFILE\nAWS_SECRET_ACCESS_KEY=x\n")
    client = make_client(
        StorageSettings(endpoint_url="http://127.0.0.1:9", credentials_file=tmp_path / "creds")
    )
    url = presign_get(client, "lipsyncd", "k", 60).url
    assert parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].startswith("AKFILE/")


def test_unknown_profile_is_explained() -> None:
    with pytest.raises(StorageError, match="profile 'nope-not-here'"):
        make_client(StorageSettings(profile="nope-not-here"))
