"""The seccomp filter the worker installs before it runs untrusted code, built with ctypes.

`_deny_syscalls` makes execve, execveat, ptrace, process_vm_*, bpf, perf_event_open,
userfaultfd, the keyring calls, io_uring, mount, umount2, pivot_root, chroot, unshare,
setns and kexec_* fail with EPERM, and kills a process using a foreign ABI (i386, x32);
machines other than x86-64 and aarch64 are refused (it raises). `_prctl` is the raw
prctl(2) call, which the supervisor also uses to make itself undumpable.

Shipped into the harness as source (`harness._SHIPPED`): the standard library only, no
libseccomp. This module does not set resource limits (`harness._set_limits`) and is no
protection against kernel exploits.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Any

_DENIED_SYSCALLS = (  # (name, x86-64 number, aarch64 number): failing with EPERM
    ("execve", 59, 221),
    ("execveat", 322, 281),
    ("ptrace", 101, 117),
    ("process_vm_readv", 310, 270),
    ("process_vm_writev", 311, 271),
    ("bpf", 321, 280),
    ("perf_event_open", 298, 241),
    ("userfaultfd", 323, 282),
    ("keyctl", 250, 219),
    ("add_key", 248, 217),
    ("request_key", 249, 218),
    ("io_uring_setup", 425, 425),
    ("io_uring_enter", 426, 426),
    ("io_uring_register", 427, 427),
    ("unshare", 272, 97),
    ("setns", 308, 268),
    ("mount", 165, 40),
    ("umount2", 166, 39),
    ("pivot_root", 155, 41),
    ("chroot", 161, 51),
    ("kexec_load", 246, 104),
    ("kexec_file_load", 320, 294),
)
_SECCOMP_DENY = {  # machine: (AUDIT_ARCH_*, denied syscall numbers)
    "x86_64": (0xC000003E, tuple(row[1] for row in _DENIED_SYSCALLS)),
    "aarch64": (0xC00000B7, tuple(row[2] for row in _DENIED_SYSCALLS)),
}


def _prctl(*args: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    values = [ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]
    if libc.prctl(*values) != 0:
        raise OSError(ctypes.get_errno(), f"prctl{args[:1]} failed")


def _deny_syscalls() -> None:
    """Install a seccomp filter: the syscalls in `_SECCOMP_DENY` fail with EPERM, a foreign
    ABI (i386, x32) kills the process. Refuses (raises) on other machines."""
    arch, numbers = _SECCOMP_DENY[os.uname().machine]
    checks = [(0x15, n) for n in numbers]  # BPF_JMP | BPF_JEQ | BPF_K
    if arch == 0xC000003E:
        checks.insert(0, (0x35, 0x40000000))  # BPF_JGE: the x32 ABI
    count = len(checks)
    program = [(0x20, 0, 0, 4), (0x15, 1, 0, arch), (0x06, 0, 0, 0x80000000), (0x20, 0, 0, 0)]
    program += [(code, count - i, 0, k) for i, (code, k) in enumerate(checks)]
    program += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 1)]  # allow, EPERM
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    _prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _prctl(22, 2, ctypes.byref(fprog), 0, 0)  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
