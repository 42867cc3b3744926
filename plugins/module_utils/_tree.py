# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: safe operations on guest trees (floor 2, a mechanism: imports only _kernel and
_common).

A guest's tree is hostile: it may change any part of it at any moment, also while this code works on it. So every
object of a guest tree is opened relative to its parent directory's fd with O_NOFOLLOW and then checked and acted
on through that fd (never looked up again by path); regular files are read non-blocking and size-capped; nothing
is deleted through a mount point; new trees are built in a fresh sibling (mode 0700, reachable by no guest) and
renamed into place. Decisions written down in docs/security.md.

What needs the runtime (freezing the guests while a shared inode's immutable flag is off, finding who holds an
inode open for writing) is passed in by the caller, so this floor imports nothing above it:
- ``pause``: a context-manager factory entered around each batch of links of unified files (every guest frozen);
- ``writers``: a callable returning the (dev, ino) of every regular file some process holds open for writing;
- ``freezer``: a factory of an object whose ``frozen()`` context manager freezes the running guests (raising
  OSError when they do not freeze) while shared names are unlinked; None: no guest is known to run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional, Set, Tuple

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import (
    VServerError, fsync_dir, write_error, write_fully)

# The source tree is the guest's: every object of it is opened relative to its parent directory's fd with
# O_NOFOLLOW and then checked and read through that fd. The destination is the fresh build sibling (mode 0700,
# reachable by no guest), so names relative to its directory fds are safe there.
SRC_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 256
LINK_BATCH = 64  # unified files linked under one freeze of every guest
UNLINK_BATCH = 64  # shared names unlinked per freeze of the running guests (as _unify_freeze.FREEZE_BATCH)
MAX_MANAGED_READ = 4 << 20  # a managed file (or /etc/shadow) larger than this is not read, and is replaced
PROTECT_FLAGS = K.FS_IMMUTABLE_FL | K.FS_APPEND_FL

Pause = Callable[[], ContextManager]
Writers = Callable[[], Set[Tuple[int, int]]]


# --- build siblings ---------------------------------------------------------------------------------

def build_prefix(root: str) -> str:
    """Trees are built in PARENT/.BASE.build-XXXXXXXX (same filesystem) and renamed onto ROOT when complete."""
    return '.%s.build-' % os.path.basename(root)


def stale_builds(root: str) -> List[str]:
    """The build siblings of ``root`` (left by a killed run when no build is running: hold the host lock).
    Exactly the prefix and mkdtemp's 8 random characters: another guest's siblings never match."""
    parent = os.path.dirname(root)
    pattern = re.compile(re.escape(build_prefix(root)) + r'[a-z0-9_]{8}$')
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(parent, e) for e in entries if pattern.match(e))


def new_build_dir(root: str) -> str:
    """A fresh, empty build sibling of ``root`` (mode 0700 until it becomes the root)."""
    parent = os.path.dirname(root)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    return tempfile.mkdtemp(prefix=build_prefix(root), dir=parent)


def install_build(build: str, root: str) -> None:
    """Rename the finished tree ``build`` onto ``root`` (absent or an empty directory): one step, so ROOT is
    either the old empty directory or the whole tree, never half of it."""
    fsync_dir(build)
    os.rename(build, root)
    fsync_dir(os.path.dirname(root))


# --- clone ------------------------------------------------------------------------------------------

class _Unified(NamedTuple):
    """A unified file of the source, open, waiting to be linked with its directory's batch."""
    fd: int
    name: str
    flags: int
    st: os.stat_result


class _NoPause:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def copy_meta(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    """Owner, mode (after the owner: chown clears set-id bits), xattrs and times, all by fd."""
    os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src_fd)
    except OSError:
        names = []
    for attr in names:
        try:
            os.setxattr(dst_fd, attr, os.getxattr(src_fd, attr))
        except OSError:
            pass
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_bytes(src_fd: int, dst_fd: int, size: int) -> None:
    """At most ``size`` bytes (the size seen at open: a file the guest keeps growing cannot make this endless)."""
    done = 0
    while done < size:
        try:
            count = os.copy_file_range(src_fd, dst_fd, size - done)
        except (OSError, AttributeError):  # another filesystem pair, or Python < 3.8
            count = 0
        if count == 0:
            chunk = os.read(src_fd, min(1 << 20, size - done))
            if not chunk:
                break
            _write_all(dst_fd, chunk)
            count = len(chunk)
        done += count


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unified_flags(fd: int, st: os.stat_result) -> Optional[int]:
    """The inode flags of a file to hardlink into a clone, or None: copy it. Only a regular file with more than
    one link and the immutable flag is linked. A guest cannot set that flag (linux_immutable is outside every
    guest's bounding set), so only the host's unification made it so: any other multiply-linked inode (a host file
    hardlinked into the tree, a guest's own hardlinks, another guest's file it hardlinked) is copied, never shared
    with the clone."""
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return None
    try:
        flags = K.get_flags(fd)
    except OSError:
        return None
    return flags if flags & K.FS_IMMUTABLE_FL else None


def _link_unified(fd, name, dfd, flags):
    """Hardlink the inode open as ``fd`` (exactly that one, through /proc/self/fd) into the build directory.
    link(2) refuses an immutable inode: the flag is cleared on that fd around the link, as unification does."""
    K.set_flags(fd, flags & ~K.FS_IMMUTABLE_FL)
    try:
        os.link('/proc/self/fd/%d' % fd, name, dst_dir_fd=dfd, follow_symlinks=True)
    finally:
        K.set_flags(fd, flags)


class _Cloner:
    """One clone's walk: what was copied and linked, and the (dev, ino) of every linked inode."""

    def __init__(self, pause: Optional[Pause]):
        self.pause = pause
        self.counts = {'linked': 0, 'copied': 0}
        self.linked: List[Tuple[int, int]] = []

    def copy_dir(self, sfd, dfd, depth):
        if depth > MAX_DEPTH:
            raise VServerError('clone: the source tree is deeper than %d directories' % MAX_DEPTH, 'clone_from')
        batch: List[_Unified] = []  # unified files of this directory, open, linked together under one pause
        try:
            for name in os.listdir(sfd):
                try:
                    self.copy_entry(sfd, dfd, name, depth, batch)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone or swapped since listed (only when the source runs): not copied
                if len(batch) >= LINK_BATCH:
                    self.link_batch(batch, dfd)
            self.link_batch(batch, dfd)
        finally:
            for entry in batch:
                os.close(entry.fd)

    def link_batch(self, batch, dfd):
        if not batch:
            return
        with (self.pause() if self.pause else _NoPause()):
            for entry in batch:
                _link_unified(entry.fd, entry.name, dfd, entry.flags)
                self.linked.append((entry.st.st_dev, entry.st.st_ino))
                self.counts['linked'] += 1
        for entry in batch:
            os.close(entry.fd)
        del batch[:]

    def copy_entry(self, sfd, dfd, name, depth, batch):
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            _copy_symlink(sfd, dfd, name, st)
            return
        if stat.S_ISFIFO(st.st_mode):
            _make_fifo(dfd, name, st)
            return
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return  # device nodes, sockets: the guest's /dev is built at start; skip
        try:
            fd = os.open(name, SRC_OPEN, dir_fd=sfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                return  # swapped for a symlink or a socket since listed
            raise
        try:
            fd = self.copy_opened(fd, dfd, name, depth, batch)
        finally:
            if fd is not None:
                os.close(fd)

    def copy_opened(self, fd, dfd, name, depth, batch):
        """Copy the object open as ``fd``; returns the fd still to close (None: the batch holds it)."""
        st = os.fstat(fd)  # from here on: the object opened, whatever the name means now
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            cfd = os.open(name, DIR_OPEN, dir_fd=dfd)
            try:
                self.copy_dir(fd, cfd, depth + 1)
                copy_meta(fd, cfd, st)
            finally:
                os.close(cfd)
        elif stat.S_ISREG(st.st_mode):
            flags = unified_flags(fd, st)
            if flags is not None:
                batch.append(_Unified(fd, name, flags, st))  # linked (and closed) with its directory's batch
                return None
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                copy_bytes(fd, out, st.st_size)
                copy_meta(fd, out, st)
            finally:
                os.close(out)
            self.counts['copied'] += 1
        return fd


def _copy_symlink(sfd, dfd, name, st):
    try:
        target = os.readlink(name, dir_fd=sfd)
    except OSError:
        return  # no longer a symlink
    os.symlink(target, name, dir_fd=dfd)
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)


def _make_fifo(dfd, name, st):
    os.mkfifo(name, 0o600, dir_fd=dfd)
    fd = os.open(name, SRC_OPEN, dir_fd=dfd)  # the build's own FIFO: never blocks with O_NONBLOCK
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def _check_no_writer(linked, writers):
    """The immutable flag of a linked inode was off for the link(2) only; a process that opened it for writing
    in that instant keeps a writable fd on a file every sharer runs: refuse the clone then (checked once)."""
    if not linked:
        return
    held = set(linked) & writers()
    if held:
        raise VServerError('clone: %d shared (unified) file(s) were opened for writing while being linked '
                           '(inodes %s); the clone is not made' % (len(held), sorted(i for _d, i in held)),
                           'clone_from')


def clone_tree(src: str, dst: str, writers: Writers, pause: Optional[Pause] = None,
               freezer: Optional[Callable] = None) -> Dict[str, int]:
    """util-vserver's clone: unified files (immutable, shared) are hardlinked, everything else is copied; device
    nodes and sockets are skipped. Returns counts {'linked', 'copied'}.

    ``dst`` must not exist. The copy is made in a build sibling of ``dst`` and renamed onto it when complete
    (removed again with ``remove_build`` if the copy fails half-way); hold the host lock, which covers the
    siblings. The source is walked by fd (O_NOFOLLOW on every component): a guest swapping a directory for a
    symlink while this runs can change what is copied, never make the host read, link or change anything outside
    its tree. Clone a running source frozen so the copy is one consistent view. ``pause`` is entered around each
    batch of links of unified files: the immutable flag is off for those link(2) calls only, while no guest
    process runs; afterwards ``writers()`` must hold none of the linked inodes."""
    if os.path.lexists(dst):
        raise VServerError('clone target %s exists' % dst, 'root')
    build = new_build_dir(dst)
    try:
        try:
            sfd = os.open(src, DIR_OPEN)
        except OSError as exc:
            raise VServerError('clone_from: cannot open the source tree %s: %s' % (src, exc.strerror),
                               'clone_from') from exc
        cloner = _Cloner(pause)
        try:
            dfd = os.open(build, DIR_OPEN)
            try:
                cloner.copy_dir(sfd, dfd, 0)
                copy_meta(sfd, dfd, os.fstat(sfd))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        _check_no_writer(cloner.linked, writers)
        install_build(build, dst)
    except BaseException:
        try:
            remove_build(build, freezer)  # with a freezer: shared files are unlinked with the guests frozen
        except (OSError, VServerError):
            pass  # the next run under the lock removes it
        raise
    return cloner.counts


# --- files inside a guest tree --------------------------------------------------------------------

def check_guest_path(path: str, field: str) -> str:
    """An absolute file path inside the guest without "." or ".." components (else VServerError naming FIELD)."""
    if not isinstance(path, str) or not path.startswith('/') or '\x00' in path or \
            any(part in ('..', '.') for part in path.split('/')[1:]) or path.endswith('/'):
        raise VServerError('%s: %r must be an absolute file path inside the guest without "." or ".."'
                           % (field, path), field)
    return path


def open_dir_in_tree(root: str, parts: List[str], create: bool = False) -> int:
    """fd of directory root/parts..., resolving every component with O_NOFOLLOW: a symlink the guest planted
    cannot lead the host's write outside the tree. ``create``: missing directories are made (0755; .ssh 0700)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nfd = os.open(part, DIR_OPEN, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o700 if part == '.ssh' else 0o755, dir_fd=fd)
                nfd = os.open(part, DIR_OPEN, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as exc:
        os.close(fd)
        why = 'a symlink or not a directory there is never followed' if exc.errno in (
            errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise VServerError('cannot reach %s/%s inside the guest tree safely: %s' % (root, '/'.join(parts), why),
                           'files')
    return fd


def read_in_tree(root: str, path: str) -> Tuple[Optional[bytes], Optional[int]]:
    """(bytes, mode) of the regular file ROOT/PATH, or (None, None) when it is absent or not a regular file.
    Never blocks (O_NONBLOCK: a FIFO the guest planted is opened and refused, not waited on) and never reads
    more than MAX_MANAGED_READ (a larger file reads as absent, so it is replaced)."""
    parts = path.strip('/').split('/')
    try:
        dfd = open_dir_in_tree(root, parts[:-1])
    except (VServerError, FileNotFoundError):
        return None, None
    try:
        fd = os.open(parts[-1], SRC_OPEN, dir_fd=dfd)
    except OSError:
        return None, None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANAGED_READ:
            return None, None
        chunks, size = [], 0
        while size <= MAX_MANAGED_READ:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b''.join(chunks), stat.S_IMODE(st.st_mode)
            chunks.append(chunk)
            size += len(chunk)
        return None, None  # grew past the cap while read
    finally:
        os.close(fd)


def _new_temp(dfd, base):
    """(name, fd) of a fresh temp file beside BASE: a random name created with O_EXCL (whatever the guest planted
    there, a name that exists is never used: another is drawn)."""
    for _attempt in range(16):
        name = '.%s.vserver-%s' % (base[:200], secrets.token_hex(8))
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
        except FileExistsError:
            continue
        return name, fd
    raise OSError(errno.EEXIST, 'no free temp name in 16 tries')


def write_in_tree(root: str, path: str, data: bytes, mode: int) -> None:
    """Atomically replace ROOT/PATH (no symlink followed anywhere), owned by root: every byte written and the
    size checked, fsync, rename, fsync of the directory. On failure the old file stays, the temp file is removed
    and VServerError names the file."""
    parts = path.strip('/').split('/')
    dfd = open_dir_in_tree(root, parts[:-1], create=True)
    tmp = None
    try:
        tmp, fd = _new_temp(dfd, parts[-1])
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
            write_fully(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        tmp = None
        os.fsync(dfd)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        raise write_error(os.path.join(root, path.lstrip('/')), exc) from exc
    finally:
        os.close(dfd)


# --- removing trees ---------------------------------------------------------------------------------

def mounts_below(root: str, mountinfo: str = '/proc/self/mountinfo') -> List[str]:
    """Mount points strictly below ``root`` (host data bind-mounted into a tree, a guest's extra disk...)."""
    prefix = os.path.realpath(root).rstrip('/') + '/'
    return sorted({m['mountpoint'] for m in P.read_mountinfo(mountinfo) if m['mountpoint'].startswith(prefix)})


def check_purgeable(root: str, own_mount: bool = False) -> None:
    """Refuse to delete a tree through a mount point: rmtree would delete whatever is mounted there.
    ``own_mount``: the root itself may still be a mount point (its disk image, unmounted by the absent hook)."""
    if os.path.ismount(root) and not own_mount:
        raise VServerError('root %s is a mount point; unmount it (or remove its disk limit) before purge' % root,
                           'purge')
    below = mounts_below(root)
    if below:
        one = len(below) == 1
        raise VServerError('purge: %s %s mounted inside the tree %s; unmount %s first (purge never deletes '
                           'through a mount point)' % (', '.join(below), 'is' if one else 'are', root,
                                                       'it' if one else 'them'), 'purge')


def clear_immutable(path: str) -> None:
    """Clear the immutable/append-only flags (unified files are immutable) so a purge can remove them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        flags = K.get_flags(fd)
        if flags & PROTECT_FLAGS:
            K.set_flags(fd, flags & ~PROTECT_FLAGS)
    except OSError:
        pass
    finally:
        os.close(fd)


def purge_tree(root: str, freezer: Optional[Callable] = None) -> None:
    """Delete a stopped guest's tree (``check_purgeable`` first). Flags are cleared where nothing else needs
    them; a unified file (immutable, with names in other guests' trees) is handled by ``_remove_shared``."""
    def other(func, path, _exc):
        clear_immutable(path)
        clear_immutable(os.path.dirname(path))
        func(path)
    check_purgeable(root)
    _rmtree_keeping_shared(root, freezer, other)


def remove_build(build: str, freezer: Optional[Callable] = None) -> None:
    """Remove an unfinished build sibling (``stale_builds``): never a guest's tree, so nothing of it is left
    writable; a hardlinked unified file keeps its immutable flag for the trees still linking it
    (``_remove_shared``)."""
    def other(func, path, exc_info):
        if func is os.unlink and isinstance(exc_info[1], PermissionError):
            clear_immutable(path)  # an immutable inode with no other name: nothing else reaches it
            func(path)
        else:
            raise exc_info[1]
    check_purgeable(build)
    _rmtree_keeping_shared(build, freezer, other)


def _open_parent(root, path):
    """An fd on the directory holding ``path`` (below ``root``), opened one component at a time from the root
    without following symlinks, and the last component's name."""
    rel = os.path.relpath(path, root).split('/')
    fd = os.open(root, DIR_OPEN)
    try:
        for part in rel[:-1]:
            nfd = os.open(part, DIR_OPEN, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, rel[-1]


def _shared_immutable(path):
    """Is ``path`` a regular file whose inode is immutable (or append-only) and has other names?"""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return False
        fd = os.open(path, SRC_OPEN)
    except OSError:
        return False
    try:
        return bool(K.get_flags(fd) & PROTECT_FLAGS)
    except OSError:
        return False
    finally:
        os.close(fd)


def _rmtree_keeping_shared(root, freezer, other):
    """rmtree; a name the kernel refuses to unlink because its inode is a shared protected one is removed
    afterwards by ``_remove_shared``; ``other(func, path, exc_info)`` handles any other error."""
    shared = []

    def onerror(func, path, exc_info):
        if func is os.unlink and isinstance(exc_info[1], PermissionError) and _shared_immutable(path):
            shared.append(path)
        elif shared and func is os.rmdir and getattr(exc_info[1], 'errno', None) == errno.ENOTEMPTY:
            pass  # holds one of those: removed by the second pass
        else:
            other(func, path, exc_info)
    shutil.rmtree(root, onerror=onerror)
    if shared:
        _remove_shared(root, shared, freezer() if freezer else _NoFreezer())
        shutil.rmtree(root, onerror=other)


class _NoFreezer:
    """No guest is known to run: nothing to freeze."""

    def frozen(self):
        return _NoPause()


def _remove_shared(root, names, freezer):
    """Unlink names of immutable inodes that other guests' trees still link (unified files) without ever
    leaving such an inode writable by a running guest: the flag is lifted only while every running guest is
    frozen, and set back on the same inode (held open) before they thaw. UNLINK_BATCH names per freeze."""
    for i in range(0, len(names), UNLINK_BATCH):
        part = names[i:i + UNLINK_BATCH]
        held = []
        try:
            for path in part:
                dfd, name = _open_parent(root, path)
                held.append(dfd)
                if K.get_flags(dfd) & PROTECT_FLAGS:  # a directory is never shared
                    K.set_flags(dfd, K.get_flags(dfd) & ~PROTECT_FLAGS)
                held.append(os.open(name, SRC_OPEN | os.O_NOCTTY, dir_fd=dfd))
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(freezer.frozen())
                except OSError as exc:  # the guests did not freeze: nothing was lifted
                    raise VServerError('purge: %s; the shared files left in %s stay protected, run again to '
                                       'finish' % (exc.strerror, os.path.dirname(names[i])), 'purge') from exc
                for dfd, fd, path in zip(held[::2], held[1::2], part):
                    _unlink_shared(dfd, fd, path)
        finally:
            for fd in held:
                os.close(fd)


def _unlink_shared(dfd, fd, path):
    """Unlink PATH (open as ``fd`` in ``dfd``) with its protection lifted for the unlink only."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise VServerError('purge: %s changed while it was removed (the guest runs?)' % path, 'purge')
    flags = K.get_flags(fd)
    K.set_flags(fd, flags & ~PROTECT_FLAGS)
    try:
        os.unlink(os.path.basename(path), dir_fd=dfd)
    finally:
        if os.fstat(fd).st_nlink:
            K.set_flags(fd, flags)
