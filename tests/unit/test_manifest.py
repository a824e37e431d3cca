"""Manifest validation: what a user may write, and the plain-words reasons when it is wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon.manifest import ManifestError, error_report, job_name, load_manifest


@pytest.fixture
def share(tmp_path: Path) -> Path:
    (tmp_path / "inbox" / "media").mkdir(parents=True)
    for name in ("promo.wav", "anchor_a.mp4", "anchor_b.mp4", "主播.mp4"):
        (tmp_path / "inbox" / "media" / name).write_bytes(b"x")
    return tmp_path


def write(share: Path, text: str, name: str = "job.yaml") -> Path:
    path = share / "inbox" / name
    path.write_text(text, encoding="utf-8")
    return path


def load(share: Path, path: Path, **kw):  # type: ignore[no-untyped-def]
    return load_manifest(path, base_dir=share / "inbox", shared=share, **kw)


def problems(share: Path, text: str, name: str = "job.yaml", **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError) as caught:
        load(share, write(share, text, name), **kw)
    return "\n".join(caught.value.problems)


def test_full_manifest_from_design(share: Path) -> None:
    text = """
name: spring-promo
audio: media/promo.wav
videos:
  - media/anchor_a.mp4
  - media/anchor_b.mp4
distribute: true
link_ttl: 24h
notify: [ops-wecom]
model: wav2lip_gan
"""
    m = load(share, write(share, text), webhooks={"ops-wecom"}, models={"baseline", "wav2lip_gan"})
    assert m.name == "spring-promo"
    assert m.audio.path == share / "inbox" / "media" / "promo.wav"
    assert [v.written for v in m.videos] == ["media/anchor_a.mp4", "media/anchor_b.mp4"]
    assert m.distribute is True
    assert m.link_ttl == 86400
    assert m.notify == ("ops-wecom",)
    assert m.model == "wav2lip_gan"


def test_defaults_name_from_file_stem_and_distribution_off(share: Path) -> None:
    m = load(share, write(share, "audio: media/promo.wav\nvideos: [media/anchor_a.mp4]\n", "春季 promo.yaml"))
    assert m.name == "春季-promo"
    assert m.distribute is False
    assert m.link_ttl is None
    assert m.notify == ()


def test_json_and_chinese_file_names(share: Path) -> None:
    doc = {"audio": "media/promo.wav", "videos": ["media/主播.mp4"], "name": "发布会"}
    m = load(share, write(share, json.dumps(doc, ensure_ascii=False), "job.json"))
    assert m.name == "发布会"
    assert m.videos[0].path.name == "主播.mp4"


def test_unknown_key_is_an_error_listing_allowed_keys(share: Path) -> None:
    text = problems(share, "audio: media/promo.wav\nvideos: [media/anchor_a.mp4]\ndistrib: true\n")
    assert "'distrib'" in text
    assert "distribute" in text


def test_all_problems_reported_together(share: Path) -> None:
    text = problems(share, "videos: []\ndistribute: yes please\nlink_ttl: 8d\n")
    assert "'audio' is missing" in text
    assert "'videos' must be a list" in text
    assert "'distribute' must be true or false" in text
    assert "7d" in text


def test_missing_file_names_the_path(share: Path) -> None:
    text = problems(share, "audio: media/promo.wav\nvideos: [media/nope.mp4]\n")
    assert "videos[0]" in text
    assert "does not exist" in text
    assert "nope.mp4" in text


@pytest.mark.parametrize("path", ["../secret.mp4", "media/../../secret.mp4", "/etc/passwd"])
def test_paths_outside_the_share_are_refused(share: Path, path: str) -> None:
    text = problems(share, f"audio: media/promo.wav\nvideos: ['{path}']\n")
    assert "'..'" in text or "outside the shared folder" in text


def test_symlink_escaping_the_share_is_refused(share: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "private.mp4"
    outside.write_bytes(b"x")
    (share / "inbox" / "media" / "link.mp4").symlink_to(outside)
    text = problems(share, "audio: media/promo.wav\nvideos: [media/link.mp4]\n")
    assert "outside the shared folder" in text


def test_absolute_path_inside_the_share_is_fine(share: Path) -> None:
    absolute = share / "inbox" / "media" / "anchor_a.mp4"
    m = load(share, write(share, f"audio: media/promo.wav\nvideos: ['{absolute}']\n"))
    assert m.videos[0].path == absolute


def test_same_video_twice_is_refused(share: Path) -> None:
    text = problems(share, "audio: media/promo.wav\nvideos: [media/anchor_a.mp4, ./media/anchor_a.mp4]\n")
    assert "twice" in text


def test_unknown_webhook_and_model(share: Path) -> None:
    text = problems(
        share,
        "audio: media/promo.wav\nvideos: [media/anchor_a.mp4]\nnotify: [ops]\nmodel: x\n",
        webhooks={"team"},
        models={"baseline"},
    )
    assert "no webhook named 'ops'" in text
    assert "no model named 'x'" in text


def test_billion_laughs_is_refused_quickly(share: Path) -> None:
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [{','.join(['*' + chr(96 + i)] * 9)}]\n"
    assert "aliases" in problems(share, bomb)


def test_hostile_shapes(share: Path) -> None:
    assert "not valid YAML" in problems(share, "audio: [unclosed\n")
    assert "mapping" in problems(share, "- just\n- a list\n")
    assert "nested far too deeply" in problems(share, "[" * 20000 + "]" * 20000)
    path = share / "inbox" / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8"):
        load(share, path)
    path.write_bytes(b"audio: a\x00b\n")
    with pytest.raises(ManifestError, match="NUL"):
        load(share, path)
    path.write_bytes(b"# " + b"x" * 1_100_000)
    with pytest.raises(ManifestError, match="bytes"):
        load(share, path)


def test_job_name_is_safe_for_folders_and_keys() -> None:
    assert job_name("spring promo/2026") == "spring-promo-2026"
    assert job_name("../../etc") == "etc"
    assert job_name("主播 A") == "主播-A"
    assert job_name("...") == ""


def test_error_report_reads_as_plain_instructions(share: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load(share, write(share, "audio: media/promo.wav\n"))
    report = error_report(caught.value)
    assert report.startswith("lipsyncd could not start a job from job.yaml.")
    assert "'videos' is missing" in report
    assert "drop it into the inbox again" in report


def test_a_key_given_twice_is_refused(share: Path) -> None:
    text = problems(
        share, "audio: media/promo.wav\nvideos: [media/anchor_a.mp4]\nvideos: [media/anchor_b.mp4]\n"
    )
    assert "'videos' appears twice" in text
    doc = '{"audio": "media/promo.wav", "videos": ["media/anchor_a.mp4"], "audio": "media/promo.wav"}'
    assert "'audio' appears twice" in problems(share, doc, "dup.json")


def test_syntax_errors_say_where_in_plain_words(share: Path) -> None:
    text = problems(share, "audio: media/promo.wav\nvideos: [a, b\n")
    assert "not valid YAML near line" in text
    assert "brackets" in text
    assert "<unicode string>" not in text
    assert "flow sequence" not in text


def test_symlinked_or_special_manifests_are_not_read(
    share: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.yaml"
    outside.write_text("audio: top-secret\n")
    link = share / "inbox" / "link.yaml"
    link.symlink_to(outside)
    with pytest.raises(ManifestError, match="symbolic link") as caught:
        load(share, link)
    assert "top-secret" not in str(caught.value)
    fifo = share / "inbox" / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError, match="not a regular file"):
        load(share, fifo)  # returns at once: a named pipe must not block the intake


def test_long_names_fit_a_file_name() -> None:
    assert len(job_name("发" * 100).encode()) <= 150
    assert len(job_name("a" * 300)) == 100
