# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: de-unification of one guest (floor 3, with _unify): plan and executors.

Every inode the guest shares with names outside its tree gets a private copy (owner, mode, xattrs incl.
security.capability, atime/mtime kept; the guest's internal hardlinks kept), written to a temp name, synced and
renamed over; the immutable flags we set on inodes it alone holds are cleared.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Dict, List, NamedTuple, Tuple

from ansible_collections.vserver.core.plugins.module_utils._kernel import FS_IMMUTABLE_FL, get_flags, set_immutable
from ansible_collections.vserver.core.plugins.module_utils._unify import TMP_PREFIX, Node, Stats, node_flags, \
    open_node, outside_counts, reason
from ansible_collections.vserver.core.plugins.module_utils._unify_act import Changes, save_index
from ansible_collections.vserver.core.plugins.module_utils._unify_freeze import FREEZE_BATCH, Freezer
from ansible_collections.vserver.core.plugins.module_utils._unify_index import Index

COPY_BATCH = 256  # private copies written (and synced once) before they are renamed over


class AbsentPlan(NamedTuple):
    """``shared``: inodes with names outside the guest (each gets a private copy); ``ours``: inodes only the
    guest holds that we made immutable (the flag goes)."""
    shared: List[Node]
    ours: List[Node]


class Copy(NamedTuple):
    """A private copy written under a temp name: directory index, temp name, open fd."""
    dir: int
    name: str
    fd: int


def plan_absent(nodes) -> AbsentPlan:
    """What de-unifying the scanned guest changes."""
    return AbsentPlan([n for n in nodes if n.nlink > len(n.paths)],
                      [n for n in nodes if n.nlink <= len(n.paths) and n.ours])


def _copy_bytes(sfd, dfd, left):
    while left > 0:
        try:
            n = os.copy_file_range(sfd, dfd, left)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.sendfile(dfd, sfd, None, left)
        if n == 0:
            break
        left -= n


def copy_private(node: Node, stats: Stats) -> Copy:
    """Write a private copy of ``node`` under a temp name next to its first path; nothing is renamed yet."""
    dirs = node.dirs
    sfd = open_node(node)
    if sfd is None:
        raise OSError(errno.ENOENT, 'vanished')
    entry = node.paths[0]
    ddir = dirs.open(entry.dir)
    tmp = TMP_PREFIX + secrets.token_hex(8) + '.copy'
    dfd = None
    try:
        st = os.fstat(sfd)
        dfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=ddir)
        _copy_bytes(sfd, dfd, st.st_size)
        # chown first (it clears setuid bits and file capabilities), then xattrs, then the mode
        os.fchown(dfd, st.st_uid, st.st_gid)
        for name in os.listxattr(sfd):
            os.setxattr(dfd, name, os.getxattr(sfd, name))
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        stats.bytes_copied += st.st_size
        return Copy(entry.dir, tmp, dfd)
    except BaseException:
        if dfd is not None:
            os.close(dfd)
        try:
            os.unlink(tmp, dir_fd=ddir)
        except OSError:
            pass
        raise
    finally:
        os.close(sfd)
        dirs.release(entry.dir, ddir)


def _put(dfd, entry, copy, first):
    """Make ``entry`` name the copy: the temp name itself for the first path in its directory, else a link."""
    if first and entry.dir == copy.dir:
        os.rename(copy.name, entry.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return
    link = TMP_PREFIX + secrets.token_hex(8) + '.link'
    os.link('/proc/self/fd/%d' % copy.fd, link, dst_dir_fd=dfd, follow_symlinks=True)
    try:
        os.rename(link, entry.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        os.unlink(link, dir_fd=dfd)
        raise


def install_copy(node: Node, copy: Copy, changes: Changes) -> int:
    """Rename the private copy over the guest's paths of ``node`` (internal hardlinks kept). Returns paths done."""
    dirs = node.dirs
    fd = open_node(node)
    if fd is None:
        raise OSError(errno.ENOENT, 'vanished')
    restore = False
    try:
        if get_flags(fd) & FS_IMMUTABLE_FL:
            set_immutable(fd, False)  # else the rename over it is refused
            restore = True
        moved = []
        for entry in list(node.paths):
            dfd = dirs.open(entry.dir)
            try:
                st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != (node.dev, node.ino):
                    continue
                _put(dfd, entry, copy, not moved)
                moved.append(entry)
            finally:
                dirs.release(entry.dir, dfd)
        if restore and os.fstat(fd).st_nlink > 1:
            set_immutable(fd, True)  # still shared by other guests
        node.flags = get_flags(fd)  # what the index keeps (with ``ours``) for the next run
        node.after = os.fstat(fd)
        node.paths = [e for e in node.paths if e not in moved]
        if node.after.st_nlink == 0:
            node.alive = False
            changes.dropped.add((node.dev, node.ino))
        else:
            changes.touched.add(node)
        return len(moved)
    finally:
        os.close(fd)


def _discard(node, copy):
    """Remove a copy that was not renamed over (failed, or no freeze)."""
    os.close(copy.fd)
    try:
        dfd = node.dirs.open(copy.dir)
    except OSError:
        return
    try:
        os.unlink(copy.name, dir_fd=dfd)
    except OSError:
        pass
    finally:
        node.dirs.release(copy.dir, dfd)


def _install_batch(batch, stats, changes, guard):
    """Install the copies of ``batch`` ((node, Copy) pairs). Returns paths done.

    The shared inodes lose their flag for the renames: every running guest (the sharers may be any of them,
    this one included) stays frozen until it is back, FREEZE_BATCH copies per freeze."""
    copied = 0
    os.sync()  # the copies' data is on disk before a rename makes them the file
    for i in range(0, len(batch), FREEZE_BATCH):
        part = batch[i:i + FREEZE_BATCH]
        try:
            with guard.frozen():
                for node, copy in part:
                    try:
                        copied += install_copy(node, copy, changes)
                    except OSError as exc:
                        stats.skip(reason(exc), len(node.paths))
        except OSError as exc:  # a guest did not freeze: nothing of this part was renamed
            stats.skip(reason(exc), sum(len(node.paths) for node, dummy in part))
    for node, copy in batch:  # a copy not renamed (failed, or no freeze) goes
        _discard(node, copy)
    return copied


def _unprotect(ours, stats, changes):
    unprotected = 0
    for node in ours:
        fd = open_node(node)
        if fd is None:
            continue
        try:
            if set_immutable(fd, False):
                unprotected += 1
            node.ours = False
            node.flags = get_flags(fd)
            changes.touched.add(node)
        except OSError as exc:
            stats.skip(reason(exc))
        finally:
            os.close(fd)
    return unprotected


def deunify(nodes: List[Node], index: Index, stats: Stats, check_mode: bool,
            guard: Freezer) -> Tuple[int, int, Dict[str, int]]:
    """Carry out ``plan_absent``. Returns (paths given a private copy, inodes unprotected, counts after)."""
    plan = plan_absent(nodes)
    if check_mode:
        stats.bytes_copied += sum(n.size for n in plan.shared)
        unprotected = sum(1 for n in plan.ours if node_flags(n, index) & FS_IMMUTABLE_FL)
        return sum(len(n.paths) for n in plan.shared), unprotected, {'shared_paths': 0, 'bytes_shared': 0}
    changes = Changes()
    copied = 0
    batch = []
    for node in plan.shared:
        try:
            batch.append((node, copy_private(node, stats)))
        except OSError as exc:
            stats.skip(reason(exc), len(node.paths))
        if len(batch) >= COPY_BATCH:
            copied += _install_batch(batch, stats, changes, guard)
            batch = []
    if batch:
        copied += _install_batch(batch, stats, changes, guard)
    unprotected = _unprotect(plan.ours, stats, changes)
    save_index(index, nodes, changes)
    return copied, unprotected, outside_counts(nodes)
