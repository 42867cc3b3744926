# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: readers and parsers of /proc (stat, status, mountinfo, namespaces, open files).

No system call wrappers here (those are _kernel's, through ctypes): the entry fast path and the listings read
/proc without loading ctypes. Parsers take their file paths as arguments so unit tests can feed fake /proc trees.
"""

from __future__ import annotations

import os


def read_all(fd: int) -> bytes:
    """Read a pipe until EOF (every writer closed it, e.g. by exec with close-on-exec, or by exiting)."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


def clock_ticks():
    return os.sysconf('SC_CLK_TCK')


def read_stat(pid, proc='/proc'):
    """Return (state, ppid, starttime_ticks, utime+stime ticks) for a pid, or None if it is gone."""
    try:  # a process name is any bytes its owner chose (a guest's): never a decode error here
        with open('%s/%d/stat' % (proc, pid), errors='surrogateescape') as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return parse_stat(raw)


def read_at(proc_fd, name):
    """A file of one process read through its open /proc/PID directory fd (text); None once it is gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return read_all(fd).decode(errors='replace') or None
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)


def read_stat_at(proc_fd):
    """read_stat through an open /proc/PID directory fd; None if that process is gone."""
    raw = read_at(proc_fd, 'stat')
    return parse_stat(raw) if raw else None


def parse_stat(raw):
    rest = raw[raw.rindex(')') + 2:].split()
    # rest[0] is field 3 (state); starttime is field 22 -> rest[19]; utime/stime fields 14/15.
    return rest[0], int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12])


def parse_status(raw):
    out = {}
    for line in raw.splitlines():
        key, dummy, value = line.partition(':')
        out[key] = value.strip()
    return out


def read_status(pid, proc='/proc'):
    try:
        with open('%s/%d/status' % (proc, pid), errors='surrogateescape') as handle:
            return parse_status(handle.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def uptime(proc='/proc'):
    with open(proc + '/uptime') as handle:
        return float(handle.read().split()[0])


def boottime_now():
    return __import__('time').clock_gettime(7)  # CLOCK_BOOTTIME


def pids(proc='/proc'):
    out = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            out.append(int(entry))
    return sorted(out)


def parse_mountinfo(raw):
    """Parse /proc/PID/mountinfo text into dicts: mount_id, parent, root, mountpoint, options, fstype, source, super."""
    mounts = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        left, dummy, right = line.partition(' - ')
        fields = left.split()
        tail = right.split()
        mounts.append({
            'mount_id': int(fields[0]), 'parent': int(fields[1]), 'dev': fields[2],
            'root': _unescape(fields[3]), 'mountpoint': _unescape(fields[4]), 'options': fields[5],
            'fstype': tail[0], 'source': _unescape(tail[1]) if len(tail) > 1 else '',
            'super': tail[2] if len(tail) > 2 else '',
        })
    return mounts


def read_mountinfo(path: str = '/proc/self/mountinfo') -> list[dict]:
    with open(path) as handle:
        return parse_mountinfo(handle.read())


def _unescape(value):
    return value.encode().decode('unicode_escape') if '\\' in value else value


def ns_inode(pid, kind, proc='/proc'):
    try:
        return os.readlink('%s/%d/ns/%s' % (proc, pid, kind))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def has_effective_cap(bit, proc_root='/proc'):
    """This process has capability ``bit`` in its effective set (CapEff of /proc/self/status)."""
    with open(os.path.join(proc_root, 'self/status')) as handle:
        for line in handle:
            if line.startswith('CapEff:'):
                return bool(int(line.split()[1], 16) & (1 << bit))
    return False


def _fdinfo_flags(info):
    """The octal ``flags:`` of a /proc/PID/fdinfo/FD text (bytes); ValueError if it has none."""
    at = info.find(b'flags:')
    if at < 0:
        raise ValueError('no flags')
    return int(info[at + 6:].split(None, 1)[0], 8)


def _writers_of(proc, pid, found):
    """Add the (dev, ino) of the regular files process ``pid`` holds open for writing to ``found``."""
    fddir = '%s/%s/fd' % (proc, pid)
    try:
        fds = os.listdir(fddir)
    except OSError:
        return
    for fd in fds:
        try:
            if not os.readlink('%s/%s' % (fddir, fd)).startswith('/'):
                continue
            with open('%s/%s/fdinfo/%s' % (proc, pid, fd), 'rb') as handle:
                flags = _fdinfo_flags(handle.read())
            if flags & (os.O_WRONLY | os.O_RDWR):
                st = os.stat('%s/%s' % (fddir, fd))
                if (st.st_mode & 0o170000) == 0o100000:  # S_ISREG
                    found.add((st.st_dev, st.st_ino))
        except (OSError, ValueError, IndexError):
            continue


def _shared_writable_maps(proc, pid, found):
    """Add the (dev, ino) of the files process ``pid`` maps shared and writable to ``found``."""
    try:
        with open('%s/%s/maps' % (proc, pid), 'rb') as handle:
            for line in handle:
                parts = line.split(None, 5)
                if len(parts) >= 5 and parts[1][1:2] == b'w' and parts[1][3:4] == b's' and parts[4] != b'0':
                    major, minor = parts[3].split(b':')
                    found.add((os.makedev(int(major, 16), int(minor, 16)), int(parts[4])))
    except (OSError, ValueError):
        pass


def open_for_write(proc: str = '/proc') -> set:
    """(dev, ino) of every regular file some process holds open for writing or maps shared-writable."""
    found = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        _writers_of(proc, pid, found)
        _shared_writable_maps(proc, pid, found)
    return found
