# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: safe walking of guest trees (floor 2, a mechanism; see docs/architecture.md).

A guest owns its tree and may swap any directory for a symlink while the host works in it. Here every
directory is opened one component at a time with O_NOFOLLOW, kept open (``Dirs``), and every later file
operation is relative to one of those fds (``open_entry``, ``lstat_entry``, the ``*at`` calls): a path the
guest controls is never followed. ``walk`` adds the regular files of one tree to a ``Scan`` (lstat only,
one filesystem, no symlinks), filtered by rsync-like ``Rules``.

Imports only floor 1 (_kernel, _common).
"""

from __future__ import annotations

import collections
import errno
import os
import re
import resource
import stat
import threading
from typing import NamedTuple, Optional

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._kernel import O_READ

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FD_RESERVE = 1024 + 4 * 64 * 4  # fds left for everything but kept directories (file batches read in threads)


class Entry(NamedTuple):
    """One name of a file in a scanned tree: directory ``dir`` (an index into ``Dirs``), ``name`` in it, the
    guest whose tree it is, and whether this run may replace it (``mutable``: the guest was selected)."""
    dir: int
    name: str
    guest: Optional[str] = None
    mutable: bool = False


class Inode:
    """One inode seen by the walk (its lstat at scan time) and the entries naming it."""
    __slots__ = ('dev', 'ino', 'size', 'mode', 'uid', 'gid', 'mtime', 'ctime', 'nlink', 'paths', 'guests',
                 'mutable', 'dirs')

    def __init__(self, st, dirs):
        self.dirs = dirs
        self.dev, self.ino, self.size = st.st_dev, st.st_ino, st.st_size
        self.mode, self.uid, self.gid = st.st_mode, st.st_uid, st.st_gid
        self.mtime, self.ctime, self.nlink = st.st_mtime_ns, st.st_ctime_ns, st.st_nlink
        self.paths = []  # Entry
        self.guests = set()
        self.mutable = False


class Scan:
    """What the walks of one run found: inodes by (dev, ino), counters of what was skipped and why, the
    temp names of a killed run (``leftovers``, Entry), and the directories (``dirs``)."""

    def __init__(self, node_type=Inode, leftover_prefix=None, leftover_re=None):
        self.node_type = node_type
        self.leftover_prefix = leftover_prefix  # temp names of a killed run: this prefix and this regex
        self.leftover_re = leftover_re
        self.nodes = {}
        self.files = 0
        self.skipped = collections.Counter()
        self.leftovers = []
        self.dirs = Dirs()


class Dirs:
    """The directories of the scanned trees, opened component by component without following symlinks.

    Every file operation is relative to one of these fds, so a guest that swaps a directory for a symlink
    while we run cannot lead us out of its tree. Up to ``budget`` fds stay open; the others are reopened by
    path and checked against the (dev, ino) seen during the scan.
    """

    def __init__(self):
        self.paths = []
        self.ids = []
        self.fds = []
        self.kept = 0
        self.lock = threading.Lock()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.saved_limit = (soft, hard)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        self.budget = max(0, min(soft, 1 << 20) - FD_RESERVE)

    def add(self, path: str, fd: int, st: os.stat_result) -> int:
        with self.lock:
            self.paths.append(path)
            self.ids.append((st.st_dev, st.st_ino))
            if self.kept < self.budget:
                self.kept += 1
                self.fds.append(fd)
            else:
                os.close(fd)
                self.fds.append(None)
            return len(self.paths) - 1

    def open(self, i: int) -> int:
        """A verified fd of directory ``i``; call ``release(i, fd)`` when done."""
        fd = self.fds[i]
        if fd is not None:
            return fd
        fd = os.open(self.paths[i], DIR_FLAGS)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.ids[i]:
            os.close(fd)
            raise OSError(errno.ESTALE, 'directory %s was replaced during the run' % self.paths[i])
        with self.lock:
            if self.fds[i] is None and self.kept < self.budget:
                self.fds[i] = fd
                self.kept += 1
        return fd

    def release(self, i: int, fd: int) -> None:
        if self.fds[i] != fd:
            os.close(fd)

    def path(self, entry: Entry) -> str:
        return self.paths[entry.dir] + '/' + entry.name

    def close(self) -> None:
        for fd in self.fds:
            if fd is not None:
                os.close(fd)
        self.fds = [None] * len(self.fds)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.saved_limit)
        except (ValueError, OSError):
            pass


def open_entry(dirs: Dirs, entry: Entry) -> int:
    """Open the file named by ``entry`` to read it, without following symlinks (``_kernel.O_READ``)."""
    dfd = dirs.open(entry.dir)
    try:
        return os.open(entry.name, O_READ, dir_fd=dfd)
    finally:
        dirs.release(entry.dir, dfd)


def lstat_entry(dirs: Dirs, entry: Entry) -> os.stat_result:
    dfd = dirs.open(entry.dir)
    try:
        return os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
    finally:
        dirs.release(entry.dir, dfd)


def read_full(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``fd`` (fewer only at end of file)."""
    data = os.read(fd, size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.read(fd, size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b''.join(parts)


def read_regular_at(dfd: int, name: str, cap: int) -> Optional[bytes]:
    """The bytes of ``name`` in directory ``dfd`` if it is a regular file of at most ``cap`` bytes, else None.

    Opened with O_PATH and O_NOFOLLOW first and checked, then the very inode checked is reopened non-blocking
    (through its /proc/self/fd magic link, not a path of the guest): a FIFO, device or symlink is never read."""
    try:
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return None
        fd = os.open('/proc/self/fd/%d' % pfd, (O_READ & ~os.O_NOFOLLOW) | os.O_NOCTTY)
    except OSError:
        return None
    finally:
        os.close(pfd)
    try:
        data = read_full(fd, cap + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if len(data) > cap else data


def open_dirs(root: str, parts) -> list:
    """fds of ``root`` and of each of ``parts`` below it, opened one component at a time (O_NOFOLLOW); the
    caller closes them. Raises OSError (nothing left open) if one is not a directory."""
    fds = [os.open(root, DIR_FLAGS)]
    try:
        for part in parts:
            fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


# --- rsync-like patterns ------------------------------------------------------------------------------

def _glob_re(body):
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if body.startswith('**', i):
            out.append('.*')
            i += 2
            continue
        if c == '*':
            out.append('[^/]*')
        elif c == '?':
            out.append('[^/]')
        elif c == '[':
            j = body.find(']', i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                cls = body[i + 1:j]
                if cls.startswith('!'):
                    cls = '^' + cls[1:]
                out.append('[' + cls.replace('\\', '\\\\') + ']')
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return ''.join(out)


class Patterns(NamedTuple):
    """Compiled patterns: ``any`` matches files and directories, ``dirs`` directories only (None: no pattern)."""
    any: Optional[re.Pattern]
    dirs: Optional[re.Pattern]


class Rules:
    """Exclude/include patterns, matched against '/'-rooted paths relative to a guest root.

    A pattern starting with '/' is anchored at the guest root; otherwise it matches the end of the path
    (the last component when it has no '/'). A trailing '/' matches directories only. '*' and '?' stay
    within one component, '**' crosses components. A path is included if it matches an include pattern,
    excluded if it matches an exclude pattern, else it inherits its directory's verdict.
    """

    def __init__(self, exclude, include=(), literal_exclude=()):
        self.literal = set(literal_exclude)
        self.literal_dirs = set()
        globbed = []
        for pat in exclude:
            if pat.startswith('/') and not re.search(r'[*?\[]', pat):
                (self.literal_dirs if pat.endswith('/') else self.literal).add('/' + pat.strip('/'))
            else:
                globbed.append(pat)
        self.exclude = self._compile(globbed)
        self.include = self._compile(list(include))
        self.has_include = bool(include)
        self.include_anchored = []
        self.include_floating = False
        for pat in include:
            if pat.startswith('/'):
                self.include_anchored.append([_glob_re(c) for c in pat.strip('/').split('/')])
            else:
                self.include_floating = True

    @property
    def simple(self):
        """Only literal anchored excludes: a file's verdict is its directory's outside their parents."""
        return not self.has_include and self.exclude.any is None and self.exclude.dirs is None

    @staticmethod
    def _compile(patterns):
        files, dirs = [], []
        for pat in patterns:
            body = _glob_re(pat.strip('/'))
            rx = ('^/' if pat.startswith('/') else '(?:^|.*/)') + body + '$'
            (dirs if pat.endswith('/') else files).append(rx)
        return Patterns(re.compile('|'.join(files)) if files else None, re.compile('|'.join(dirs)) if dirs else None)

    @staticmethod
    def _match(compiled, rel, is_dir):
        return bool((compiled.any is not None and compiled.any.match(rel)) or
                    (is_dir and compiled.dirs is not None and compiled.dirs.match(rel)))

    def verdict(self, rel: str, is_dir: bool, parent_excluded: bool) -> bool:
        """True if ``rel`` is excluded."""
        if self.has_include and self._match(self.include, rel, is_dir):
            return False
        if rel in self.literal or (is_dir and rel in self.literal_dirs):
            return True
        if (self.exclude.any is not None or self.exclude.dirs is not None) and self._match(self.exclude, rel, is_dir):
            return True
        return parent_excluded

    def may_include_below(self, rel: str) -> bool:
        """Could an include pattern match something below the excluded directory ``rel``?"""
        if self.include_floating:
            return True
        parts = rel.strip('/').split('/')
        return any(_may_match_below(comps, parts) for comps in self.include_anchored)


def _may_match_below(comps, parts):
    """Do the leading directory components ``parts`` fit the anchored pattern ``comps`` (regexes)?"""
    for i, part in enumerate(parts):
        if i >= len(comps):
            return False
        if '.*' in comps[i]:
            return True
        if not re.match('^' + comps[i] + '$', part):
            return False
    return True


# --- the walk -----------------------------------------------------------------------------------------

def walk(root: str, guest: str, mutable: bool, rules: Rules, scan: Scan, busy, whole: bool = False) -> None:
    """Add the regular files of one guest tree to ``scan`` (lstat only, one filesystem, no symlinks).

    ``busy``: (dev, ino) of files open for writing (skipped). ``whole``: every file, ``rules`` ignored."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise VServerError('root %s of guest %s cannot be opened as a directory: %s' % (root, guest, exc), 'guests')
    walker = _Walker(scan, guest, mutable, Rules([]) if whole else rules, busy)
    root_st = os.fstat(fd)
    walker.dev = root_st.st_dev
    walker.run(scan.dirs.add(root, fd, root_st))


class _Walker:
    """The walk of one tree: a stack of (directory index, '/'-rooted path, excluded?) handled one by one."""

    def __init__(self, scan, guest, mutable, rules, busy):
        self.scan, self.dirs, self.nodes = scan, scan.dirs, scan.nodes
        self.guest, self.mutable, self.rules, self.busy = guest, mutable, rules, busy
        self.skipped = scan.skipped
        self.simple = rules.simple
        # directories holding a literal pattern: elsewhere a file's verdict is its directory's (simple rules)
        self.parents = {p.rsplit('/', 1)[0] for p in rules.literal | rules.literal_dirs}
        self.dev = None
        self.stack = []

    def run(self, top):
        self.stack.append((top, '', False))
        while self.stack:
            index, rel, excluded = self.stack.pop()
            try:
                dfd = self.dirs.open(index)
            except OSError:
                self.skipped['unreadable'] += 1
                continue
            try:
                self._directory(dfd, index, rel, excluded)
            finally:
                self.dirs.release(index, dfd)

    def _excluded(self, sub, is_dir, excluded):
        if self.simple:
            rules = self.rules
            return excluded or sub in rules.literal or (is_dir and sub in rules.literal_dirs)
        return self.rules.verdict(sub, is_dir, excluded)

    def _directory(self, dfd, index, rel, excluded):
        """Scan one directory: subdirectories go on the stack, regular files into the scan's inodes.
        The loop is the walk's hot path (every file of every tree): kept inline, one call per file."""
        try:
            entries = list(os.scandir(dfd))
        except OSError:
            self.skipped['unreadable'] += 1
            return
        skipped, busy, dev = self.skipped, self.busy, self.dev
        prefix, leftover = self.scan.leftover_prefix, self.scan.leftover_re
        check = not self.simple or rel in self.parents
        for item in entries:
            name = item.name
            if prefix is not None and name.startswith(prefix) and leftover.match(name):
                self.scan.leftovers.append(Entry(index, name, self.guest, self.mutable))
                continue
            try:
                if item.is_dir(follow_symlinks=False):
                    self._subdir(dfd, index, name, rel + '/' + name, excluded)
                    continue
                ex = self._excluded(rel + '/' + name, False, excluded) if check else excluded
                if ex:
                    if not excluded:
                        skipped['excluded'] += 1
                    continue
                if not item.is_file(follow_symlinks=False):
                    skipped['symlink' if item.is_symlink() else 'special'] += 1
                    continue
                st = item.stat(follow_symlinks=False)
            except OSError:
                skipped['unreadable'] += 1
                continue
            if st.st_dev != dev:
                skipped['other_filesystem'] += 1
                continue
            if st.st_size == 0:
                skipped['empty'] += 1
                continue
            key = (st.st_dev, st.st_ino)
            if key in busy:
                skipped['open_for_write'] += 1
                continue
            self._add(key, st, index, name)

    def _add(self, key, st, index, name):
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = self.scan.node_type(st, self.dirs)
        node.paths.append(Entry(index, name, self.guest, self.mutable))
        node.guests.add(self.guest)
        if self.mutable:
            node.mutable = True
        self.scan.files += 1

    def _subdir(self, dfd, index, name, sub, excluded):
        ex = self._excluded(sub, True, excluded)
        if ex:
            if not excluded:
                self.skipped['excluded'] += 1
            if not self.rules.may_include_below(sub):
                return
        cfd = os.open(name, DIR_FLAGS, dir_fd=dfd)
        st = os.fstat(cfd)
        if st.st_dev != self.dev:
            os.close(cfd)
            self.skipped['other_filesystem'] += 1
            return
        self.stack.append((self.dirs.add(self.dirs.paths[index] + '/' + name, cfd, st), sub, ex))
