"""The sandbox's seccomp filter: the system calls no sandboxed process may make, compiled to a BPF program on the
host with libseccomp (through ``pyseccomp``, its ctypes binding) and loaded inside by ``confine``.

Denied (``EPERM``): everything that changes mounts or namespaces (``mount``, ``umount2``, ``pivot_root``,
``chroot``, the new mount API, ``setns``, ``unshare``, namespace flags of ``clone``), that reaches into another
process (``ptrace``, ``process_vm_readv``/``writev``, ``pidfd_getfd``, ``kcmp``), loads code or filters into the
kernel (``bpf``, ``kexec_*``, modules), opens files by handle (``open_by_handle_at``), the kernel keyring, perf
events, ``userfaultfd``, ``io_uring`` (its requests bypass this filter), ``TIOCSTI`` (typing into a terminal),
swap, reboot, clocks and accounting. ``clone3`` answers ``ENOSYS`` (its flags cannot be inspected here), so the C
library falls back to ``clone``, whose flags can. System calls of another architecture (32-bit ``int 0x80`` on
x86-64) kill the process: libseccomp's filter only admits the native one.
"""

from __future__ import annotations

import errno
import functools
import os

DENIED = (
    # mounts and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "setns", "unshare", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "process_madvise",
    # the kernel itself
    "bpf", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "perf_event_open",
    "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "iopl", "ioperm", "swapon", "swapoff", "reboot",
    "syslog", "acct", "quotactl", "quotactl_fd", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "nfsservctl", "vhangup", "personality", "uselib", "fanotify_init",
)
# clone(2) flags that make new namespaces.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
TIOCSTI = 0x5412


class SeccompUnavailable(RuntimeError):
    """libseccomp (or its binding) is missing, so no filter can be built."""


@functools.lru_cache(maxsize=1)
def filter_program() -> bytes:
    """The filter as a classic BPF program (what ``prctl(PR_SET_SECCOMP)`` and bubblewrap's ``--seccomp`` load)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # OSError: the binding is there, libseccomp.so.2 is not
        raise SeccompUnavailable(f"libseccomp is not available ({exc}); install libseccomp2 and pyseccomp") from None
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        try:
            rules.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):  # a call this architecture does not have
            pass
    for flag in NAMESPACE_FLAGS:
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    with os.fdopen(os.memfd_create("opencwm-seccomp-build", os.MFD_CLOEXEC), "w+b") as buffer:
        rules.export_bpf(buffer)
        buffer.seek(0)
        return buffer.read()


def program_fd() -> int:
    """A readable descriptor holding the filter (a sealed in-memory file), for a child to inherit."""
    program = filter_program()
    fd = os.memfd_create("opencwm-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd
