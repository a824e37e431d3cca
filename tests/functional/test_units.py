"""The systemd units: `systemd-analyze verify` clean, security exposure under the thresholds, and the real
render and upload code running under the units' seccomp sandbox (see unit_sandbox.py for what that covers).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SANDBOX = Path(__file__).with_name("unit_sandbox.py")
INSTALLED_BINARY = "/opt/lipsyncd/venv/bin/lipsyncd"
THRESHOLDS = {
    "lipsyncd-api.service": 3.0,
    "lipsyncd-upload.service": 3.0,
    "lipsyncd-upload@.service": 3.0,
    "lipsyncd-render@.service": 4.0,
    "lipsyncd-storage.service": 3.0,
}
WATCHERS = ("lipsyncd-render@.service", "lipsyncd-upload.service", "lipsyncd-upload@.service")

needs_systemd = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze not installed"
)


def unit_lines(name: str) -> list[tuple[str, str]]:
    pairs = []
    for line in (UNITS / name).read_text().splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key, value))
    return pairs


def values(name: str, key: str) -> list[str]:
    return [v for k, v in unit_lines(name) if k == key]


@needs_systemd
def test_units_verify_clean(tmp_path: Path) -> None:
    """verify checks that ExecStart= exists; the package is not installed here, so the copies point at a
    stub script in tmp_path (a test-only measure; everything else is verified as shipped)."""
    stub = tmp_path / "bin" / "lipsyncd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for unit in UNITS.glob("lipsyncd*"):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_BINARY, str(stub)))
    names = sorted(p.name for p in UNITS.glob("lipsyncd*"))
    assert names == [
        "lipsyncd-api.service",
        "lipsyncd-render@.service",
        "lipsyncd-storage.service",
        "lipsyncd-upload.service",
        "lipsyncd-upload@.service",
        "lipsyncd.target",
    ]
    result = subprocess.run(
        ["systemd-analyze", "verify", *(f"./{n}" for n in names)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_systemd
@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_security_exposure_under_threshold(name: str) -> None:
    score = exposure(UNITS / name)
    print(f"{name}: exposure {score}")
    assert score <= THRESHOLDS[name]


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_service_contract(name: str) -> None:
    pairs = dict(unit_lines(name))
    assert pairs["Type"] == "notify"
    assert pairs["NotifyAccess"] == "main"
    assert pairs["Restart"] == "on-failure"
    assert int(pairs["WatchdogSec"]) > 0
    assert (pairs["User"], pairs["Group"], pairs["StateDirectory"]) == ("lipsyncd", "lipsyncd", "lipsyncd")
    assert pairs["ExecStart"].startswith(
        f"{INSTALLED_BINARY} {name.split('-')[1].split('.')[0].rstrip('@')} --config "
    )
    assert pairs["PartOf"] == "lipsyncd.target"
    assert pairs["CapabilityBoundingSet"] == ""
    assert pairs["RestartPreventExitStatus"] == "78"  # EX_CONFIG: a bad config does not restart-loop
    if name in WATCHERS:
        assert pairs["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert values(name, "ReadWritePaths") == ["/srv/lipsyncd/inbox /srv/lipsyncd/outputs"]
    elif name == "lipsyncd-api.service":  # writes uploads and manifests into the inbox, nothing else
        assert "ExecReload" not in pairs
        assert values(name, "ReadWritePaths") == ["/srv/lipsyncd/inbox"]
    else:  # storage: no config reload (SIGHUP would end it), writes only its state directory
        assert "ExecReload" not in pairs
        assert "ReadWritePaths" not in pairs


def test_storage_is_a_unit_of_its_own_that_upload_restarts_leave_alone() -> None:
    """The upload unit wants and comes after the storage unit but is not bound to it (Wants=, not
    Requires=/BindsTo=): restarting or stopping upload never stops the server behind the links."""
    upload = dict(unit_lines("lipsyncd-upload.service"))
    assert "lipsyncd-storage.service" in upload["Wants"].split()
    assert "lipsyncd-storage.service" in upload["After"].split()
    binding = ("Requires", "Requisite", "BindsTo", "PartOf", "PropagatesStopTo")
    assert not [k for k, v in unit_lines("lipsyncd-upload.service") if k in binding and "storage" in v]
    storage = dict(unit_lines("lipsyncd-storage.service"))
    assert storage["ExecStart"].split()[1] == "storage"
    assert storage["KillMode"] == "mixed"
    assert int(storage["RestartSec"]) < 10  # back before the upload watcher's 10 s take-over grace
    assert int(storage["TimeoutStopSec"]) > 20  # SeaweedFS's drain
    assert storage["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert storage["LimitNOFILE"] == "65536"


def test_no_secret_reaches_a_unit_through_its_environment() -> None:
    for unit in UNITS.glob("lipsyncd*"):
        assert not [k for k, _ in unit_lines(unit.name) if k.startswith("Environment")], unit.name
    for upload in ("lipsyncd-upload.service", "lipsyncd-upload@.service"):
        assert values(upload, "LoadCredential") == [
            "s3:/etc/lipsyncd/credentials/s3",
            "webhook:/etc/lipsyncd/credentials/webhooks",
        ]
    assert not values("lipsyncd-render@.service", "LoadCredential")
    assert not values("lipsyncd-storage.service", "LoadCredential")  # its keys are its own, in the state dir


def test_stop_timeouts_leave_room_for_a_batch_and_for_seaweedfs() -> None:
    assert int(values("lipsyncd-upload.service", "TimeoutStopSec")[0]) > 20 + 30  # weed ~20 s + a part
    assert int(values("lipsyncd-render@.service", "TimeoutStopSec")[0]) >= 60
    assert values("lipsyncd-upload.service", "KillMode") == ["mixed"]  # the daemon stops weed itself


def test_render_reaches_the_gpu_but_not_the_network() -> None:
    render = dict(unit_lines("lipsyncd-render@.service"))
    assert render["DevicePolicy"] == "closed"
    assert render["DeviceAllow"] == "char-nvidia* rw"
    assert "PrivateDevices" not in render  # it would hide /dev/nvidia*
    assert (render["PrivateNetwork"], render["RestrictAddressFamilies"]) == ("yes", "AF_UNIX")
    upload = dict(unit_lines("lipsyncd-upload.service"))
    assert upload["PrivateDevices"] == "yes"
    assert "DeviceAllow" not in upload


def test_target_starts_all_three() -> None:
    wants = dict(unit_lines("lipsyncd.target"))["Wants"].split()
    assert sorted(wants) == [
        "lipsyncd-render@0.service",
        "lipsyncd-storage.service",
        "lipsyncd-upload.service",
    ]


def _sandbox_available() -> bool:
    return (
        bool(shutil.which("systemd-analyze")) and Path("/usr/lib/x86_64-linux-gnu/libseccomp.so.2").exists()
    )


needs_sandbox = pytest.mark.skipif(not _sandbox_available(), reason="needs libseccomp2 and systemd-analyze")

RENDER_CHILD = """
import ctypes, os, socket, sys
import av, cv2, numpy as np, onnxruntime as ort
from onnx import TensorProto, helper

weights = np.random.rand(3, 6, 3, 3).astype(np.float32)
nodes = [helper.make_node("Conv", ["face", "w"], ["y"], pads=[1, 1, 1, 1])]
nodes.append(helper.make_node("Sigmoid", ["y"], ["image"]))
graph = helper.make_graph(
    nodes, "contract", [helper.make_tensor_value_info("face", TensorProto.FLOAT, ["B", 6, 96, 96])],
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 96, 96])],
    [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten())])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
# Default thread settings on purpose: onnxruntime then pins its threads (sched_setaffinity).
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
assert session.run(None, {"face": np.random.rand(8, 6, 96, 96).astype(np.float32)})[0].shape == (8, 3, 96, 96)

path = sys.argv[1]
with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=25)
    stream.width = stream.height = 128
    stream.pix_fmt = "yuv420p"
    for i in range(10):
        frame = av.VideoFrame.from_ndarray(np.full((128, 128, 3), i * 20, np.uint8), format="bgr24")
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
with av.open(path) as src:
    assert sum(1 for _ in src.decode(video=0)) == 10
cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
assert not cascade.empty()

# The sandbox is really there: no W+X memory, no IP sockets.
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
assert libc.mmap(None, 4096, 7, 0x22, -1, 0) == ctypes.c_void_p(-1).value and ctypes.get_errno() == 1
try:
    socket.socket(socket.AF_INET)
    raise SystemExit("AF_INET allowed")
except OSError as exc:
    assert exc.errno == 97, exc
print("render stack ok")
"""


def run_sandboxed(
    unit: str, script: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(SANDBOX), str(UNITS / unit), "--", sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@needs_sandbox
def test_render_stack_runs_under_the_render_units_seccomp_sandbox(tmp_path: Path) -> None:
    """onnxruntime (its default thread pool pins threads), PyAV/libx264 and OpenCV under
    SystemCallFilter=, MemoryDenyWriteExecute=yes and RestrictAddressFamilies=AF_UNIX."""
    result = run_sandboxed("lipsyncd-render@.service", RENDER_CHILD, str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    assert "render stack ok" in result.stdout
    assert "SystemCallFilter" in result.stderr
    assert "MemoryDenyWriteExecute" in result.stderr
    assert "not permitted" not in result.stderr.lower()  # e.g. onnxruntime's pthread_setaffinity_np error


UPLOAD_CHILD = """
import sys, urllib.request
from pathlib import Path
from daemon.distribute.embedded import EmbeddedS3, EmbeddedSettings

s3 = EmbeddedS3(Path(sys.argv[1]), EmbeddedSettings(bucket="sandbox"))
s3.start()
try:
    client = s3.client()
    client.put_object(Bucket="sandbox", Key="a.mp4", Body=b"x" * 100_000)
    params = {"Bucket": "sandbox", "Key": "a.mp4"}
    url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    assert urllib.request.urlopen(url, timeout=10).read() == b"x" * 100_000
    print("upload stack ok")
finally:
    s3.kill()  # a graceful stop takes ~20 s and proves nothing more here
"""


@needs_sandbox
@pytest.mark.parametrize("unit", ["lipsyncd-storage.service", "lipsyncd-upload.service"])
def test_embedded_storage_and_boto3_run_under_the_units_seccomp_sandbox(tmp_path: Path, unit: str) -> None:
    """SeaweedFS (Go) and boto3 under the storage unit's filters (it runs the server) and the upload
    unit's (it takes over when the storage unit stays down), without AF_NETLINK."""
    pytest.importorskip("daemon.distribute.embedded")
    result = run_sandboxed(unit, UPLOAD_CHILD, str(tmp_path / "state"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "upload stack ok" in result.stdout


API_CHILD = """
import socket, sys, threading, time
from pathlib import Path
import httpx, uvicorn
from daemon.api.app import create_app
from daemon.api.tokens import add_token, parse_rights
from daemon.config import ApiConfig, Config, PathsConfig

root = Path(sys.argv[1])
(root / "inbox").mkdir(parents=True)
config = Config(paths=PathsConfig(shared=root, inbox=root / "inbox", state=root / "state"),
                api=ApiConfig(min_free_bytes=0))
token = add_token(root / "state" / "api-tokens.json", "t", parse_rights("all"))
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(create_app(config, {}), host="127.0.0.1", port=port, log_config=None))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.05)
headers = {"Authorization": f"Bearer {token}"}
answer = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", headers=headers,
                    files=[("audio", ("a.wav", b"a")), ("videos", ("v.mp4", b"v" * 200_000))])
assert answer.status_code == 202, answer.text
view = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/" + answer.json()["job"], headers=headers)
assert view.json()["status"] == "submitted", view.text
server.should_exit = True
print("api stack ok")
"""


@needs_sandbox
def test_api_stack_runs_under_the_api_units_seccomp_sandbox(tmp_path: Path) -> None:
    """uvicorn (asyncio, its socket), FastAPI/pydantic-core, the streamed multipart upload and the job
    store under the API unit's SystemCallFilter=, MemoryDenyWriteExecute= and RestrictAddressFamilies=."""
    result = run_sandboxed("lipsyncd-api.service", API_CHILD, str(tmp_path / "share"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "api stack ok" in result.stdout


def test_render_workers_are_instances_of_a_template() -> None:
    """lipsyncd-render@N.service runs render worker N (`%i` reaches the command); the target starts slot 0
    and each further GPU's worker is enabled as its own instance."""
    render = dict(unit_lines("lipsyncd-render@.service"))
    assert render["ExecStart"].endswith(" render --config /etc/lipsyncd/lipsyncd.yaml --slot %i")
    assert (render["WantedBy"], render["DefaultInstance"]) == ("lipsyncd.target", "0")


def test_upload_workers_beyond_the_first_are_instances_of_a_template_hardened_like_it() -> None:
    """lipsyncd-upload@N.service runs upload worker N (`%i` reaches the command) and differs from
    lipsyncd-upload.service (worker 0) in nothing else: the same sandbox, credentials, ordering and
    limits. It has no default instance, since worker 0 is the plain unit the target starts."""
    plain, template = unit_lines("lipsyncd-upload.service"), unit_lines("lipsyncd-upload@.service")
    assert [k for k, _ in template] == [k for k, _ in plain]  # same keys, same order (repeated ones too)
    differ = {k: (a, b) for (k, a), (_, b) in zip(plain, template, strict=True) if a != b}
    command = dict(plain)["ExecStart"]
    assert differ == {
        "Description": (
            "lipsyncd upload watcher (outputs -> object storage and links)",
            "lipsyncd upload worker %i (outputs -> object storage and links)",
        ),
        "ExecStart": (command, command + " --slot %i"),
    }
    assert dict(template)["WantedBy"] == "lipsyncd.target"
    assert "DefaultInstance" not in dict(template)
