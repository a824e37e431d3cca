"""The bucket lifecycle policy against the real embedded SeaweedFS, which refuses Transitions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from daemon.distribute.lifecycle import LifecyclePolicy, apply, current_rules, describe_rule, show
from daemon.distribute.s3 import ensure_bucket


@pytest.fixture
def bucket(s3_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A bucket of its own: lifecycle rules belong to the whole bucket."""
    name = "lifecycle-" + str(abs(hash(request.node.name)) % 10**8)
    ensure_bucket(s3_client, name)
    yield name
    s3_client.delete_bucket_lifecycle(Bucket=name)


def test_apply_keeps_what_the_server_accepts_and_names_what_it_skipped(s3_client: Any, bucket: str) -> None:
    report = apply(s3_client, bucket, LifecyclePolicy(prefix="lipsyncd/"))
    assert report.skipped == (
        'lipsyncd-transition: under "lipsyncd/", move to STANDARD_IA after 30 days '
        "(the server answered NotImplemented)",
    )
    assert report.applied == (
        'lipsyncd-expire: under "lipsyncd/", delete objects after 60 days',
        'lipsyncd-abort-multipart: under "lipsyncd/", abort unfinished multipart uploads after 7 days',
    )
    rules = {r["ID"]: r for r in current_rules(s3_client, bucket)}
    assert rules["lipsyncd-expire"]["Expiration"] == {"Days": 60}
    assert rules["lipsyncd-abort-multipart"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert "skipped: lipsyncd-transition" in report.summary()


def test_apply_twice_is_the_same_and_keeps_other_rules(s3_client: Any, bucket: str) -> None:
    theirs = {
        "ID": "keep-logs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 5},
    }
    s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]})
    policy = LifecyclePolicy(expire_after_days=90, prefix="out/")
    first = apply(s3_client, bucket, policy)
    second = apply(s3_client, bucket, policy)
    assert first == second
    assert first.kept == ("keep-logs",)
    assert sorted(r["ID"] for r in current_rules(s3_client, bucket)) == [
        "keep-logs",
        "lipsyncd-abort-multipart",
        "lipsyncd-expire",
    ]


def test_show_lists_the_rules_in_plain_words(s3_client: Any, bucket: str) -> None:
    assert show(s3_client, bucket) == f"Bucket {bucket} has no lifecycle rules."
    apply(s3_client, bucket, LifecyclePolicy(ia_after_days=None, expire_after_days=45, prefix=""))
    text = show(s3_client, bucket)
    assert "lipsyncd-expire: whole bucket, delete objects after 45 days" in text
    assert "abort unfinished multipart uploads after 7 days" in text


def test_policy_rules_and_checks() -> None:
    rules = LifecyclePolicy().rules()
    assert [r["ID"] for r in rules] == ["lipsyncd-transition", "lipsyncd-expire", "lipsyncd-abort-multipart"]
    assert rules[0]["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]
    assert describe_rule(rules[0]).endswith("move to STANDARD_IA after 30 days")
    with pytest.raises(ValueError, match="must come after"):
        LifecyclePolicy(ia_after_days=30, expire_after_days=30)
    with pytest.raises(ValueError, match="at least 1 day"):
        LifecyclePolicy(abort_multipart_after_days=0)
