# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: unify's executors (floor 3, with _unify): carry out the plan's steps.

Every change goes through fds of the scanned directories (``_walk``): a link is made under a temp name in the
same directory and renamed over the path, so each path always names a complete file. A running guest that
reaches an inode whose protection is lifted is frozen (``_unify_freeze.Freezer``, passed in) until it is back.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import List, Optional, Tuple

from ansible_collections.vserver.core.plugins.module_utils._kernel import FS_APPEND_FL, FS_IMMUTABLE_FL, dedupe, \
    extents, get_flags, no_writer, set_immutable
from ansible_collections.vserver.core.plugins.module_utils._unify import TMP_PREFIX, LinkStep, Node, ProtectStep, \
    ReflinkStep, Stats, open_node, reason
from ansible_collections.vserver.core.plugins.module_utils._unify_freeze import Freezer, unlink_protected
from ansible_collections.vserver.core.plugins.module_utils._unify_index import FLAGS_IMMUTABLE, FLAGS_KNOWN, \
    OURS_IMMUTABLE, Index, IndexRow
from ansible_collections.vserver.core.plugins.module_utils._unify_prove import content_digest, xattr_key
from ansible_collections.vserver.core.plugins.module_utils._walk import lstat_entry


class Changes:
    """What the executors changed, for the index: inodes to rewrite (``touched``), (dev, ino) to forget."""

    def __init__(self):
        self.touched = set()
        self.dropped = set()


def move(target: Node, node: Node, moved) -> None:
    """Account for the entries ``moved`` from ``node`` to ``target`` (now hardlinks of it)."""
    target.paths.extend(moved)
    target.guests.update(e.guest for e in moved)
    target.nlink += len(moved)
    node.paths = [e for e in node.paths if e not in moved]
    node.guests = {e.guest for e in node.paths}
    node.nlink -= len(moved)


def replace_with_link(dirs, target_fd: int, entry, node: Node) -> None:
    """Atomically make ``entry`` a hardlink to the inode open as ``target_fd`` (if it still names ``node``)."""
    dfd = dirs.open(entry.dir)
    tmp = TMP_PREFIX + secrets.token_hex(8) + '.link'
    try:
        os.link('/proc/self/fd/%d' % target_fd, tmp, dst_dir_fd=dfd, follow_symlinks=True)
        try:
            st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (node.dev, node.ino, node.size, node.mtime):
                raise OSError(errno.ESTALE, 'changed during the run')
            os.rename(tmp, entry.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        dirs.release(entry.dir, dfd)


def _seal(target, fd, guard, running, stats, xattrs):
    """Make the target immutable before any new name reaches it, and prove again that its bytes (and xattrs,
    owner, mode) are those compared: a guest that rewrote its copy after the comparison (same size, mtime
    put back) is caught here. ``running``: the running guests that reach the target. Returns True if sealed."""
    fresh = not target.flags & FS_IMMUTABLE_FL
    if fresh:
        set_immutable(fd, True)  # no new open for writing from here on
        target.flags |= FS_IMMUTABLE_FL
        target.ours = True
    elif not running:
        return True
    # Just made immutable: the running guests are frozen for the probe, so none of their tasks is half-way
    # through an open() (past the flag check, before its write access counts). Immutable since an earlier
    # run: no such open can be under way.
    with guard.frozen(running if fresh else []):
        quiet = no_writer(fd)
    st = os.fstat(fd)
    same = quiet and (st.st_size, st.st_mode, st.st_uid, st.st_gid) == \
        (target.size, target.mode, target.uid, target.gid)
    if same and running and fresh:  # bytes a running guest could change until now: read them again
        same = content_digest(fd) == target.hash and (not xattrs or xattr_key(fd) == target.xattr)
    if not same:
        stats.skip('changed_during_run' if quiet else 'open_for_write', len(target.paths))
    return same


def simulate_link(step: LinkStep) -> Tuple[int, int]:
    """Check mode: account for the links ``step`` would make. Returns (paths linked, bytes saved)."""
    linked = saved = 0
    for node in step.others:
        mine = [e for e in node.paths if e.mutable]
        linked += len(mine)
        move(step.target, node, mine)
        if not node.paths and node.nlink <= 0:
            node.alive = False
            saved += node.size
    return linked, saved


def link(step: LinkStep, stats: Stats, changes: Changes, guard: Freezer = None) -> Tuple[int, int]:
    """Hardlink every mutable path of ``step.others`` to ``step.target``. Returns (paths linked, bytes saved).

    When a running guest reaches an inode of the class (``guard``: the run's Freezer), the target is sealed
    first (``_seal``) and the links are made with those guests frozen: a flag lifted for the link is back
    before any of them runs again."""
    target, others = step
    running = guard.running(set(target.guests).union(*(n.guests for n in others))) if guard else []
    fd = open_node(target)
    if fd is None:
        stats.skip('unreadable', sum(len(n.paths) for n in others))
        return 0, 0
    try:
        if running:
            changes.touched.add(target)
            if not _seal(target, fd, guard, guard.running(target.guests), stats, True):
                return 0, 0
            if not no_writer(fd):  # e.g. a writer from before the inode became immutable
                stats.skip('open_for_write', len(target.paths))
                return 0, 0
            with guard.frozen(running):
                return _relink(target, fd, others, stats, changes)
        return _relink(target, fd, others, stats, changes)
    finally:
        os.close(fd)


def _link_node(target, fd, node, stats, changes):
    """Link the mutable paths of ``node`` to the target open as ``fd``. Returns (paths linked, bytes saved)."""
    moved = []
    for entry in [e for e in node.paths if e.mutable]:
        try:
            replace_with_link(node.dirs, fd, entry, node)
        except OSError as exc:
            stats.skip(reason(exc))
            continue
        moved.append(entry)
    move(target, node, moved)
    changes.touched.add(node)
    if not node.paths and node.nlink <= 0:
        node.alive = False
        changes.dropped.add((node.dev, node.ino))
        return len(moved), node.size
    return len(moved), 0


def _relink(target, fd, others, stats, changes):
    """The links of ``link``; protected (immutable) inodes get their flag cleared around the links and set again
    before returning."""
    linked = saved = 0
    cleared = []
    try:
        if target.flags & FS_IMMUTABLE_FL:
            set_immutable(fd, False)
            target.flags &= ~FS_IMMUTABLE_FL
            cleared.append((target, fd, False))
        for node in others:
            if node.flags & FS_IMMUTABLE_FL:
                nfd = open_node(node)
                if nfd is None:
                    continue
                cleared.append((node, nfd, True))
                set_immutable(nfd, False)
                node.flags &= ~FS_IMMUTABLE_FL
            n, s = _link_node(target, fd, node, stats, changes)
            linked += n
            saved += s
        changes.touched.add(target)
    finally:
        for node, nfd, close in cleared:
            if node.alive:  # the protection pass then decides; until then keep the flag as it was
                try:
                    set_immutable(nfd, True)
                    node.flags |= FS_IMMUTABLE_FL
                except OSError:
                    pass
            if close:
                os.close(nfd)
    return linked, saved


def reflink(step: ReflinkStep, skips, stats: Stats, changes: Changes, check_mode: bool) -> Tuple[int, int]:
    """FIDEDUPERANGE every inode of ``step.others`` onto the source. Returns (files deduped, bytes). ``skips``
    (the plan's) count once the source could be opened."""
    sfd = open_node(step.source)
    if sfd is None:
        return 0, 0
    for skip in skips:
        stats.skip(*skip)
    done = saved = 0
    try:
        src_ext = extents(sfd)
        for node in step.others:
            dfd = open_node(node)
            if dfd is None:
                continue
            try:
                if src_ext and extents(dfd) == src_ext:
                    continue  # already sharing every extent
                if get_flags(dfd) & (FS_IMMUTABLE_FL | FS_APPEND_FL):
                    stats.skip('immutable', len(node.paths))
                    continue
                if not check_mode:
                    try:
                        dedupe(sfd, dfd, node.size)
                    except OSError as exc:
                        stats.skip('dedupe_' + errno.errorcode.get(exc.errno, 'error').lower())
                        continue
                    changes.touched.add(node)
                done += 1
                saved += node.size
            finally:
                os.close(dfd)
    finally:
        os.close(sfd)
    return done, saved


def protect(steps: List[ProtectStep], stats: Stats, changes: Changes, check_mode: bool) -> Tuple[int, int]:
    """Set or clear the immutable flags of the plan. Returns (protected, unprotected)."""
    protected = unprotected = 0
    for node, want, change in steps:
        if not change:
            node.ours = want
            changes.touched.add(node)
            continue
        if check_mode:
            protected += want
            unprotected += not want
            continue
        fd = open_node(node)
        if fd is None:
            stats.skip('unreadable')
            continue
        try:
            set_immutable(fd, want)
            node.ours = want
            node.flags = (node.flags | FS_IMMUTABLE_FL) if want else (node.flags & ~FS_IMMUTABLE_FL)
            protected += want
            unprotected += not want
            changes.touched.add(node)
        except OSError as exc:
            stats.skip('protect_' + errno.errorcode.get(exc.errno, str(exc.errno)).lower())
        finally:
            os.close(fd)
    return protected, unprotected


def remove_leftovers(scan, check_mode: bool, guard: Freezer) -> int:
    """Temp names of a killed run: extra links to a complete file, or unfinished private copies.

    A leftover link to a protected (immutable) inode is removed with every running guest frozen: the inode's
    other names may be in any tree, and its flag is lifted only for the unlink."""
    count = 0
    dirs = scan.dirs
    for entry in scan.leftovers:
        try:
            dfd = dirs.open(entry.dir)
        except OSError:
            continue
        try:
            st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            count += 1
            if check_mode:
                continue
            node = scan.nodes.get((st.st_dev, st.st_ino))
            try:
                os.unlink(entry.name, dir_fd=dfd)
            except PermissionError:
                unlink_protected(dfd, entry.name, guard)
            if node is not None:
                node.nlink -= 1
        except OSError:
            continue
        finally:
            dirs.release(entry.dir, dfd)
    return count


def _row(node: Node, index: Index, touched) -> Optional[IndexRow]:
    """The index row of ``node`` after this run (None: nothing worth keeping, or it was replaced)."""
    prev = index.fresh(node)  # keep what the index knew (also when the ctime moved because of us)
    if prev is not None:
        node.hash = node.hash or prev.hash
        node.xattr = node.xattr if node.xattr is not None else prev.xattr
    if node in touched:
        st = node.after
        if st is None:
            try:
                st = lstat_entry(node.dirs, node.paths[0])
            except (OSError, IndexError):
                return None
        if (st.st_dev, st.st_ino) != (node.dev, node.ino):
            return None
        node.ctime, node.mtime, node.size = st.st_ctime_ns, st.st_mtime_ns, st.st_size
    if node.hash is None and node.xattr is None and node.flags is None:
        return None
    flags = None
    if node.flags is not None:
        flags = FLAGS_KNOWN | (FLAGS_IMMUTABLE if node.flags & FS_IMMUTABLE_FL else 0) | \
            (OURS_IMMUTABLE if node.ours and node.flags & FS_IMMUTABLE_FL else 0)
    return IndexRow(node.dev, node.ino, node.size, node.mtime, node.ctime, node.hash, node.xattr, flags)


def save_index(index: Index, nodes, changes: Changes) -> None:
    """Write what this run learnt about the surviving inodes; forget the inodes that went."""
    rows = (_row(node, index, changes.touched) for node in nodes if node.alive)
    index.save([row for row in rows if row is not None], changes.dropped)
