"""Run a command under the seccomp parts of a unit file's sandbox, the way systemd would set them up.

    python tests/functional/unit_sandbox.py systemd/lipsyncd-render.service -- python -c '...'

PID 1 is not systemd on the build machines, so the units cannot be started for real. This helper
reproduces the parts that decide whether our code runs at all: SystemCallFilter= (with
SystemCallErrorNumber=), MemoryDenyWriteExecute= and RestrictAddressFamilies=, each as its own
seccomp filter through libseccomp, exactly the syscalls and argument checks systemd 252 installs.
Mount namespaces, users, devices and IP filters are not reproduced. Test-only code.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
CMP_EQ, CMP_GE, CMP_MASKED_EQ = 4, 5, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
AF_MAX = 64
# Always allowed by systemd whatever the filter says (systemd.exec(5), SystemCallFilter=).
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn", "@default"}


def act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class Filter:
    """One seccomp filter (systemd installs several; the kernel applies the strictest answer)."""

    def __init__(self, lib: ctypes.CDLL, default_action: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default_action)

    def add(self, action: int, name: str, *conditions: tuple[int, int, int, int]) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not a syscall on this architecture (e.g. mmap2 on x86-64)
        array = (ArgCmp * max(len(conditions), 1))(*(ArgCmp(*c) for c in conditions))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(conditions), array)
        if rc < 0 and rc != -errno.EEXIST:
            raise OSError(-rc, f"seccomp_rule_add({name})")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """[Service] assignments in order; repeated keys accumulate, an empty value resets."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings[key] = [] if not value else [*settings.get(key, []), value]
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """@group -> members, as this systemd defines them (`systemd-analyze syscall-filter`)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True)
    groups: dict[str, list[str]] = {}
    current = ""
    for line in out.stdout.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif line.strip() and not line.strip().startswith("#") and current:
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    result: set[str] = set()
    for name in names:
        result |= expand(groups[name], groups) if name.startswith("@") else {name}
    return result


def allowed_syscalls(lines: list[str], groups: dict[str, list[str]]) -> set[str]:
    """The allow list the SystemCallFilter= lines describe (the first line must be an allow list)."""
    assert lines, "only allow-list filters are reproduced"
    assert not lines[0].startswith("~"), "only allow-list filters are reproduced"
    allowed = expand(sorted(IMPLICIT), groups)
    for line in lines:
        names = [n.split(":")[0] for n in line.lstrip("~").split()]
        if line.startswith("~"):
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    return allowed | expand(sorted(IMPLICIT), groups)


def syscall_filter(lib: ctypes.CDLL, settings: dict[str, list[str]]) -> Filter | None:
    lines = settings.get("SystemCallFilter", [])
    if not lines:
        return None
    errno_name = (settings.get("SystemCallErrorNumber") or ["kill"])[-1]
    default = ACT_KILL_PROCESS if errno_name == "kill" else act_errno(getattr(errno, errno_name))
    result = Filter(lib, default)
    for name in sorted(allowed_syscalls(lines, syscall_groups())):
        result.add(ACT_ALLOW, name)
    return result


def mdwe_filter(lib: ctypes.CDLL) -> Filter:
    """MemoryDenyWriteExecute=yes as systemd 252 builds it (seccomp_memory_deny_write_execute)."""
    result = Filter(lib, ACT_ALLOW)
    deny = act_errno(errno.EPERM)
    wx = PROT_WRITE | PROT_EXEC
    result.add(deny, "mmap", (2, CMP_MASKED_EQ, wx, wx))
    for name in ("mprotect", "pkey_mprotect"):
        result.add(deny, name, (2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    result.add(deny, "shmat", (2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    return result


def family_filter(lib: ctypes.CDLL, families: list[str]) -> Filter:
    """RestrictAddressFamilies= allow list: socket() with any other family fails with EAFNOSUPPORT."""
    allowed = {int(getattr(socket, name)) for line in families for name in line.split()}
    result = Filter(lib, ACT_ALLOW)
    deny = act_errno(errno.EAFNOSUPPORT)
    for family in range(AF_MAX):
        if family not in allowed:
            result.add(deny, "socket", (0, CMP_EQ, family, 0))
    result.add(deny, "socket", (0, CMP_GE, AF_MAX, 0))
    return result


def apply(unit: Path) -> list[str]:
    """Install the unit's seccomp filters on this process; returns what was applied."""
    settings = unit_settings(unit)
    lib = _lib()
    filters: list[tuple[str, Filter | None]] = []
    if (settings.get("MemoryDenyWriteExecute") or ["no"])[-1] in ("yes", "true", "1", "on"):
        filters.append(("MemoryDenyWriteExecute", mdwe_filter(lib)))
    if settings.get("RestrictAddressFamilies"):
        filters.append(("RestrictAddressFamilies", family_filter(lib, settings["RestrictAddressFamilies"])))
    # Last: seccomp() itself is not in @system-service, so nothing can be loaded after this one.
    filters.append(("SystemCallFilter", syscall_filter(lib, settings)))
    ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as systemd implies with User=
    applied = []
    for name, built in filters:
        if built is not None:
            built.load()
            applied.append(name)
    return applied


def main(argv: list[str]) -> None:
    unit, separator, *command = argv
    assert separator == "--", "usage: unit_sandbox.py UNIT -- COMMAND..."
    assert command, "usage: unit_sandbox.py UNIT -- COMMAND..."
    applied = apply(Path(unit))
    print(f"unit_sandbox: {' '.join(applied)}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
