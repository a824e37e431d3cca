"""A user's own Wav2Lip checkpoint, imported with `lipsyncd model import`, renders a job through the
daemon and is named in links.json. The checkpoint is random weights saved exactly like the public one
(the real weights are research-licensed and cannot ship)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.e2e.harness import Share
from tests.functional.test_model_import import realistic_random_wav2lip, save_like_public


def test_imported_checkpoint_renders_a_job(tmp_path: Path, media: dict[str, Path]) -> None:
    share = Share(tmp_path / "shared", {"render": {"batch_size": 8}})
    checkpoint = save_like_public(realistic_random_wav2lip(seed=3).state_dict(), tmp_path / "wav2lip_gan.pth")
    # --no-variants: no int8 calibration (about 20 s); tests/functional/test_precision_auto.py covers auto
    imported = share.lipsyncd(
        "model", "import", str(checkpoint), "--name", "wav2lip_gan", "--no-variants", timeout=600
    )
    assert imported.returncode == 0, imported.stderr
    assert "wav2lip_gan" in share.lipsyncd("model", "list").stdout
    for name in ("face_b", "speech"):
        shutil.copy(media[name], share.inbox / "media")
    share.drop(
        "learned.yaml",
        {"audio": "media/speech.wav", "videos": ["media/anchor_b.mp4"], "model": "wav2lip_gan"},
    )
    rendered = share.lipsyncd("render", "--once", timeout=600)
    assert rendered.returncode == 0, rendered.stderr
    video = share.links("learned")["videos"][0]  # type: ignore[index]
    assert video["status"] == "rendered"
    assert video["model"] == "wav2lip_gan"
    assert video["frames"] == 90


def test_a_truncated_checkpoint_is_refused_clearly(tmp_path: Path) -> None:
    share = Share(tmp_path / "shared")
    broken = tmp_path / "wav2lip.pth"
    save_like_public(realistic_random_wav2lip(seed=1).state_dict(), broken)
    broken.write_bytes(broken.read_bytes()[: 1 << 20])
    result = share.lipsyncd("model", "import", str(broken))
    assert result.returncode == 1
    assert "wav2lip.pth" in result.stderr
    assert "Traceback" not in result.stderr
