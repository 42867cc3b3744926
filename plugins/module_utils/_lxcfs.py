# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: a guest's view of its own limits in /proc, from LXCFS (floor 2, a mechanism).

LXCFS (a FUSE daemon on the host, Debian package ``lxcfs``) answers reads of its ``proc/meminfo``, ``proc/cpuinfo``...
for the cgroup of the reading process. A guest start takes, before pivot_root, one detached read-only bind mount
(``open_tree(OPEN_TREE_CLONE)``) of each file below (``take``) and, once the guest's /proc is mounted, attaches
them over the guest's own entries (``attach``). Each mount's root is the file itself: nothing else of the LXCFS
directory (its ``cgroup`` tree, other files) nor of the host is reachable through it (docs/security.md).

When LXCFS stops, those mounts answer ENOTCONN. ``reattach`` puts fresh ones into a running guest's mount
namespace (vserver-supervise does it when LXCFS's mount changes; docs/guest-view.md).
"""

from __future__ import annotations

import errno
import os

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K, _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import DEFAULTS_FILE, read_defaults_file

DEFAULT_DIR = '/var/lib/lxcfs'
ENV = 'VSERVER_LXCFS_DIR'
FSTYPE = 'fuse.lxcfs'
# What a guest gets from LXCFS, relative to its mount point; the guest path is '/' + the same. Not LXCFS's
# sys/devices/system/cpu/online: LXCFS 5.0 serves it through the page cache (no direct_io), so one guest reads what
# another read before, cut to that one's length (seen: "0-" for "0-1" after a guest pinned to "0").
FILES = ('proc/meminfo', 'proc/cpuinfo', 'proc/stat', 'proc/loadavg', 'proc/uptime', 'proc/swaps',
         'proc/diskstats')
AT_SYMLINK_NOFOLLOW = 0x100
_MAX_STACK = 8


def directory(defaults_file: str = DEFAULTS_FILE) -> str:
    """The host's LXCFS mount point: VSERVER_LXCFS_DIR from the environment or the host's defaults file (the host
    role's ``host_lxcfs_dir``), else /var/lib/lxcfs."""
    value = os.environ.get(ENV) or read_defaults_file(defaults_file, (ENV,)).get(ENV) or DEFAULT_DIR
    return value if os.path.isabs(value) else DEFAULT_DIR


def enabled(doc: dict) -> bool:
    """The guest's ``lxcfs`` context key (absent: on)."""
    return doc.get('lxcfs') is not False


def mount_id(path: str | None = None, mountinfo: str = '/proc/self/mountinfo') -> int | None:
    """The mount id of a running LXCFS at ``path`` (a fuse.lxcfs mount exactly there), else None. A restart of
    LXCFS mounts anew: the id changes."""
    path = os.path.realpath(path or directory())
    found = None
    try:
        mounts = P.read_mountinfo(mountinfo)
    except OSError:
        return None
    for entry in mounts:  # the last mount at the path is the one seen
        if entry['mountpoint'] == path:
            found = entry['mount_id'] if entry['fstype'] == FSTYPE else None
    return found


def unavailable(path: str | None = None) -> str | None:
    """None when an LXCFS is mounted at ``path``, else why not (for the start's warning). Whether it answers shows
    in ``take`` (a dead one: ENOTCONN); nothing else is read from it here."""
    path = path or directory()
    if mount_id(path) is None:
        return 'LXCFS is not running (no %s mount at %s)' % (FSTYPE, path)
    return None


def take(path: str | None = None) -> list[tuple[int, str]]:
    """Detached read-only, nosuid, nodev, noexec bind mounts of each of FILES that LXCFS offers at ``path``:
    ``[(fd, guest path)]`` (close-on-exec). The caller closes them (``attach`` does)."""
    path = path or directory()
    taken = []
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for rel in FILES:
            try:
                fd = K.open_tree_clone(rel, dir_fd=dir_fd)
            except FileNotFoundError:
                continue  # e.g. an LXCFS built without the sys/ view
            except BaseException:
                for fd, dummy in taken:
                    os.close(fd)
                raise
            taken.append((fd, '/' + rel))
    finally:
        os.close(dir_fd)
    return taken


def attacher(taken: list[tuple[int, str]]):
    """The guest init's child step that attaches ``taken`` (named for the start's error report)."""
    def lxcfs_view(doc):  # pylint: disable=unused-argument
        attach(taken)
    return lxcfs_view


def _stale(target):
    """Is ``target`` an LXCFS file whose daemon is gone (ENOTCONN), or an LXCFS file at all (FUSE)?"""
    try:
        fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    try:
        return K.fs_type(fd) == FUSE_SUPER_MAGIC
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    finally:
        os.close(fd)


FUSE_SUPER_MAGIC = 0x65735546


def attach(taken: list[tuple[int, str]], replace: bool = False) -> list[str]:
    """In the guest's mount namespace (its /proc and /sys mounted): put each taken mount over its guest path.
    ``replace``: first detach what an earlier LXCFS left there. Closes the fds; returns the paths attached."""
    done = []
    try:
        for fd, target in taken:
            if not os.path.exists(target) and not replace:
                continue
            for dummy in range(_MAX_STACK if replace else 0):
                if not _stale(target):
                    break
                K.umount(target, K.MNT_DETACH)
            K.move_mount_fd(fd, target)
            done.append(target)
    finally:
        for fd, dummy in taken:
            os.close(fd)
    return done


def reattach(proc_fd: int, path: str | None = None) -> list[str]:
    """Fresh LXCFS mounts into the mount namespace of the running guest whose init is ``proc_fd`` (its /proc/PID
    directory fd), over the stale ones of a stopped or restarted LXCFS. Returns the guest paths attached."""
    taken = take(path)
    try:
        return K.call_in_namespaces(['/proc/self/fd/%d/ns/mnt' % proc_fd], lambda: attach(taken, replace=True))
    finally:
        for fd, dummy in taken:
            try:
                os.close(fd)
            except OSError:
                pass


def probe_open(path: str | None = None) -> int | None:
    """An fd on the running LXCFS's root directory (None: none runs). It stays tied to that LXCFS instance:
    ``probe_alive`` fails once the instance is gone, even when a new one mounted at the same place meanwhile
    (mount ids and device numbers are reused, so they cannot tell)."""
    path = path or directory()
    if mount_id(path) is None:
        return None
    try:  # a detached mount of its own: an fd on LXCFS's mount itself would keep LXCFS's unmount at exit busy
        return K.open_tree_clone(path)
    except OSError:
        return None


def probe_alive(fd: int) -> bool:
    """Does the LXCFS instance behind ``probe_open``'s fd still answer? (A dead one: ENOTCONN.)"""
    try:
        os.fstat(fd)
        os.stat('proc', dir_fd=fd)
        return True
    except OSError:
        return False
