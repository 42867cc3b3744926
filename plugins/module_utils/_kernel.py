# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: thin wrappers over Linux syscalls (ctypes on libc) and /proc parsers.

Python 3.11 has no os.unshare/os.setns, and mount/pivot_root have no stdlib wrapper at all, so the few
syscalls the runtime needs are called through ctypes. Parsers take their file paths as arguments so unit
tests can feed fake /proc trees.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    import subprocess

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

# pivot_root has no glibc wrapper: syscall numbers per architecture.
_SYS_PIVOT_ROOT = {'x86_64': 155, 'aarch64': 41, 'riscv64': 41, 'ppc64le': 203, 'ppc64': 203,
                   's390x': 217, 'i686': 217, 'i386': 217, 'armv7l': 218}
_SYS_CAPSET = {'x86_64': 126, 'aarch64': 91, 'riscv64': 91, 'ppc64le': 184, 'ppc64': 184,
               's390x': 185, 'i686': 185, 'i386': 185, 'armv7l': 185}

_libc = None


def libc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL('libc.so.6', use_errno=True)
        except OSError:  # not glibc: ask the (slow) library search
            from ctypes.util import find_library  # here, not at the top: it imports subprocess (slow)
            _libc = ctypes.CDLL(find_library('c'), use_errno=True)
    return _libc


def _check(result, what):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, '%s: %s' % (what, os.strerror(err)))
    return result


def _b(value):
    return None if value is None else os.fsencode(value)


def unshare(flags):
    if hasattr(os, 'unshare'):
        os.unshare(flags)
    else:
        _check(libc().unshare(ctypes.c_int(flags)), 'unshare')


def setns(fd, nstype=0):
    if hasattr(os, 'setns'):
        os.setns(fd, nstype)
    else:
        _check(libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), 'setns')


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    _check(libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           'mount %s on %s' % (source or fstype, target))


def umount(target, flags=0):
    _check(libc().umount2(_b(target), ctypes.c_int(flags)), 'umount %s' % target)


def pivot_root(new_root, put_old):
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, 'pivot_root: unsupported architecture %s' % os.uname().machine)
    _check(libc().syscall(ctypes.c_long(number), _b(new_root), _b(put_old)), 'pivot_root')


def setdomainname(name):
    raw = name.encode()
    _check(libc().setdomainname(raw, ctypes.c_size_t(len(raw))), 'setdomainname')


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    return _check(libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                               ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), 'prctl(%d)' % option)


class _CapHeader(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32), ('inheritable', ctypes.c_uint32)]


def capset(effective, permitted, inheritable):
    """Set this thread's capability sets (64-bit masks) with _LINUX_CAPABILITY_VERSION_3."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xffffffff
        data[i].permitted = (permitted >> shift) & 0xffffffff
        data[i].inheritable = (inheritable >> shift) & 0xffffffff
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, 'capset: unsupported architecture %s' % os.uname().machine)
    _check(libc().syscall(ctypes.c_long(number), ctypes.byref(header), ctypes.byref(data)), 'capset')


def cap_last_cap(path='/proc/sys/kernel/cap_last_cap'):
    with open(path) as handle:
        return int(handle.read())


PR_SET_DUMPABLE = 4
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
DEVPTS_SUPER_MAGIC = 0x1cd1

# Syscalls added after the per-architecture tables were unified (Linux 5.1+): one number everywhere but alpha.
_SYS_OPEN_TREE = 428
_SYS_PIDFD_GETFD = 438
_SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


class _MountAttr(ctypes.Structure):
    _fields_ = [('attr_set', ctypes.c_uint64), ('attr_clr', ctypes.c_uint64), ('propagation', ctypes.c_uint64),
                ('userns_fd', ctypes.c_uint64)]


def open_tree_readonly(path):
    """An O_PATH fd (close-on-exec) on a detached, read-only, nosuid, nodev bind mount of the file ``path``.

    Executing through it (``os.execve(fd, ...)``) gives the new image an exe that cannot be reopened for writing
    (EROFS), and from which no directory is reachable (the mount's root is the file itself)."""
    return open_tree_clone(path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)


_SYS_MOVE_MOUNT = 429
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOUNT_ATTR_NOEXEC = 0x8


def open_tree_clone(path: str, attrs: int = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                    dir_fd: int = -100) -> int:
    """An fd (close-on-exec) on a detached bind mount of the single file or directory ``path`` (no submounts),
    with the mount attributes ``attrs`` set on it. The mount's root is ``path`` itself: nothing above it is
    reachable through it. ``move_mount_fd`` attaches it, also in another mount namespace (or after pivot_root)."""
    fd = _check(libc().syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(dir_fd), _b(path),
                               ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)), 'open_tree %s' % path)
    attr = _MountAttr(attrs, 0, 0, 0)
    try:
        _check(libc().syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(fd), b'', ctypes.c_uint(AT_EMPTY_PATH),
                              ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), 'mount_setattr %s' % path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def move_mount_fd(fd: int, target: str) -> None:
    """Attach the detached mount ``fd`` (``open_tree_clone``) at ``target`` of the caller's mount namespace."""
    _check(libc().syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(fd), b'', ctypes.c_int(-100), _b(target),
                          ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), 'move_mount %s' % target)


def fs_type(fd):
    """The filesystem magic (statfs f_type) of an open fd."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit; f_type is its first word
    _check(libc().fstatfs(ctypes.c_int(fd), buf), 'fstatfs')
    return ctypes.c_long.from_buffer(buf).value


def pidfd_getfd(pidfd, fd):
    """A duplicate (close-on-exec) of fd ``fd`` of the process behind ``pidfd`` (Linux 5.6+)."""
    return _check(libc().syscall(ctypes.c_long(_SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd),
                                 ctypes.c_uint(0)), 'pidfd_getfd')


def set_controlling_tty(fd):
    fcntl.ioctl(fd, TIOCSCTTY, 0)


def pty_pair(ptmx_fd):
    """Unlock the pty whose master is ``ptmx_fd`` and open its peer (TIOCGPTPEER: no path lookup of /dev/pts/N).
    Returns the peer fd (close-on-exec, not a controlling terminal)."""
    fcntl.ioctl(ptmx_fd, TIOCSPTLCK, struct.pack('i', 0))
    return _check(libc().ioctl(ctypes.c_int(ptmx_fd), ctypes.c_ulong(TIOCGPTPEER),
                               ctypes.c_int(os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)), 'TIOCGPTPEER')


def call_in_namespaces(ns_files, func):
    """Run ``func()`` in a forked child that joined the namespaces at ``ns_files`` (e.g. /proc/PID/ns/uts or a
    bind-mounted handle); return its JSON-serializable result. The caller's own namespaces never change.
    Raises OSError with the child's error message."""
    import json
    # imported here, like the one in no_writer: the entry's second stage imports this file with only module_utils
    # on sys.path, and calls neither
    from ansible_collections.vserver.core.plugins.module_utils._procfs import read_all
    fds = []
    read_end = write_end = None
    try:
        for path in ns_files:
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                for fd in fds:
                    setns(fd, 0)
                payload = {'ok': func()}
            except BaseException as exc:  # reported to the parent
                payload = {'error': str(exc) or exc.__class__.__name__}
            try:
                os.write(write_end, json.dumps(payload).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        write_end = None
        raw = read_all(read_end)
        os.waitpid(pid, 0)
    finally:
        for fd in fds + [read_end, write_end]:
            if fd is not None:
                os.close(fd)
    payload = json.loads(raw.decode() or '{"error": "namespace helper died"}')
    if 'error' in payload:
        raise OSError(payload['error'])
    return payload['ok']


# inode flags (chattr): unified files are immutable
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
FS_APPEND_FL = 0x00000020


def get_flags(fd: int) -> int:
    buf = bytearray(8)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    return struct.unpack_from('i', buf)[0]


def set_flags(fd, flags):
    buf = bytearray(8)
    struct.pack_into('i', buf, 0, flags)
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf, True)


def set_subreaper():
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def run(argv: list[str], check: bool = True, input: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command given as a list (never a shell string), with a pinned locale."""
    import subprocess  # here, not at the top: the vserver command's hot paths never run one
    environ = dict(os.environ if env is None else env)
    environ.update(LC_ALL='C', LANG='C')
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=environ, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise OSError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode,
                                                 (proc.stderr or proc.stdout).strip()))
    return proc


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]


def seccomp_load(program):
    """Install a classic BPF seccomp filter (packed ``struct sock_filter`` array) on this thread.

    Needs no_new_privs or CAP_SYS_ADMIN in the effective set at this moment; inherited across fork and exec."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(libc().prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                        ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)), 'seccomp filter')


# --- limits: bpf(2) for the cgroup v2 device program; loop images (util-linux mount, losetup, blkid) -------------
# Callers: _devices (the device program), _disk (a guest's disk image), _limits_parse (CapEff). No policy here: raw calls,
# OSError out.

_SYS_BPF = {'x86_64': 321, 'aarch64': 280, 'riscv64': 280, 'ppc64le': 361, 'ppc64': 361, 's390x': 351,
            'i686': 357, 'i386': 357, 'armv7l': 386}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6


def bpf(cmd, attr):
    """The raw bpf(2) syscall on the bytes of ``union bpf_attr``; returns (result, the attr bytes afterwards)."""
    import platform  # here: only cgroup v2 starts need it
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, 'bpf: unsupported architecture %s' % platform.machine())
    buf = ctypes.create_string_buffer(attr, len(attr))
    lib = libc()
    lib.syscall.restype = ctypes.c_long
    result = lib.syscall(ctypes.c_long(number), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, 'bpf(%d): %s' % (cmd, os.strerror(err)))
    return result, buf.raw


def bpf_prog_load(prog_type: int, attach_type: int, program: bytes, name: bytes, log_size: int = 0) -> int:
    """BPF_PROG_LOAD of ``program`` (instruction bytes, GPL): the program's fd. With ``log_size`` the
    verifier writes its log (log level 1) and a refusal raises OSError with that log's text appended."""
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b'GPL')
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = struct.pack('<IIQQIIQII16sII', prog_type, len(program) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1 if log_size else 0, log_size,
                       ctypes.addressof(log) if log_size else 0, 0, 0, name, 0, attach_type)
    try:
        return bpf(BPF_PROG_LOAD, attr + b'\0' * (128 - len(attr)))[0]
    except OSError as exc:
        if log is None:
            raise
        raise OSError(exc.errno, '%s %s' % (exc.strerror, log.value.decode(errors='replace').strip()[-2000:])) \
            from None


def bpf_prog_attach(target_fd, prog_fd, attach_type):
    """BPF_PROG_ATTACH (no flags: replaces the program attached there before)."""
    bpf(BPF_PROG_ATTACH, struct.pack('<IIIII', target_fd, prog_fd, attach_type, 0, 0) + b'\0' * 12)


def bpf_prog_query_count(target_fd, attach_type):
    """BPF_PROG_QUERY: how many programs of ``attach_type`` are attached to ``target_fd``."""
    ids = ctypes.create_string_buffer(64 * 4)
    attr = struct.pack('<IIIIQI', target_fd, attach_type, 0, 0, ctypes.addressof(ids), 64)
    raw = bpf(BPF_PROG_QUERY, attr + b'\0' * (64 - len(attr)))
    return struct.unpack_from('<I', raw[1], 24)[0]


def mount_loop(image, target):
    """Mount a filesystem image on ``target`` through a loop device (nodev)."""
    run(['mount', '-o', 'loop,nodev', image, target])


def loop_devices(image):
    """The loop devices backed by ``image`` (``losetup -j``)."""
    return run(['losetup', '-j', image, '-O', 'NAME', '-n']).stdout.split()


def loop_set_capacity(device):
    """Make a loop device see its backing file's new size (``losetup -c``)."""
    run(['losetup', '-c', device])


def blkid_type(path):
    """The filesystem type blkid finds in ``path``, or None."""
    return run(['blkid', '-o', 'value', '-s', 'TYPE', path], check=False).stdout.strip() or None


# --- unify: inode flags, FIDEDUPERANGE/FIEMAP, write leases, open-for-write scan ---------------------

FIDEDUPERANGE = 0xC0189436
FS_IOC_FIEMAP = 0xC020660B
DEDUPE_CHUNK = 16 << 20
# open a file of a guest tree to read it: never through a symlink, never block on a FIFO, never a tty
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, 'O_NOATIME', 0)
_DEDUPE_HEAD = struct.Struct('QQHHI')  # struct file_dedupe_range
_DEDUPE_INFO = struct.Struct('qQQiI')  # struct file_dedupe_range_info
_FIEMAP_HEAD = struct.Struct('QQIIII')
_FIEMAP_EXTENT = struct.Struct('QQQQQIIII')


def path_flags(path: str) -> int:
    """The inode flags of ``path`` (not followed if it is a symlink)."""
    fd = os.open(path, O_READ)
    try:
        return get_flags(fd)
    finally:
        os.close(fd)


def set_immutable(fd: int, on: bool) -> bool:
    """Set or clear the immutable flag; returns True if it changed."""
    flags = get_flags(fd)
    new = (flags | FS_IMMUTABLE_FL) if on else (flags & ~FS_IMMUTABLE_FL)
    if new == flags:
        return False
    set_flags(fd, new)
    return True


def _dedupe_once(src_fd, dst_fd, offset, length):
    """One FIDEDUPERANGE call: (bytes deduped, status) with status 0 same, 1 differs, < 0 -errno."""
    buf = bytearray(_DEDUPE_HEAD.pack(offset, length, 1, 0, 0) + _DEDUPE_INFO.pack(dst_fd, offset, 0, 0, 0))
    fcntl.ioctl(src_fd, FIDEDUPERANGE, buf, True)
    return _DEDUPE_INFO.unpack_from(buf, _DEDUPE_HEAD.size)[2:4]


def dedupe(src_fd: int, dst_fd: int, length: int) -> int:
    """FIDEDUPERANGE the whole file; returns bytes deduped. Raises OSError (EOPNOTSUPP, EBADE if differing)."""
    done = 0
    while done < length:
        got, status = _dedupe_once(src_fd, dst_fd, done, min(DEDUPE_CHUNK, length - done))
        if status < 0:
            raise OSError(-status, os.strerror(-status))
        if status == 1:
            raise OSError(errno.EBADE, 'contents differ')
        if got == 0:
            raise OSError(errno.EIO, 'dedupe made no progress')
        done += got
    return done


def reflink_supported(fd: int, size: int) -> bool:
    """Probe without changing anything: a dedupe of a file onto itself is refused with EINVAL (overlap)
    where the filesystem can share extents and with EOPNOTSUPP/ENOTTY where it cannot."""
    try:
        status = _dedupe_once(fd, fd, 0, max(1, min(size, 4096)))[1]
    except OSError as exc:
        status = -exc.errno
    return status not in (-errno.EOPNOTSUPP, -errno.ENOTTY, -errno.EXDEV, -errno.ENOSYS)


def extents(fd: int, max_extents: int = 256):
    """Physical extents (logical, physical, length) of an open file, via FIEMAP; None if unsupported."""
    buf = bytearray(_FIEMAP_HEAD.size + _FIEMAP_EXTENT.size * max_extents)
    _FIEMAP_HEAD.pack_into(buf, 0, 0, 0xFFFFFFFFFFFFFFFF, 0x1, 0, max_extents, 0)  # FIEMAP_FLAG_SYNC
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    except OSError:
        return None
    count = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
    return tuple(_FIEMAP_EXTENT.unpack_from(buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)[:3]
                 for i in range(count))


def no_writer(fd: int, proc: str = '/proc') -> bool:
    """True if no process holds the inode open for writing (nor maps it shared-writable): a read lease is
    granted only then. Leases unsupported here: the /proc scan."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return False
        from ansible_collections.vserver.core.plugins.module_utils._procfs import open_for_write
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) not in open_for_write(proc)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


# --- links, terminals, inotify: the ioctls of the runtime, the entry relay and the log watcher -------------------

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_FLAGS = struct.Struct('16sH14x')  # struct ifreq with ifr_flags


def link_up(name: bytes = b'lo') -> None:
    """Set the link ``name`` of this process's network namespace up (SIOCSIFFLAGS on a datagram socket)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name, 0)))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _IFREQ_FLAGS.pack(name, flags | IFF_UP))


def copy_winsize(src_fd: int, dst_fd: int) -> None:
    """The window size of terminal ``src_fd`` onto terminal ``dst_fd`` (TIOCGWINSZ, TIOCSWINSZ)."""
    import termios
    fcntl.ioctl(dst_fd, termios.TIOCSWINSZ, fcntl.ioctl(src_fd, termios.TIOCGWINSZ, b'\0' * 8))


IN_MODIFY = 0x00000002
IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK


def inotify_watch(path: str, mask: int) -> int:
    """A non-blocking, close-on-exec inotify fd watching ``path`` for the events of ``mask``."""
    fd = libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, 'inotify: %s' % os.strerror(err))
    if libc().inotify_add_watch(fd, os.fsencode(path), mask) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, 'inotify on %s: %s' % (path, os.strerror(err)))
    return fd


_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall tables were unified)
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x01, 0x02, 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """An fd (close-on-exec) on ``path`` resolved inside the tree of ``root_fd`` as if it were the root (Linux 5.6+
    openat2 with RESOLVE_IN_ROOT: `..` and absolute symlinks stay inside it, no magic links, no other mount): what a
    guest planted there can never lead out of its tree."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    return _check(libc().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd), _b(path), ctypes.byref(how),
                                 ctypes.c_size_t(ctypes.sizeof(how))), 'openat2 %s' % path)
