"""Upload throughput to the embedded SeaweedFS on loopback: lipsyncd's uploader beside rclone and aws-cli.

The same generated files (random bytes, so nothing compresses or dedups) go to the same server on the
same machine, once per tool and repetition, in a rotating order. "ours" is `upload_file` on a pool of
`max_concurrent` threads sharing one boto3 client, exactly as the upload watcher runs it (hash, HEAD,
PUT or multipart with Content-MD5 per part, verify). rclone runs at its own defaults and again matched to
our settings; `aws s3 cp --recursive` at its defaults. Every run is checked by listing what arrived.

    .venv/bin/python bench/upload_speed.py            # 8 x 64 MiB and 40 x 4 MiB, 3 repetitions
    .venv/bin/python bench/upload_speed.py --quick    # smaller files, 1 repetition
    .venv/bin/python bench/upload_speed.py --part-size 16MiB --part-workers 4 --concurrency 3

Needs `rclone` (Debian: apt-get install -y rclone) and `aws` (awscli) on PATH; a missing tool is skipped
and named in the result. MB/s is 10^6 bytes per second of wall time; CPU columns are seconds of CPU the
client (all its threads or the child process) and the SeaweedFS server used during the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structlog.testing import capture_logs

from daemon.config import UploadConfig
from daemon.distribute.embedded import EmbeddedS3, EmbeddedSettings
from daemon.distribute.uploader import SqliteJournal, UploadSettings, upload_file

MiB = 1024 * 1024
MB = 1_000_000
BUCKET = "bench"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class FileSet:
    name: str
    count: int
    size: int

    @property
    def total(self) -> int:
        return self.count * self.size


FULL_SETS = (FileSet("large", 8, 64 * MiB), FileSet("small", 40, 4 * MiB))
QUICK_SETS = (FileSet("large", 3, 32 * MiB), FileSet("small", 10, 4 * MiB))


@dataclass(frozen=True)
class OurSettings:
    """lipsyncd's knobs: the config defaults unless a flag overrides them."""

    concurrency: int = UploadConfig().max_concurrent
    part_size: int = UploadConfig().part_size
    part_workers: int = UploadConfig().part_workers
    multipart_threshold: int = UploadConfig().multipart_threshold
    pool: int | None = None  # boto3 max_pool_connections; None: what the embedded client uses
    unsigned: bool = False  # UNSIGNED-PAYLOAD: no SigV4 body sha256 over http; Content-MD5 still checked

    def describe(self, default_pool: int) -> str:
        return (
            f"files {self.concurrency}, parts {self.part_size // MiB} MiB x {self.part_workers}, "
            f"multipart >= {self.multipart_threshold // MiB} MiB, pool {self.pool or default_pool}"
            + (", unsigned payload" if self.unsigned else "")
        )

    def upload(self) -> UploadSettings:
        return UploadSettings(
            multipart_threshold=self.multipart_threshold,
            part_size=self.part_size,
            max_part_workers=self.part_workers,
        )


@dataclass(frozen=True)
class Tool:
    name: str
    settings: str  # what it ran with, for the table
    upload: Callable[[Path, str], None]  # (folder, key prefix) -> all files of the folder stored


@dataclass(frozen=True)
class Run:
    tool: str
    fileset: str
    rep: int
    bytes: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


@dataclass(frozen=True)
class Server:
    """The running embedded storage and what the tools need to reach it."""

    s3: EmbeddedS3
    client: Any
    state: Path  # the server's state dir; our upload journal (SQLite, as in the daemon) lives here too
    env: dict[str, str] = field(repr=False)  # keys for the child processes; never printed


# -- inputs --------------------------------------------------------------------------------------------


def make_files(folder: Path, fileset: FileSet, seed: int = 0) -> Path:
    """fileset.count files of random bytes in folder/NAME/."""
    target = folder / fileset.name
    target.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(fileset.count):
        (target / f"{fileset.name}-{i:03d}.bin").write_bytes(rng.bytes(fileset.size))
    return target


# -- the server ----------------------------------------------------------------------------------------


@contextmanager
def embedded_server(state: Path) -> Iterator[Server]:
    s3 = EmbeddedS3(state, EmbeddedSettings(bucket=BUCKET))
    s3.start()
    try:
        yield Server(s3, s3.client(), state, _child_env(s3, state))
    finally:
        s3.kill()  # its data is thrown away: the ~15 s clean stop buys nothing here


def _child_env(s3: EmbeddedS3, state: Path) -> dict[str, str]:
    """rclone and aws-cli reach the server through the environment (keys, endpoint, path style)."""
    aws_config = state / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    # AWS_CA_BUNDLE (set on some hosts) makes rclone refuse to start; loopback HTTP needs no CA anyway
    env |= {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_CONFIG_FILE": str(aws_config),
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "RCLONE_CONFIG": os.devnull,
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENV_AUTH": "true",
        "RCLONE_CONFIG_BENCH_ENDPOINT": s3.endpoint_url,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }
    return env


def server_cpu_s(server: Server) -> float:
    """utime + stime of the weed process, in seconds (its pid file is part of the documented layout)."""
    try:
        pid = int((server.state / "embedded-s3" / "weed.pid").read_text())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored(server: Server, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under prefix."""
    count = size = 0
    for page in server.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            count, size = count + 1, size + item["Size"]
    return count, size


def clear(server: Server, prefix: str) -> None:
    """Delete what a run stored, so every run writes into a server in the same state."""
    for page in server.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            server.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


# -- the tools -----------------------------------------------------------------------------------------


def ours(server: Server, settings: OurSettings, name: str = "ours") -> Tool:
    client = _client_for(server, settings)
    upload = settings.upload()
    journal = SqliteJournal(server.state / "journal.db")  # every finished part is committed, as in the daemon

    def run(folder: Path, prefix: str) -> None:
        files = sorted(folder.iterdir())
        with ThreadPoolExecutor(settings.concurrency) as pool:
            jobs = [
                pool.submit(upload_file, client, BUCKET, prefix + p.name, p, journal, upload) for p in files
            ]
            for job in jobs:
                job.result()

    return Tool(name, settings.describe(server.s3.storage_settings().max_pool_connections), run)


def _client_for(server: Server, settings: OurSettings) -> Any:
    """The embedded server's own client, unless a variant changes the pool or payload signing."""
    if settings.pool is None and not settings.unsigned:
        return server.client
    import boto3
    import botocore.config

    from daemon.distribute.s3 import client_config

    storage = server.s3.storage_settings()
    storage = replace(storage, max_pool_connections=settings.pool or storage.max_pool_connections)
    s3 = {"addressing_style": "path", "payload_signing_enabled": not settings.unsigned}
    config = client_config(storage).merge(botocore.config.Config(s3=s3))
    return boto3.session.Session().client(
        "s3",
        endpoint_url=storage.endpoint_url,
        region_name=storage.region,
        config=config,
        aws_access_key_id=server.s3.access_key,
        aws_secret_access_key=server.s3.secret_key,
    )


def rclone(server: Server, name: str, flags: list[str], described: str) -> Tool:
    def run(folder: Path, prefix: str) -> None:
        _child(["rclone", "copy", str(folder), f"bench:{BUCKET}/{prefix}", *flags], server.env)

    return Tool(name, described, run)


def aws(server: Server) -> Tool:
    def run(folder: Path, prefix: str) -> None:
        command = ["aws", "--endpoint-url", server.s3.endpoint_url, "s3", "cp", "--recursive"]
        _child([*command, "--only-show-errors", str(folder), f"s3://{BUCKET}/{prefix}"], server.env)

    return Tool("aws", "defaults: 10 requests, multipart >= 8 MiB, parts 8 MiB", run)


def _child(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")


def tools(
    server: Server, settings: OurSettings, variants: dict[str, OurSettings]
) -> tuple[list[Tool], list[str]]:
    """The tools to run, and the names of those missing on this machine."""
    matched = [
        f"--transfers={settings.concurrency}",
        f"--s3-upload-concurrency={settings.part_workers}",
        f"--s3-chunk-size={settings.part_size // MiB}Mi",
        f"--s3-upload-cutoff={settings.multipart_threshold // MiB}Mi",
    ]
    found: list[Tool] = [ours(server, settings)]
    found += [ours(server, variant, f"ours-{name}") for name, variant in variants.items()]
    missing = []
    if shutil.which("rclone"):
        found.append(rclone(server, "rclone", [], "defaults: 4 files, parts 5 MiB x 4, multipart >= 200 MiB"))
        found.append(rclone(server, "rclone-matched", matched, " ".join(m.lstrip("-") for m in matched)))
    else:
        missing.append("rclone")
    if shutil.which("aws"):
        found.append(aws(server))
    else:
        missing.append("aws")
    return found, missing


# -- measuring -----------------------------------------------------------------------------------------


def timed_run(server: Server, tool: Tool, folder: Path, fileset: FileSet, rep: int) -> Run:
    prefix = f"{tool.name}/{fileset.name}/{rep}/"
    cpu0, children0, server0 = time.process_time(), _children_cpu(), server_cpu_s(server)
    began = time.perf_counter()
    tool.upload(folder, prefix)
    seconds = time.perf_counter() - began
    client_cpu = time.process_time() - cpu0 + _children_cpu() - children0
    run = Run(
        tool.name, fileset.name, rep, fileset.total, seconds, client_cpu, server_cpu_s(server) - server0
    )
    _check_arrived(server, prefix, fileset, tool.name)
    clear(server, prefix)
    return run


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def _check_arrived(server: Server, prefix: str, fileset: FileSet, tool: str) -> None:
    count, size = stored(server, prefix)
    if (count, size) != (fileset.count, fileset.total):
        raise RuntimeError(
            f"{tool} stored {count} objects / {size} bytes under {prefix}; "
            f"expected {fileset.count} / {fileset.total}"
        )


def measure(
    server: Server, found: list[Tool], folders: dict[str, Path], sets: tuple[FileSet, ...], reps: int
) -> list[Run]:
    """Every tool on every set, reps times; the tool order rotates so none always goes first."""
    runs = []
    for rep in range(reps):
        order = found[rep % len(found) :] + found[: rep % len(found)]
        for fileset in sets:
            for tool in order:
                run = timed_run(server, tool, folders[fileset.name], fileset, rep)
                print(f"  rep {rep} {fileset.name:<6} {tool.name:<15} {run.mb_per_s:8.1f} MB/s", flush=True)
                runs.append(run)
    return runs


# -- summary -------------------------------------------------------------------------------------------


def summarise(runs: list[Run], found: list[Tool]) -> dict[str, dict[str, Any]]:
    """Per tool: median MB/s per file set and over all bytes, spread, and CPU seconds per GB."""
    table: dict[str, dict[str, Any]] = {}
    for tool in found:
        mine = [r for r in runs if r.tool == tool.name]
        row: dict[str, Any] = {"settings": tool.settings}
        for name in dict.fromkeys(r.fileset for r in mine):
            row[name] = _stats([r for r in mine if r.fileset == name])
        row["all"] = _stats_all(mine)
        table[tool.name] = row
    return table


def _stats(runs: list[Run]) -> dict[str, Any]:
    speeds = [r.mb_per_s for r in runs]
    gb = sum(r.bytes for r in runs) / 1e9
    return {
        "mb_per_s": round(statistics.median(speeds), 1),
        "min": round(min(speeds), 1),
        "max": round(max(speeds), 1),
        "runs": [round(s, 1) for s in speeds],
        "client_cpu_s_per_gb": round(sum(r.client_cpu_s for r in runs) / gb, 2),
        "server_cpu_s_per_gb": round(sum(r.server_cpu_s for r in runs) / gb, 2),
    }


def _stats_all(runs: list[Run]) -> dict[str, Any]:
    """All sets of one repetition together: total bytes over total seconds, median over repetitions."""
    reps = sorted({r.rep for r in runs})
    speeds = [
        sum(r.bytes for r in runs if r.rep == rep) / MB / sum(r.seconds for r in runs if r.rep == rep)
        for rep in reps
    ]
    return {
        "mb_per_s": round(statistics.median(speeds), 1),
        "min": round(min(speeds), 1),
        "max": round(max(speeds), 1),
    }


def ratios(table: dict[str, dict[str, Any]]) -> dict[str, float]:
    """ours / each other tool, on the all-files median."""
    ours_speed = table["ours"]["all"]["mb_per_s"]
    return {
        f"ours/{name}": round(ours_speed / row["all"]["mb_per_s"], 3)
        for name, row in table.items()
        if name != "ours"
    }


def print_table(table: dict[str, dict[str, Any]], sets: tuple[FileSet, ...], ratio: dict[str, float]) -> None:
    names = [s.name for s in sets]
    head = "".join(f"{n + ' MB/s':>14}" for n in [*names, "all"])
    print(f"\n{'tool':<16}{head}{'cpu s/GB':>10}{'srv s/GB':>10}  settings")
    for tool, row in table.items():
        cells = "".join(f"{row[n]['mb_per_s']:>14.1f}" for n in [*names, "all"])
        cpu = statistics.mean(row[n]["client_cpu_s_per_gb"] for n in names)
        srv = statistics.mean(row[n]["server_cpu_s_per_gb"] for n in names)
        print(f"{tool:<16}{cells}{cpu:>10.2f}{srv:>10.2f}  {row['settings']}")
    for name, value in ratio.items():
        print(f"{name}: {value:.2f}")


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "rclone": _version(["rclone", "version"]),
        "aws": _version(["aws", "--version"]),
        "weed": _version([_weed(), "version"]),
    }


def _weed() -> str:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else "weed"


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def _version(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else None


def save(section: str, payload: dict[str, Any], folder: Path = RESULTS) -> Path:
    """Merge one section (with the date and this machine) into bench/results/upload-DATE.json, atomically
    (temp file + rename), so the upload and latency benchmarks can share one file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload-{datetime.date.today().isoformat()}.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load = [round(x, 1) for x in os.getloadavg()]  # a shared box: other work skews wall-clock figures
    doc[section] = {"date": now, "machine": machine(), "load_average_1_5_15m": load, **payload}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# -- entry points --------------------------------------------------------------------------------------


def run(
    quick: bool,
    settings: OurSettings | None = None,
    reps: int | None = None,
    variants: dict[str, OurSettings] | None = None,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Measure every tool on generated files; returns the figures (and prints the table). `variants`
    are other settings of ours, run in the same rotation (for tuning)."""
    settings = settings or OurSettings()
    sets = QUICK_SETS if quick else FULL_SETS
    reps = reps or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="lipsyncd-upload-bench-") as tmp, capture_logs():
        folders = {s.name: make_files(Path(tmp) / "files", s, seed=i) for i, s in enumerate(sets)}
        with embedded_server(Path(tmp) / "state") as server:
            found, missing = tools(server, settings, variants or {})
            found = [t for t in found if not only or t.name in only or t.name.startswith("ours")]
            runs = measure(server, found, folders, sets, reps)
    table = summarise(runs, found)
    ratio = ratios(table)
    print_table(table, sets, ratio)
    return {
        "files": [asdict(s) for s in sets],
        "repetitions": reps,
        "ours_settings": asdict(settings),
        "tools": table,
        "ratios": ratio,
        "missing_tools": missing,
        "target": "ours >= 0.9 x rclone (issue 7)",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from daemon.config import parse_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller files, one repetition")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    p.add_argument("--concurrency", type=int, default=OurSettings.concurrency, help="files at once")
    p.add_argument("--part-size", type=parse_size, default=OurSettings.part_size)
    p.add_argument("--part-workers", type=int, default=OurSettings.part_workers)
    p.add_argument("--multipart-threshold", type=parse_size, default=OurSettings.multipart_threshold)
    p.add_argument("--pool", type=int, default=None, help="boto3 max_pool_connections")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="also run ours with other settings, e.g. big:part_size=16MiB,part_workers=4 (repeatable)",
    )
    p.add_argument("--tools", default="", help="comma-separated subset, e.g. ours,rclone (default: all)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/upload-DATE.json")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for upload-DATE.json")
    return p.parse_args(argv)


def parse_variant(text: str, base: OurSettings) -> tuple[str, OurSettings]:
    from daemon.config import parse_size

    name, _, pairs = text.partition(":")
    changes: dict[str, Any] = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        if key in ("part_size", "multipart_threshold"):
            changes[key] = parse_size(value)
        else:
            changes[key] = bool(int(value)) if key == "unsigned" else int(value)
    return name, replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = OurSettings(
        args.concurrency, args.part_size, args.part_workers, args.multipart_threshold, args.pool
    )
    variants = dict(parse_variant(text, settings) for text in args.variant)
    only = set(filter(None, args.tools.split(",")))
    result = run(args.quick, settings, args.reps, variants, only)
    if not args.no_save:
        print(f"wrote {save('upload_speed', result, args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
