"""The command line's own promises: --version, --config before or after the command, and `links` and
`status` agreeing that an unknown job is an error; `model list` and `doctor` naming families and variants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from daemon import __version__
from daemon.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, main
from daemon.config import load_config
from daemon.doctor import _models as doctor_models
from daemon.manifest import Manifest, load_manifest
from daemon.render.modelspec import ModelSpec
from daemon.store import JobStore, VideoState
from tests.poke import set_video


@pytest.fixture(autouse=True)
def _logging_back_to_defaults() -> Iterator[None]:
    """main() points structlog at the captured stderr, which pytest closes after the test: later tests
    that log would write to a closed file."""
    yield
    structlog.reset_defaults()


def config_file(tmp_path: Path, **extra: object) -> Path:
    paths = {name: str(tmp_path / name) for name in ("shared", "state", "models")}
    path = tmp_path / "lipsyncd.yaml"
    path.write_text(yaml.safe_dump({"paths": paths, **extra}))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"lipsyncd {__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_read_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    good, bad = config_file(tmp_path), tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"render": {"batch_size": -1}}))
    for path, code in ((good, EXIT_OK), (bad, EXIT_CONFIG)):
        args = ["--config", str(path), "check-config"]
        assert main(args if where == "before" else [*args[2:], *args[:2]]) == code
    out, err = capsys.readouterr()
    assert str(good) in out
    assert "render.batch_size" in err


def test_config_after_a_nested_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "list", "--config", str(config_file(tmp_path))]) == EXIT_OK
    assert "baseline" in capsys.readouterr().out


def test_links_and_status_agree_on_an_unknown_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_file(tmp_path))
    assert main(["--config", config, "status", "no-such-job"]) == EXIT_FAILED
    assert main(["--config", config, "links", "no-such-job"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("no job named 'no-such-job'") == 2
    assert main(["--config", config, "links"]) == EXIT_OK  # no job named: nothing yet is no error


def test_links_names_the_failed_videos_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a failed video was simply missing from `lipsyncd links`, with no word about it."""
    config = config_file(tmp_path)
    media = tmp_path / "media"
    media.mkdir()
    for name in ("s.wav", "a.mp4", "b.mp4"):
        (media / name).write_bytes(b"x")
    manifest = load_manifest_text(
        tmp_path, "name: promo\naudio: media/s.wav\nvideos: [media/a.mp4, media/b.mp4]\n"
    )
    store = JobStore(load_config(config).state_dir)
    store.add_job(manifest, claimed_path=tmp_path / "promo.yaml", base_dir=tmp_path)
    set_video(store, "promo", "b.mp4", VideoState.FAILED, error="b.mp4 is cut short")
    store.close()
    assert main(["--config", str(config), "links", "promo"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "no links yet for job 'promo'" in out
    assert "promo/b.mp4 has no link: it failed: b.mp4 is cut short" in err
    assert "a.mp4" not in err


def _imported(models: Path) -> None:
    ModelSpec("wav2lip_gan", "wav2lip", variants={"int8": "m.int8.onnx", "fp16": "m.fp16.onnx"}).save(
        models / "wav2lip_gan"
    )
    graphs = {role: {"fp32": f"{role}.onnx", "fp16": f"{role}.fp16.onnx"} for role in ("unet", "vae_encoder")}
    graphs["audio_encoder"] = {"fp32": "audio_encoder.onnx"}  # no fp16 of this graph: fp16 cannot render
    ModelSpec("musetalk", "musetalk", source="MuseTalk", graphs=graphs).save(models / "musetalk")
    ModelSpec("mt16", "musetalk", graphs={"unet": {"fp32": "u.onnx", "fp16": "u16.onnx"}}).save(
        models / "mt16"
    )


def test_model_list_shows_each_models_family_and_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _imported(tmp_path / "models")
    (tmp_path / "models" / "broken").mkdir()
    (tmp_path / "models" / "broken" / "model.json").write_text("{not json")  # logged and left out
    assert main(["model", "list", "--config", str(config_file(tmp_path))]) == EXIT_OK
    rows = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()}
    assert rows["baseline"] == ["baseline", "built-in"]
    assert rows["wav2lip_gan"] == ["wav2lip", "fp32,fp16,int8"]
    assert rows["musetalk"] == ["musetalk", "fp32"]
    assert rows["mt16"] == ["musetalk", "fp32,fp16"]
    assert "broken" not in rows


def test_doctor_names_the_families_and_variants(tmp_path: Path) -> None:
    _imported(tmp_path / "models")
    config = load_config(config_file(tmp_path, render={"model": "mt16"}))
    (check,) = doctor_models(config)
    assert check.ok
    assert "wav2lip_gan (wav2lip fp32,fp16,int8)" in check.detail
    assert "mt16 (musetalk fp32,fp16)" in check.detail
    assert "baseline (baseline built-in)" in check.detail
    (missing,) = doctor_models(load_config(config_file(tmp_path, render={"model": "nope"})))
    assert not missing.ok
    assert "'nope' is missing" in missing.detail


@pytest.mark.parametrize(
    ("option", "daemon_says"),
    [
        (["--link-ttl", "9d"], "'link_ttl' '9d' is out of range"),
        (["--model", "not-installed"], "'model': no model named 'not-installed'"),
        (["--notify", "nobody"], "'notify': no webhook named 'nobody'"),
    ],
)
def test_submit_refuses_what_the_daemon_would_refuse_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], daemon_says: str
) -> None:
    """Before: exit 0, a manifest in the inbox and copied media, then a refusal in inbox/failed/."""
    shared, state = tmp_path / "shared", tmp_path / "state"
    paths = {"shared": str(shared), "inbox": str(shared / "inbox"), "state": str(state)}
    config = str(config_file(tmp_path, paths=paths))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "speech.wav").write_bytes(b"speech")
    (outside / "face.mp4").write_bytes(b"face")
    args = ["--config", config, "submit", str(outside / "speech.wav"), str(outside / "face.mp4"), *option]
    assert main(args) == EXIT_FAILED
    assert daemon_says in capsys.readouterr().err
    inbox = tmp_path / "shared" / "inbox"
    assert not inbox.exists() or [p for p in inbox.rglob("*") if p.is_file()] == []
    assert main(args[:-2]) == EXIT_OK  # the same submit without the bad option goes in
    assert len(list(inbox.glob("*.yaml"))) == 1


def load_manifest_text(folder: Path, text: str) -> Manifest:
    path = folder / "promo.yaml"
    path.write_text(text)
    return load_manifest(path, base_dir=folder, shared=folder, webhooks=(), models=("baseline",))


def test_upload_outside_systemd_refuses_a_credentials_path_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EX_CONFIG (78: the units do not restart-loop on it) before the worker takes its lock or storage."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    hook = {
        "kind": "dingtalk",
        "url": "https://robot.example/send",
        "secret_file": "$CREDENTIALS_DIRECTORY/sec",
    }
    nowhere = {"endpoint_url": "http://127.0.0.1:9"}  # were the check missed: no server is started
    config = config_file(tmp_path, webhooks={"ops": hook}, storage=nowhere)
    assert main(["upload", "--once", "--slot", "1", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "key 'webhooks.ops.secret_file' is '$CREDENTIALS_DIRECTORY/sec'" in err
    assert not (tmp_path / "state" / "locks").exists()


def test_each_upload_worker_reads_the_webhook_secret_from_its_own_credentials_folder(tmp_path: Path) -> None:
    """The resolved path is the one the webhook sender reads (two folders, two secrets, one config)."""
    from daemon.app import webhook_settings
    from daemon.config import with_credentials
    from daemon.distribute.notify import load_hook

    hook = {
        "kind": "dingtalk",
        "url": "https://robot.example/send",
        "secret_file": "$CREDENTIALS_DIRECTORY/sec",
    }
    config = load_config(config_file(tmp_path, webhooks={"ops": hook}))
    for unit in ("lipsyncd-upload.service", "lipsyncd-upload@1.service"):
        folder = tmp_path / "run" / unit
        folder.mkdir(parents=True)
        (folder / "sec").write_text(f"SEC-{unit}\n")
        settings = webhook_settings(with_credentials(config, {"CREDENTIALS_DIRECTORY": str(folder)}))
        assert load_hook(settings[0]).secret == f"SEC-{unit}"


def test_a_storage_error_is_one_line_and_exit_1_though_main_no_longer_imports_boto3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon import cli
    from daemon.distribute.s3 import StorageError

    def fails(*_: object) -> int:
        raise StorageError("the bucket lipsyncd does not exist on http://s3.example: create it")

    monkeypatch.setattr(cli, "_status", fails)
    assert main(["--config", str(config_file(tmp_path)), "status"]) == EXIT_FAILED
    assert "lipsyncd: the bucket lipsyncd does not exist" in capsys.readouterr().err

    def breaks(*_: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_status", breaks)
    with pytest.raises(RuntimeError):  # anything else still reaches the traceback
        main(["--config", str(config_file(tmp_path)), "status"])
