"""`lipsyncd doctor`: what this machine offers and what to fix, one line per check."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import Config

# statfs(2) f_type of filesystems other machines write to as well: SQLite's locks and WAL fail there
NETWORK_FILESYSTEMS = {
    0x6969: "NFS",
    0x517B: "SMB",
    0xFF534D42: "SMB/CIFS",
    0xFE534D42: "SMB2/3",
    0x01021997: "9p",
    0x00C36400: "Ceph",
    0x5346414F: "AFS",
    0x6B414653: "AFS",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
}
FUSE = 0x65735546  # sshfs, s3fs, but also local ones (mergerfs, ntfs-3g): a warning, not a refusal


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str
    warn: bool = False  # works, but probably not as meant: said, without failing the doctor

    @property
    def mark(self) -> str:
        return "FIX" if not self.ok else "WARN" if self.warn else "OK "


def run_checks(config: Config) -> list[Check]:
    checks: list[Callable[[Config], list[Check]]] = [
        _gpus,
        _providers,
        _encoders,
        _gpu_choices,
        _models,
        _precisions,
        _folders,
        _state_local,
        _store,  # the ledger: SQLite in the state directory, or PostgreSQL at store.url
        _storage,
        _links,
        _api,
    ]
    return [result for check in checks for result in _safely(check, config)]


def _safely(check: Callable[[Config], list[Check]], config: Config) -> list[Check]:
    try:
        return check(config)
    except Exception as exc:  # noqa: BLE001 - a broken check reports itself; the others still run
        return [Check(check.__name__.strip("_"), False, f"the check itself failed: {exc}")]


def _gpus(config: Config) -> list[Check]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [Check("GPU", True, "none found (nvidia-smi absent): rendering runs on the CPU")]
    out = subprocess.run(
        [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
    )
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not names:
        return [
            Check("GPU", False, f"nvidia-smi failed ({out.stderr.strip()[:120]}): check the NVIDIA driver")
        ]
    return [Check(f"GPU {i}", True, name) for i, name in enumerate(names)]


def _providers(config: Config) -> list[Check]:
    import onnxruntime as ort

    from daemon.render.model import choose_providers
    from daemon.render.openvino_runtime import OPENVINO, load_openvino

    available = ort.get_available_providers()
    chosen, reason = choose_providers(config.render.providers)
    wants_gpu = config.render.providers in ("cuda", "tensorrt")
    ok = not wants_gpu or "CUDAExecutionProvider" in available
    detail = f"onnxruntime {ort.__version__}: {', '.join(available)}; using {chosen[0]} ({reason})"
    if not ok:
        detail += ". Install onnxruntime-gpu (pip install 'lipsyncd[gpu]') matching your CUDA"
    if chosen[0] == OPENVINO:
        detail += f"; openvino {load_openvino().__version__}"
    elif config.render.providers == "openvino":
        ok = False  # asked for, and the reason says it does not import
    return [Check("execution providers", ok, detail)]


def _encoders(config: Config) -> list[Check]:
    from daemon.render.media import encoder_available

    checks = [
        Check("encoder libx264", encoder_available("libx264"), "H.264 software encoder (PyAV's FFmpeg)")
    ]
    nvenc = encoder_available("h264_nvenc")
    note = "NVENC usable" if nvenc else "NVENC not usable here (no NVIDIA encoder unit; H100/H200 have none)"
    checks.append(Check("encoder h264_nvenc", nvenc or config.render.encoder != "h264_nvenc", note))
    return checks


def _gpu_choices(config: Config) -> list[Check]:
    """The GPU-side choices, one line each: where TensorRT keeps its engines, and whether NVDEC decodes."""
    from daemon.app import trt_cache_dir
    from daemon.render.media import nvdec_unusable

    return [
        trt_cache_check(trt_cache_dir(config), config.render.providers),
        nvdec_check(config, nvdec_unusable),
    ]


def trt_cache_check(folder: Path, providers: str) -> Check:
    built = sorted(p.parent.name + "/" + p.name for p in folder.glob("*/*") if (p / "READY").is_file())
    kept = (
        f"{len(built)} built ({', '.join(built)})"
        if built
        else "none built yet (the first start builds them)"
    )
    if providers != "tensorrt":
        return Check(
            "TensorRT engine cache", True, f"{folder}: used when render.providers is tensorrt; {kept}"
        )
    nearest = next(p for p in (folder, *folder.parents) if p.exists())  # made on first use, like the state
    problem = probe_writable(nearest)
    detail = (
        f"{folder}: {kept}" if problem is None else f"{folder} is not writable ({problem}): fix its owner"
    )
    return Check("TensorRT engine cache", problem is None, detail)


def nvdec_check(config: Config, unusable: Callable[[int], str | None]) -> Check:
    gpu = config.render.gpus[0] if config.render.gpus else 0
    reason = unusable(gpu) if config.render.decoder != "cpu" else None
    if config.render.decoder == "cpu":
        return Check("decoder NVDEC", True, "not asked (render.decoder: cpu): decoding on the CPU")
    if reason is None:
        return Check("decoder NVDEC", True, f"usable on GPU {gpu} (render.decoder: {config.render.decoder})")
    # asked for by name and not usable: renders still work (CPU decoding), so a warning, not a failure
    return Check("decoder NVDEC", True, reason, warn=config.render.decoder == "nvdec")


def _models(config: Config) -> list[Check]:
    from daemon.render.registry import model_entries

    entries = model_entries(config.models_dir)
    ok = config.render.model in {entry.name for entry in entries}
    listed = ", ".join(f"{e.name} ({e.family} {e.variants_text})" for e in entries)
    detail = f"{listed}; default {config.render.model!r}"
    if not ok:
        detail += " is missing: run `lipsyncd model import` or change render.model"
    return [Check("models", ok, detail)]


def _precisions(config: Config) -> list[Check]:
    """One line per imported model: the precision it renders in here, and why (auto's reason)."""
    from daemon.render.model import choose_providers
    from daemon.render.modelspec import BASELINE, SPEC_NAME, ModelSpec
    from daemon.render.openvino_runtime import OPENVINO
    from daemon.render.precision import choose, cpu_flags
    from daemon.render.registry import OPENERS, precision_choice, takes_openvino

    provider, flags = choose_providers(config.render.providers)[0][0], cpu_flags()
    folders = sorted(config.models_dir.glob(f"*/{SPEC_NAME}")) if config.models_dir.is_dir() else []
    checks = []
    for spec_file in folders:
        try:
            spec = ModelSpec.load(spec_file.parent)
        except (OSError, ValueError, TypeError):
            continue  # the models line already leaves an unreadable spec out (and the log says why)
        if spec.kind == BASELINE:
            continue
        choice = choose(spec, provider, flags)
        opened = precision_choice(spec, config.render.precision, provider)  # what the render opens
        on_onnxruntime = spec.kind not in OPENERS or not takes_openvino(OPENERS[spec.kind], opened)
        runtime = "onnxruntime's CPU provider" if on_onnxruntime and provider == OPENVINO else provider
        detail = f"auto picks {choice.reason}; runs in {runtime}"
        if config.render.precision != "auto":
            detail = f"render.precision is {config.render.precision or 'null'} ({detail})"
        checks.append(Check(f"precision {spec.name}", True, detail))
    return checks


def _folders(config: Config) -> list[Check]:
    checks = [_writable("inbox", config.inbox_dir), _writable("outputs", config.outputs_dir)]
    state = _writable("state", config.state_dir)
    if state.ok and config.state_dir.exists() and config.state_dir.stat().st_mode & 0o007:
        state = Check(
            "state", False, f"{config.state_dir} is readable by everyone: chmod o-rwx it (keys live there)"
        )
    return [*checks, state]


def _writable(what: str, folder: Path) -> Check:
    if not folder.exists():
        return Check(what, True, f"{folder} will be created on first start")
    if not os.access(folder, os.W_OK | os.X_OK):
        return Check(what, False, f"{folder} is not writable by this user: fix its owner or mode")
    problem = probe_writable(folder)
    if problem:
        return Check(what, False, f"{folder}: {problem}")
    return Check(what, True, str(folder))


def probe_writable(folder: Path) -> str | None:
    """Create, rename and delete a probe file there, as publishing does; what went wrong, or None.
    Mode bits are not the whole answer: a read-only mount, a full disk, root squash on NFS or an SMB
    share's own rules only show on a real try."""
    name = f".lipsyncd-doctor-{os.getpid()}-{secrets.token_hex(4)}"
    first, second = folder / f"{name}.tmp", folder / name
    step = "create"
    try:
        fd = os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"lipsyncd doctor\n")
        finally:
            os.close(fd)
        step = "rename"
        os.rename(first, second)
        step = "delete"
        os.unlink(second)
    except OSError as exc:
        for left in (first, second):
            with suppress(OSError):
                left.unlink()
        return f"could not {step} a probe file ({exc.strerror or exc}): lipsyncd writes there"
    return None


def _state_local(config: Config) -> list[Check]:
    folder = config.state_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # not made yet: it will live on its parent's filesystem
    return [state_filesystem_check(config.state_dir, fs_type(folder))]


def state_filesystem_check(state_dir: Path, f_type: int) -> Check:
    """The state directory must be on this machine's own disk: the SQLite ledger lives there."""
    name = NETWORK_FILESYSTEMS.get(f_type)
    if name is not None:
        return Check(
            "state on local disk",
            False,
            f"{state_dir} is on {name}, a network filesystem: SQLite must not live there (its locks and "
            "WAL do not work across machines, so the store can corrupt). Put paths.state on a local "
            "disk of each host; only inbox and outputs belong on the shared folder",
        )
    if f_type == FUSE:
        return Check(
            "state on local disk",
            True,
            f"{state_dir} is on a FUSE filesystem: if that is sshfs or another network filesystem, move "
            "paths.state to a local disk (SQLite's locks and WAL do not work there)",
            warn=True,
        )
    return Check("state on local disk", True, f"{state_dir} (filesystem type {f_type:#x})")


def fs_type(path: Path) -> int:
    """statfs(2)'s f_type for path (Python's os.statvfs does not give it): the first word of the struct."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(512)  # larger than struct statfs on every Linux architecture
    if libc.statfs(os.fsencode(path), buffer) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def _store(config: Config) -> list[Check]:
    """The SQLite store opens (read-only: the doctor changes nothing) and answers."""
    from daemon.store import DB_NAME

    if config.store.url is not None:
        return ledger_checks(config.store.url)

    path = config.state_dir / DB_NAME
    if not path.exists():
        return [Check("store", True, f"{path} will be created on first start")]
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [
            Check("store", False, f"{path} does not answer ({exc}): check its owner, mode and free space")
        ]
    return [Check("store", True, f"SQLite {path}: {jobs} job(s)")]


MAX_SKEW_S = 1.0  # leases use the database's clock; job times and log lines use each host's


def ledger_checks(url: str) -> list[Check]:
    """The PostgreSQL ledger: reachable with this host's password file, at this code's schema version,
    and its clock close to this host's. Read-only: the doctor changes nothing."""
    import psycopg

    from daemon.store import SCHEMA_VERSION, _passfile, _without_password

    where = _without_password(url)
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True, **_passfile(os.environ)) as db:
            before = time.time()
            server = float(_one(db, "SELECT extract(epoch FROM clock_timestamp())::float8"))
            after = time.time()
            version = _schema_version(db)
            jobs = _count_jobs(db) if version else 0
    except psycopg.Error as exc:
        return [
            Check(
                "ledger",
                False,
                f"PostgreSQL at {where} does not answer ({str(exc).strip()}): check store.url, that the "
                "server runs and lets this host in (pg_hba.conf), and the password file (PGPASSFILE, or "
                "the pgpass systemd credential)",
            )
        ]
    return [
        Check("ledger", True, f"PostgreSQL at {where}: {jobs} job(s)"),
        schema_check(version, SCHEMA_VERSION),
        skew_check(server - (before + after) / 2, after - before),
    ]


def _one(db: Any, query: str) -> Any:
    return db.execute(query).fetchone()[0]


def _schema_version(db: Any) -> int:
    exists = _one(db, "SELECT to_regclass('schema_version') IS NOT NULL")
    return int(_one(db, "SELECT MAX(version) FROM schema_version") or 0) if exists else 0


def _count_jobs(db: Any) -> int:
    return int(_one(db, "SELECT COUNT(*) FROM jobs"))


def schema_check(found: int, known: int) -> Check:
    if found == known:
        return Check("ledger schema", True, f"version {found}, this lipsyncd's")
    if found < known:
        return Check(
            "ledger schema",
            True,
            f"version {found}, this lipsyncd writes {known}: the first worker to start migrates it (or run "
            "`lipsyncd store migrate`); every host sharing store.url must run the same version",
            warn=True,
        )
    return Check(
        "ledger schema",
        False,
        f"version {found}, newer than this lipsyncd's {known}: another host runs a newer lipsyncd. Upgrade "
        "this host to the same version before starting it",
    )


def skew_check(skew_s: float, round_trip_s: float) -> Check:
    """This host's clock against the database's, to within the query's round trip."""
    said = f"{skew_s:+.3f} s (measured to within {round_trip_s * 1000:.0f} ms)"
    if abs(skew_s) <= MAX_SKEW_S + round_trip_s:
        return Check("clock skew", True, f"this host's clock is {said} off the database's")
    return Check(
        "clock skew",
        True,
        f"this host's clock is {said} off the database's: leases use the database's clock, but job times "
        "and log lines use this host's. Keep every host in time (chrony or systemd-timesyncd)",
        warn=True,
    )


def _storage(config: Config) -> list[Check]:
    if config.storage.endpoint_url is None:
        from daemon.distribute.embedded import find_weed

        s = config.storage
        port = s.embedded_port or "PORT (picked on first start, then kept)"
        at = f"{s.embedded_listen}:{port}"
        detail = f"embedded SeaweedFS ({find_weed()}), S3 API on {at}"
        return [Check("storage", True, f"{detail}, run by `lipsyncd storage` (else the upload watcher)")]
    from botocore.exceptions import BotoCoreError, ClientError

    from daemon.distribute.s3 import make_client
    from daemon.distribute.storage import storage_settings

    client = make_client(storage_settings(config, None))
    try:
        client.head_bucket(Bucket=config.storage.bucket)
    except (BotoCoreError, ClientError) as exc:
        return [
            Check("storage", False, f"{config.storage.endpoint_url} bucket {config.storage.bucket!r}: {exc}")
        ]
    return [
        Check("storage", True, f"{config.storage.endpoint_url} bucket {config.storage.bucket!r} reachable")
    ]


def _links(config: Config) -> list[Check]:
    """Who can open the links; a loopback address works only on this machine, so say so."""
    from daemon.distribute.reach import reach

    where = reach(config)
    return [Check("links", True, where.sentence(), warn=where.local_only)]


def _api(config: Config) -> list[Check]:
    """`lipsyncd api`: its tokens file (hashes only, 0600) and whether its address leaves this machine."""
    import ipaddress
    import os

    from daemon.api.server import split_listen
    from daemon.api.tokens import TokenError, read_tokens, tokens_path

    path = tokens_path(config.api.tokens_file, config.state_dir, os.environ)
    try:
        tokens = read_tokens(path)
    except TokenError as exc:
        return [Check("HTTP API", False, str(exc))]
    host, _port = split_listen(config.api.listen)
    reach = "this machine only" if ipaddress.ip_address(host).is_loopback else "other machines"
    words = f"{config.api.listen} ({reach}); {len(tokens)} token(s) in {path}"
    if not tokens:
        words += "; every request is refused until `lipsyncd api token add NAME --can ...`"
    open_to_others = path.exists() and path.stat().st_mode & 0o077
    if open_to_others:
        words += f"; {path} is readable by other users: chmod 600 it"
    if reach == "other machines":
        words += "; tokens cross the network in clear unless a TLS proxy is in front"
    return [Check("HTTP API", True, words, warn=bool(open_to_others) or reach == "other machines")]
