# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: unification -- share identical files across guest trees.

``ensure(paths, params, check_mode)`` is the one manager (module, roles and the CLI call it):

scan    walk each guest tree with lstat only, directories opened one component at a time with
        O_NOFOLLOW and every later operation relative to those fds (never follows symlinks, never
        crosses into another filesystem), apply the rsync-like exclude/include rules, note leftovers
        of a killed run; skip files any process holds open for writing;
plan    group inodes by (device, size, owner, group, mode[, mtime]), then prove content and xattr
        equality: the members of a group are read in lock-step (worker threads) and split chunk by
        chunk with byte comparisons (each file is read once; one SHA-256 per distinct content, kept
        in the index);
        inodes whose size/mtime/ctime/inode are unchanged since the last run take their hash from the
        persistent index and are only re-read when they have to be proven equal to a new inode;
act     hardlink: ``link(/proc/self/fd/N, dir/.vsunify.RANDOM.link)`` then ``rename`` over the path, so
        each path always names a complete file; protected (immutable) inodes get their flag cleared
        around the link and set again. reflink: FIDEDUPERANGE (the kernel compares the bytes again
        under its locks) -- separate inodes, shared extents, true copy-on-write.
absent  de-unify one guest: every inode it shares with anything outside it gets a private copy
        (owner, mode, xattrs incl. security.capability, atime/mtime kept; internal hardlinks kept),
        written to a temp name, synced, renamed over; flags we set are cleared.

The index lives at ``CONFIG_DIR/.unify-index`` (sqlite3): one row per inode
(dev, ino, size, mtime_ns, ctime_ns, sha256, xattr digest, flags we set, last seen).
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import os
import re
import resource
import secrets
import sqlite3
import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime
from ansible_collections.vserver.core.plugins.module_utils._kernel import FS_APPEND_FL, FS_IMMUTABLE_FL, get_flags, set_flags
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, VServerError

DEFAULT_EXCLUDE = ('/etc', '/var', '/home', '/tmp', '/root', '/dev', '/proc', '/sys', '/run', '/mnt')
METHODS = ('hardlink', 'reflink', 'auto')
STATES = ('present', 'absent')
INDEX_NAME = '.unify-index'
INDEX_VERSION = 1
ALGO = 'sha256'
TMP_PREFIX = '.vsunify.'
TMP_RE = re.compile(r'^\.vsunify\.[0-9a-f]{16}\.(link|copy)$')

FIDEDUPERANGE = 0xC0189436
FS_IOC_FIEMAP = 0xC020660B
DEDUPE_CHUNK = 16 << 20
CHUNK = 1 << 20
BATCH_BYTES = 64 << 20
BATCH_FILES = 64
WORKERS = 4
ACT_WORKERS = 8
FREEZE_BATCH = 64  # files renamed (de-unify) or unlinked (purge) per freeze of the running guests
OURS_IMMUTABLE = 1  # index flags: we set the immutable flag on this inode
FLAGS_KNOWN = 2  # the flags below were read at this ctime
FLAGS_IMMUTABLE = 4  # the inode is immutable (ours or not)
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, 'O_NOATIME', 0)

PARAM_DEFAULTS = dict(guests=None, state='present', method='hardlink', exclude=None, include=None,
                      ignore_mtime=False, protect=True)


# --- parameters -------------------------------------------------------------------------------------

def _check_patterns(value, field):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise VServerError('%s must be a list of rsync-like patterns such as "/usr/share/doc" or "*.pyc" '
                           '(got %r)' % (field, value), field)
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip('/') or '\0' in item or \
                '..' in item.strip('/').split('/') or '//' in item:
            raise VServerError('%s: each pattern must be a non-empty rsync-like pattern relative to the guest root, '
                               'such as "/usr/share/doc", "/opt/app/" or "*.pyc", without ".." or "//" (got %r)'
                               % (field, item), field)
        out.append(item)
    return out


def validate(params):
    """Normalise module/role parameters; raise VServerError naming the field before anything is touched."""
    p = dict(PARAM_DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None})
    unknown = set(p) - set(PARAM_DEFAULTS)
    if unknown:
        raise VServerError('unknown unify option(s): %s (accepted: %s)'
                           % (', '.join(sorted(unknown)), ', '.join(sorted(PARAM_DEFAULTS))), sorted(unknown)[0])
    guests = p['guests']
    if guests is None or guests == 'all':
        guests = ['all']
    if isinstance(guests, str):
        guests = [guests]
    if not isinstance(guests, (list, tuple)) or not guests or not all(isinstance(g, str) for g in guests):
        raise VServerError('guests must be a list of guest names, or "all" (got %r)' % (guests,), 'guests')
    if 'all' in guests and len(guests) > 1:
        raise VServerError('guests: "all" cannot be combined with names (got %r)' % (guests,), 'guests')
    p['guests'] = list(guests)
    if p['state'] not in STATES:
        raise VServerError('state must be one of %s (got %r)' % (', '.join(STATES), p['state']), 'state')
    if p['method'] not in METHODS:
        raise VServerError('method must be one of %s (got %r)' % (', '.join(METHODS), p['method']), 'method')
    for key in ('ignore_mtime', 'protect'):
        if not isinstance(p[key], bool):
            raise VServerError('%s must be true or false (got %r)' % (key, p[key]), key)
    p['exclude'] = _check_patterns(p['exclude'], 'exclude')
    p['include'] = _check_patterns(p['include'], 'include') or []
    if p['exclude'] is None:
        p['exclude'] = list(DEFAULT_EXCLUDE)
    return p


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

    @staticmethod
    def _compile(patterns):
        files, dirs = [], []
        for pat in patterns:
            body = _glob_re(pat.strip('/'))
            rx = ('^/' if pat.startswith('/') else '(?:^|.*/)') + body + '$'
            (dirs if pat.endswith('/') else files).append(rx)
        return (re.compile('|'.join(files)) if files else None, re.compile('|'.join(dirs)) if dirs else None)

    @staticmethod
    def _match(compiled, rel, is_dir):
        anyk, dirk = compiled
        return bool((anyk is not None and anyk.match(rel)) or (is_dir and dirk is not None and dirk.match(rel)))

    def verdict(self, rel, is_dir, parent_excluded):
        """True if ``rel`` is excluded."""
        if self.has_include and self._match(self.include, rel, is_dir):
            return False
        if rel in self.literal or (is_dir and rel in self.literal_dirs):
            return True
        if (self.exclude[0] is not None or self.exclude[1] is not None) and self._match(self.exclude, rel, is_dir):
            return True
        return parent_excluded

    def may_include_below(self, rel):
        """Could an include pattern match something below the excluded directory ``rel``?"""
        if self.include_floating:
            return True
        parts = rel.strip('/').split('/')
        for comps in self.include_anchored:
            ok = True
            for i, part in enumerate(parts):
                if i >= len(comps):
                    ok = False
                    break
                if comps[i] == '.*' or '.*' in comps[i]:
                    break
                if not re.match('^' + comps[i] + '$', part):
                    ok = False
                    break
            if ok:
                return True
        return False


# --- guarding shared inodes against the guests that reach them -----------------------------------------

class Freezer:
    """Freezes the running guests that could write through an inode while the host lifts its protection.

    Made once per run under the host lock (no guest starts meanwhile): the guests whose cgroup has a process.
    ``frozen(names)`` freezes those of ``names`` that run (all of them with None), waits until the kernel
    reports every task frozen (none is then inside a system call, e.g. between open()'s permission check and
    its write access), and thaws on exit only what it froze. The time each freeze lasted is kept."""

    def __init__(self, paths):
        self.groups = {}
        self.lock = threading.Lock()  # one freeze at a time (the act phase runs classes in threads)
        self.stuck = set()  # guests that did not freeze in time: not waited for again in this run
        self.frozen_count = 0
        self.frozen_seconds = 0.0
        self.frozen_max = 0.0
        if paths is None:
            return
        names = set(_config.names(paths))
        try:
            names.update(n for n in os.listdir(paths.run_dir) if not n.startswith('.'))
        except OSError:
            pass
        for name in sorted(names):
            try:
                group = _runtime.Runtime(paths, name).group
                if group.exists() and group.procs():
                    self.groups[name] = group
            except (OSError, VServerError):
                continue

    def running(self, names=None):
        return sorted(self.groups if names is None else (n for n in names if n in self.groups))

    @staticmethod
    def _files(group):
        if hasattr(group, 'dir_for'):
            state = os.path.join(group.dir_for('freezer'), 'freezer.state')
            return state, ('FROZEN', 'THAWED'), state, 'FROZEN'
        return os.path.join(group.path, 'cgroup.freeze'), ('1', '0'), \
            os.path.join(group.path, 'cgroup.events'), 'frozen 1'

    @staticmethod
    def _read(path):
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            return ''

    def frozen(self, names=None, timeout=5.0):
        return _Frozen(self, self.running(names), timeout)


class FreezeError(OSError):
    """Running guests did not freeze in time: nothing was lifted."""


class _Frozen:
    def __init__(self, freezer, names, timeout):
        self.freezer, self.names, self.timeout = freezer, names, timeout
        self.mine = []
        self.started = None

    def __enter__(self):
        if not self.names:
            return self
        self.freezer.lock.acquire()
        self.started = time.monotonic()
        waits = []
        try:
            stuck = self.freezer.stuck.intersection(self.names)
            if stuck:
                raise FreezeError(errno.EBUSY, 'guest(s) %s did not freeze earlier in this run'
                                  % ', '.join(sorted(stuck)))
            for name in self.names:
                ctl, (on, dummy), events, done = Freezer._files(self.freezer.groups[name])
                if Freezer._read(ctl).strip() == on:
                    waits.append((events, done))  # frozen by the admin: it stays frozen
                    continue
                with open(ctl, 'w') as handle:
                    handle.write(on)
                self.mine.append(name)
                waits.append((events, done))
            pause = 0.0002
            while True:
                if all(done in Freezer._read(events).split('\n') for events, done in waits):
                    return self
                if time.monotonic() - self.started > self.timeout:
                    late = [name for name, (events, done) in zip(self.names, waits)
                            if done not in Freezer._read(events).split('\n')]
                    self.freezer.stuck.update(late)
                    raise FreezeError(errno.EBUSY, 'guest(s) %s did not freeze in %ss'
                                      % (', '.join(late), self.timeout))
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
        except BaseException:
            self._thaw()
            self.freezer.lock.release()
            raise

    def _thaw(self):
        for name in self.mine:
            ctl, (dummy, off), dummy2, dummy3 = Freezer._files(self.freezer.groups[name])
            try:
                with open(ctl, 'w') as handle:
                    handle.write(off)
            except OSError:
                pass
        self.mine = []

    def __exit__(self, *exc):
        if not self.names:
            return False
        self._thaw()
        self.freezer.lock.release()
        if self.names:
            took = time.monotonic() - self.started
            self.freezer.frozen_count += 1
            self.freezer.frozen_seconds += took
            self.freezer.frozen_max = max(self.freezer.frozen_max, took)
        return False


def no_writer(fd):
    """True if no process holds the inode open for writing (nor maps it shared-writable): a read lease is
    granted only then. Leases unsupported here: the /proc scan."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return False
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) not in open_for_write()
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def unlink_protected(dfd, name, freezer, names=None):
    """Remove one name of an immutable inode whose other names stay: the flag is lifted only while the
    running guests ``names`` (all with None) are frozen, and put back on the same inode before they thaw."""
    fd = os.open(name, O_READ, dir_fd=dfd)
    try:
        flags = get_flags(fd)
        with freezer.frozen(names):
            set_flags(fd, flags & ~(FS_IMMUTABLE_FL | FS_APPEND_FL))
            try:
                os.unlink(name, dir_fd=dfd)
            finally:
                if os.fstat(fd).st_nlink:
                    set_flags(fd, flags)
    finally:
        os.close(fd)


def conffiles(root, cap=1 << 20):
    """Package manager configuration files of a guest (dpkg ``*.conffiles``): literal '/'-rooted paths.

    The guest owns these files: every directory is opened with O_NOFOLLOW from the root, and only regular
    files are read (opened with O_PATH first, checked, then reopened non-blocking), each up to ``cap`` bytes:
    a FIFO, a device or a symlink planted there is skipped."""
    out = []
    fds = []
    try:
        try:
            fds.append(os.open(root, DIR_FLAGS))
            for part in ('var', 'lib', 'dpkg', 'info'):
                fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1]))
            names = os.listdir(fds[-1])
        except OSError:
            return out
        for name in sorted(names):
            if name.endswith('.conffiles'):
                out.extend(_conffile_paths(fds[-1], name, cap))
    finally:
        for fd in fds:
            os.close(fd)
    return out


def _conffile_paths(dfd, name, cap):
    try:
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return []
        # the very inode checked (the magic link is followed, not a path of the guest)
        fd = os.open('/proc/self/fd/%d' % pfd, (O_READ & ~os.O_NOFOLLOW) | os.O_NOCTTY)
    except OSError:
        return []
    finally:
        os.close(pfd)
    try:
        data = _read_full(fd, cap + 1)
    except OSError:
        return []
    finally:
        os.close(fd)
    if len(data) > cap:
        return []
    out = []
    for line in data.decode('utf-8', 'replace').splitlines():
        words = line.split()
        path = next((w for w in reversed(words) if w.startswith('/')), None)
        if path and '..' not in path.split('/'):
            out.append('/' + path.strip('/'))
    return out


# --- kernel helpers -----------------------------------------------------------------------------------

def path_flags(path):
    fd = os.open(path, O_READ)
    try:
        return get_flags(fd)
    finally:
        os.close(fd)


def set_immutable(fd, on):
    """Set or clear the immutable flag; returns True if it changed."""
    flags = get_flags(fd)
    new = (flags | FS_IMMUTABLE_FL) if on else (flags & ~FS_IMMUTABLE_FL)
    if new == flags:
        return False
    set_flags(fd, new)
    return True


def dedupe(src_fd, dst_fd, length):
    """FIDEDUPERANGE the whole file; returns bytes deduped. Raises OSError (EOPNOTSUPP, EBADE if differing)."""
    done = 0
    while done < length:
        want = min(DEDUPE_CHUNK, length - done)
        buf = bytearray(struct.pack('QQHHI', done, want, 1, 0, 0) + struct.pack('qQQiI', dst_fd, done, 0, 0, 0))
        fcntl.ioctl(src_fd, FIDEDUPERANGE, buf, True)
        got, status = struct.unpack_from('qQQiI', buf, 24)[2:4]
        if status < 0:
            raise OSError(-status, os.strerror(-status))
        if status == 1:
            raise OSError(errno.EBADE, 'contents differ')
        if got == 0:
            raise OSError(errno.EIO, 'dedupe made no progress')
        done += got
    return done


def reflink_supported(fd, size):
    """Probe without changing anything: a dedupe of a file onto itself is refused with EINVAL (overlap)
    where the filesystem can share extents and with EOPNOTSUPP/ENOTTY where it cannot."""
    try:
        buf = bytearray(struct.pack('QQHHI', 0, max(1, min(size, 4096)), 1, 0, 0) +
                        struct.pack('qQQiI', fd, 0, 0, 0, 0))
        fcntl.ioctl(fd, FIDEDUPERANGE, buf, True)
        status = struct.unpack_from('qQQiI', buf, 24)[3]
    except OSError as exc:
        status = -exc.errno
    return status not in (-errno.EOPNOTSUPP, -errno.ENOTTY, -errno.EXDEV, -errno.ENOSYS)


def extents(fd, max_extents=256):
    """Physical extents (logical, physical, length) of an open file, via FIEMAP; None if unsupported."""
    head = struct.Struct('QQIIII')
    ext = struct.Struct('QQQQQIIII')
    buf = bytearray(head.size + ext.size * max_extents)
    head.pack_into(buf, 0, 0, 0xFFFFFFFFFFFFFFFF, 0x1, 0, max_extents, 0)  # FIEMAP_FLAG_SYNC
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    except OSError:
        return None
    count = head.unpack_from(buf, 0)[3]
    out = []
    for i in range(count):
        logical, physical, length = ext.unpack_from(buf, head.size + i * ext.size)[:3]
        out.append((logical, physical, length))
    return tuple(out)


def open_for_write(proc='/proc'):
    """(dev, ino) of every regular file some process holds open for writing or maps shared-writable."""
    found = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fddir = '%s/%s/fd' % (proc, pid)
        try:
            fds = os.listdir(fddir)
        except OSError:
            fds = []
        for fd in fds:
            try:
                if not os.readlink('%s/%s' % (fddir, fd)).startswith('/'):
                    continue
                with open('%s/%s/fdinfo/%s' % (proc, pid, fd), 'rb') as handle:
                    info = handle.read()
                flags = int(re.search(rb'flags:\s*([0-7]+)', info).group(1), 8)
                if flags & (os.O_WRONLY | os.O_RDWR):
                    st = os.stat('%s/%s' % (fddir, fd))
                    if stat.S_ISREG(st.st_mode):
                        found.add((st.st_dev, st.st_ino))
            except (OSError, AttributeError, ValueError):
                continue
        try:
            with open('%s/%s/maps' % (proc, pid), 'rb') as handle:
                for line in handle:
                    parts = line.split(None, 5)
                    if len(parts) >= 5 and parts[1][1:2] == b'w' and parts[1][3:4] == b's' and parts[4] != b'0':
                        major, minor = parts[3].split(b':')
                        found.add((os.makedev(int(major, 16), int(minor, 16)), int(parts[4])))
        except (OSError, ValueError):
            pass
    return found


def xattr_key(target):
    """Digest of a file's sorted xattr (name, value) pairs, security.capability included; b'' if none.

    ``target`` is an open fd (or a path, not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return b''
        raise
    if not names:
        return b''
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b'\0')
        value = os.getxattr(target, name, follow_symlinks=follow)
        h.update(struct.pack('Q', len(value)) + value)
    return h.digest()


# --- the persistent index --------------------------------------------------------------------------

class Index:
    """Per-host cache: inode -> (size, mtime, ctime, content hash, xattr digest, flags we set)."""

    def __init__(self, path):
        self.path = path
        self.rows = {}
        self.conn = None

    def load(self, devs):
        """Read the rows of the given devices (read-only; a missing or unusable index is just empty)."""
        if not devs or not os.path.exists(self.path):
            return
        try:
            conn = sqlite3.connect('file:%s?mode=ro' % self.path, uri=True)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
                if row is None or row[0] != '%d:%s' % (INDEX_VERSION, ALGO):
                    return
                query = 'SELECT dev, ino, size, mtime, ctime, hash, xattr, flags, seen FROM inode ' \
                    'WHERE dev IN (%s)' % ','.join('?' * len(devs))
                for row in conn.execute(query, sorted(devs)):
                    self.rows[(row[0], row[1])] = row[2:]
            finally:
                conn.close()
        except sqlite3.Error:
            self.rows = {}

    def _open(self):
        if self.conn is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            self.conn = sqlite3.connect(self.path)
            self.conn.execute('PRAGMA synchronous=NORMAL')
            self.conn.execute('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)')
            self.conn.execute('CREATE TABLE IF NOT EXISTS inode (dev INTEGER, ino INTEGER, size INTEGER, '
                              'mtime INTEGER, ctime INTEGER, hash BLOB, xattr BLOB, flags INTEGER, seen INTEGER, '
                              'PRIMARY KEY (dev, ino)) WITHOUT ROWID')
            row = self.conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None or row[0] != '%d:%s' % (INDEX_VERSION, ALGO):
                self.conn.execute('DELETE FROM inode')
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)",
                                  ('%d:%s' % (INDEX_VERSION, ALGO),))
            self.conn.commit()
        except sqlite3.Error as exc:
            raise VServerError('unify index %s is unusable (%s); remove it, the next run rebuilds it'
                               % (self.path, exc))

    def fresh(self, node):
        row = self.rows.get((node.dev, node.ino))
        if row and row[0] == node.size and row[1] == node.mtime and row[2] == node.ctime:
            return row
        return None

    def save(self, rows, drop):
        """Write the rows that changed (and refresh 'seen' monthly); forget rows unseen for 180 days."""
        now = int(time.time())
        write = []
        for row in rows:
            old = self.rows.get(row[:2])
            if old is None or tuple(old[:6]) != row[2:] or (old[6] or 0) < now - 30 * 86400:
                write.append(row + (now,))
        self._open()
        with self.conn:
            if drop:
                self.conn.executemany('DELETE FROM inode WHERE dev=? AND ino=?', list(drop))
            self.conn.executemany('INSERT OR REPLACE INTO inode VALUES (?,?,?,?,?,?,?,?,?)', write)
            self.conn.execute('DELETE FROM inode WHERE seen < ?', (now - 180 * 86400,))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- scanning ---------------------------------------------------------------------------------------

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
        self.budget = max(0, min(soft, 1 << 20) - 1024 - 4 * BATCH_FILES * WORKERS)

    def add(self, path, fd, st):
        with self.lock:
            return self._add(path, fd, st)

    def _add(self, path, fd, st):
        self.paths.append(path)
        self.ids.append((st.st_dev, st.st_ino))
        if self.kept < self.budget:
            self.kept += 1
            self.fds.append(fd)
        else:
            os.close(fd)
            self.fds.append(None)
        return len(self.paths) - 1

    def open(self, i):
        """A verified fd of directory ``i``; call ``release(i, fd)`` when done."""
        fd = self.fds[i]
        if fd is not None:
            return fd
        fd = os.open(self.paths[i], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.ids[i]:
            os.close(fd)
            raise OSError(errno.ESTALE, 'directory %s was replaced during the run' % self.paths[i])
        with self.lock:
            if self.fds[i] is None and self.kept < self.budget:
                self.fds[i] = fd
                self.kept += 1
        return fd

    def release(self, i, fd):
        if self.fds[i] != fd:
            os.close(fd)

    def path(self, entry):
        return self.paths[entry[0]] + '/' + entry[1]

    def close(self):
        for fd in self.fds:
            if fd is not None:
                os.close(fd)
        self.fds = [None] * len(self.fds)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.saved_limit)
        except (ValueError, OSError):
            pass


def open_entry(dirs, entry, flags=None):
    """Open the file named by a (dir index, name, ...) entry without following symlinks."""
    dfd = dirs.open(entry[0])
    try:
        return os.open(entry[1], O_READ if flags is None else flags, dir_fd=dfd)
    finally:
        dirs.release(entry[0], dfd)


def lstat_entry(dirs, entry):
    dfd = dirs.open(entry[0])
    try:
        return os.stat(entry[1], dir_fd=dfd, follow_symlinks=False)
    finally:
        dirs.release(entry[0], dfd)


class Node:
    """One inode seen in the scanned trees. ``paths`` holds (dir index, name, guest, mutable) entries."""
    __slots__ = ('dev', 'ino', 'size', 'mode', 'uid', 'gid', 'mtime', 'ctime', 'nlink', 'paths', 'guests',
                 'hash', 'xattr', 'flags', 'ours', 'mutable', 'alive', 'dirs', 'after')

    def __init__(self, st, dirs):
        self.dirs = dirs
        self.after = None  # fstat after we changed it, when no scanned path names it any more
        self.dev, self.ino, self.size = st.st_dev, st.st_ino, st.st_size
        self.mode, self.uid, self.gid = st.st_mode, st.st_uid, st.st_gid
        self.mtime, self.ctime, self.nlink = st.st_mtime_ns, st.st_ctime_ns, st.st_nlink
        self.paths = []
        self.guests = set()
        self.hash = self.xattr = self.flags = None
        self.ours = False
        self.mutable = False
        self.alive = True


class Scan:
    def __init__(self):
        self.nodes = {}
        self.files = 0
        self.skipped = collections.Counter()
        self.leftovers = []
        self.dirs = Dirs()


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(root, guest, mutable, rules, scan, busy, whole=False):
    """Add the regular files of one guest tree to ``scan`` (lstat only, one filesystem, no symlinks)."""
    skipped, files, leftovers = _walk(root, guest, mutable, rules, scan.dirs, busy, scan.nodes, whole)
    scan.skipped.update(skipped)
    scan.files += files
    scan.leftovers.extend(leftovers)


def _walk(root, guest, mutable, rules, dirs, busy, nodes, whole=False):
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise VServerError('root %s of guest %s cannot be opened as a directory: %s' % (root, guest, exc), 'guests')
    root_st = os.fstat(fd)
    dev = root_st.st_dev
    skipped = collections.Counter()
    leftovers = []
    files = 0
    if whole:
        rules = Rules([])
    literal, literal_dirs = rules.literal, rules.literal_dirs
    simple = not rules.has_include and rules.exclude == (None, None)
    # directories holding a literal pattern: elsewhere a file's verdict is its directory's (simple rules)
    parents = {p.rsplit('/', 1)[0] for p in literal | literal_dirs}
    verdict = rules.verdict
    entry_of = (guest, mutable)
    stack = [(dirs.add(root, fd, root_st), '', False)]
    while stack:
        index, rel, excluded = stack.pop()
        try:
            dfd = dirs.open(index)
        except OSError:
            skipped['unreadable'] += 1
            continue
        check = not simple or rel in parents
        try:
            try:
                entries = list(os.scandir(dfd))
            except OSError:
                skipped['unreadable'] += 1
                continue
            for entry in entries:
                name = entry.name
                if name.startswith(TMP_PREFIX) and TMP_RE.match(name):
                    leftovers.append((index, name))
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        sub = rel + '/' + name
                        if simple:
                            ex = excluded or sub in literal or sub in literal_dirs
                        else:
                            ex = verdict(sub, True, excluded)
                        if ex:
                            if not excluded:
                                skipped['excluded'] += 1
                            if not rules.may_include_below(sub):
                                continue
                        cfd = os.open(name, DIR_FLAGS, dir_fd=dfd)
                        st = os.fstat(cfd)
                        if st.st_dev != dev:
                            os.close(cfd)
                            skipped['other_filesystem'] += 1
                            continue
                        stack.append((dirs.add(dirs.paths[index] + '/' + name, cfd, st), sub, ex))
                        continue
                    if check:
                        sub = rel + '/' + name
                        ex = (excluded or sub in literal) if simple else verdict(sub, False, excluded)
                    else:
                        ex = excluded
                    if ex:
                        if not excluded:
                            skipped['excluded'] += 1
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        skipped['symlink' if entry.is_symlink() else 'special'] += 1
                        continue
                    st = entry.stat(follow_symlinks=False)
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
                node = nodes.get(key)
                if node is None:
                    node = nodes[key] = Node(st, dirs)
                node.paths.append((index, name) + entry_of)
                node.guests.add(guest)
                if mutable:
                    node.mutable = True
                files += 1
        finally:
            dirs.release(index, dfd)
    return skipped, files, leftovers


# --- content comparison -----------------------------------------------------------------------------

def _read_full(fd, size):
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


def partition(nodes, xattrs=True):
    """Split nodes (same size) into classes of byte-identical content (and equal xattrs), reading each
    file once.

    Returns [(sha256 digest, [nodes])]. Files that cannot be opened are left out. One hash object per
    class: identical files are hashed once.
    """
    fds = []
    byx = {}
    try:
        for node in nodes:
            fd = _open_node(node)
            if fd is None:
                continue
            fds.append(fd)
            if node.flags is None:
                try:
                    node.flags = get_flags(fd)
                except OSError:
                    node.flags = 0
            if xattrs:
                if node.xattr is None:
                    try:
                        node.xattr = xattr_key(fd)
                    except OSError:
                        continue
                byx.setdefault(node.xattr, []).append((node, fd))
            else:
                byx.setdefault(None, []).append((node, fd))
        classes = [(hashlib.new(ALGO), members) for members in byx.values()]
        size = nodes[0].size if nodes else 0
        step = min(CHUNK, max(size, 1))
        while True:
            new = []
            eof = True
            for h, group in classes:
                subs = []
                for node, fd in group:
                    chunk = _read_full(fd, step)
                    if chunk:
                        eof = False
                    for sub in subs:
                        if sub[0] == chunk:
                            sub[1].append((node, fd))
                            break
                    else:
                        subs.append((chunk, [(node, fd)]))
                for i, (chunk, grp) in enumerate(subs):
                    hh = h if i == len(subs) - 1 else h.copy()
                    hh.update(chunk)
                    new.append((hh, grp))
            classes = new
            if eof:
                break
        return [(h.digest(), [member[0] for member in group]) for h, group in classes]
    finally:
        for fd in fds:
            os.close(fd)


def _batches(nodes):
    size = max(1, min(nodes[0].size, CHUNK))
    per = max(2, min(BATCH_FILES, BATCH_BYTES // size))
    return [nodes[i:i + per] for i in range(0, len(nodes), per)]


def _prove(groups, index, stats, reflink_devs=()):
    """groups: lists of candidate nodes (same key). Returns lists of nodes proven byte-identical (len >= 2).

    For hardlinks the xattrs must be equal too; reflinked files keep their own inode and metadata."""
    jobs = []
    for group in groups:
        xattrs = group[0].dev not in reflink_devs
        for node in group:
            row = index.fresh(node)
            if row is not None and row[3] is not None and (row[4] is not None or not xattrs):
                node.hash, node.xattr = row[3], row[4]
        unknown = [n for n in group if n.hash is None]
        if unknown:
            jobs.extend((batch, xattrs) for batch in _batches(unknown))
    stats['hashed'] += sum(len(job[0]) for job in jobs)
    stats['bytes_hashed'] += sum(n.size for job in jobs for n in job[0])
    proven_of = {}
    if jobs:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for result in pool.map(lambda job: partition(*job), jobs):
                for digest, members in result:
                    for node in members:
                        node.hash = digest
                        proven_of[id(node)] = members
    out = []
    for group in groups:
        xattrs = group[0].dev not in reflink_devs
        sets = {}
        seen = set()
        for node in group:
            if node.hash is None or id(node) in seen:
                continue
            members = proven_of.get(id(node)) or [node]
            seen.update(id(m) for m in members)
            sets.setdefault((node.hash, node.xattr if xattrs else None), []).append(members)
        for lists in sets.values():
            if len(lists) == 1:
                if len(lists[0]) > 1:
                    out.append(lists[0])
                continue
            if not any(n.mutable for members in lists for n in members):
                continue
            # Same hash, not read together (index hits, separate batches): prove with a byte compare,
            # or, for reflinked files, by their extents being the very same blocks.
            merged = list(lists[0])
            rest = []
            for other in lists[1:]:
                if merged[0].dev in reflink_devs and _same_extents(merged[0], other[0]):
                    merged.extend(other)
                    continue
                result = partition([merged[0], other[0]], xattrs)
                stats['verified'] += 1
                if len(result) == 1 and len(result[0][1]) == 2:
                    merged.extend(other)
                else:
                    rest.append(other)
            for members in [merged] + rest:
                if len(members) > 1:
                    out.append(members)
    return out


def _same_extents(a, b):
    fa = _open_node(a)
    fb = _open_node(b) if fa is not None else None
    try:
        if fa is None or fb is None:
            return False
        ea = extents(fa)
        return bool(ea) and ea == extents(fb)
    finally:
        for fd in (fa, fb):
            if fd is not None:
                os.close(fd)


# --- the manager ------------------------------------------------------------------------------------

def _select(paths, p):
    docs, broken = _config.scan(paths, _config.SECTIONS)  # the unify sections too: this is their reader
    if p['guests'] == ['all']:
        if p['state'] == 'absent':
            selected = sorted(docs)
        else:
            selected = sorted(n for n, d in docs.items() if (d.get('unify') or {}).get('state') != 'absent')
    else:
        selected = []
        for name in p['guests']:
            if name in broken:
                raise VServerError('guests: %s' % broken[name], 'guests')
            if name not in docs:
                raise VServerError('guests: no guest named %r on this host (known: %s)'
                                   % (name, ', '.join(sorted(docs)) or 'none'), 'guests')
            if name not in selected:
                selected.append(name)
    sources = []
    if p['state'] == 'present':
        sources = sorted(n for n, d in docs.items() if n not in selected and
                         (d.get('unify') or {}).get('state') == 'present')
    roots = {}
    for name in selected + sources:
        root = docs[name].get('root')
        if not root:
            raise VServerError('guest %s has no root in its config' % name, 'guests')
        roots[name] = os.path.realpath(root)
    items = sorted(roots.items(), key=lambda kv: kv[1])
    for (a, ra), (b, rb) in zip(items, items[1:]):
        if rb == ra or rb.startswith(ra.rstrip('/') + '/'):
            raise VServerError('guests: the trees of %s (%s) and %s (%s) overlap' % (a, ra, b, rb), 'guests')
    return docs, selected, sources, roots


def _section(p):
    if p['state'] == 'absent':
        return {'state': 'absent'}
    return {'state': 'present', 'method': p['method'], 'protect': p['protect']}


def _shared_counts(nodes):
    """Paths whose inode has two scanned paths or more, and the bytes that saves over private copies."""
    paths = shared = 0
    for node in nodes:
        k = len(node.paths)
        if node.alive and k > 1:
            paths += k
            shared += node.size * (k - 1)
    return {'shared_paths': paths, 'bytes_shared': shared}


def ensure(paths, params, check_mode=False):
    """Unify (state=present) or de-unify (state=absent) the selected guests. Returns the module result."""
    p = validate(params)
    with HostLock(paths):
        docs, selected, sources, roots = _select(paths, p)
        if p['state'] == 'absent' and len(selected) > 1:
            # One guest at a time. De-unification gives private copies to the inodes a guest shares with names
            # outside its scan; de-unified together, two guests would keep the inodes they share with each other,
            # only no longer immutable: root in one guest could then write into the other's files.
            result = _merge([_run(paths, p, docs, [name], [], {name: roots[name]}, check_mode)
                             for name in selected])
        else:
            result = _run(paths, p, docs, selected, sources, roots, check_mode)
        before = {name: docs[name].get('unify') for name in selected}
        after = {name: _section(p) for name in selected}
        section_changed = any(before[n] != after[n] for n in selected)
        if section_changed and not check_mode:
            for name in selected:
                if before[name] != after[name]:
                    doc = _config.load(paths, name)
                    doc['unify'] = after[name]
                    _config.save(paths, doc)
        result['changed'] = bool(result.pop('_changed') or section_changed)
        result['diff'] = {'before': dict(result.pop('_before'), guests=before),
                          'after': dict(result.pop('_after'), guests=after)}
        result['guests'] = selected
        result['sources'] = sources
        return result


def _merge(results):
    """One result from the per-guest de-unification runs (counts added up)."""
    out = dict(results[-1])
    for key in ('deunified', 'bytes_copied', 'unprotected', 'leftovers_removed', 'files_scanned', 'hashed',
                'bytes_hashed', 'shared_paths', 'bytes_shared'):
        out[key] = sum(r[key] for r in results)
    out['_changed'] = any(r['_changed'] for r in results)
    for key in ('_before', '_after'):
        out[key] = {k: sum(r[key][k] for r in results) for k in results[0][key]}
    skipped = collections.Counter()
    timings = collections.Counter()
    for r in results:
        skipped.update(r['skipped_by_reason'])
        timings.update(r['timings'])
    out['skipped_by_reason'] = dict(skipped)
    out['timings'] = {k: round(v, 4) for k, v in timings.items()}
    out['timings']['frozen_max'] = max(r['timings'].get('frozen_max', 0) for r in results)
    out['freezes'] = sum(r['freezes'] for r in results)
    out['seconds'] = round(sum(r['seconds'] for r in results), 3)
    return out


def _new_stats():
    return collections.Counter()


def _run(paths, p, docs, selected, sources, roots, check_mode):
    started = time.monotonic()
    index_path = os.path.join(paths.config_dir, INDEX_NAME)
    index = Index(index_path)
    scan = Scan()
    try:
        busy = open_for_write()
        jobs = []
        for name in selected + sources:
            root = roots[name]
            if p['state'] == 'absent':
                jobs.append((root, name, True, None, True))
            else:
                jobs.append((root, name, name in selected, Rules(p['exclude'], p['include'], conffiles(root))))
        # one tree after the other: the walk is CPU-bound Python (threads only take turns on the GIL, and
        # child processes measured slower here than the merge they save)
        for job in jobs:
            walk(*(job[:4] + (scan, busy) + job[4:]))
        timings = {'scan': time.monotonic() - started}
        index.load({n.dev for n in scan.nodes.values()})
        for node in scan.nodes.values():
            row = index.rows.get((node.dev, node.ino))
            if row is not None:
                node.ours = bool((row[5] or 0) & OURS_IMMUTABLE)
        dev_method = _probe(scan, p['method']) if p['state'] == 'present' else {}
        guard = Freezer(paths)
        leftovers = _remove_leftovers(scan, check_mode, guard)  # the first write of the run
        stats = _new_stats()
        stats['_timings'] = timings
        if p['state'] == 'absent':
            out = _deunify(scan, index, p, stats, check_mode, guard)
        else:
            out = _unify(scan, index, p, stats, check_mode, dev_method, guard)
        out['leftovers_removed'] = leftovers
        out['_changed'] = out['_changed'] or leftovers > 0
        out['files_scanned'] = scan.files
        skipped = dict(scan.skipped)
        skipped.update({k[5:]: v for k, v in stats.items() if k.startswith('skip_') and v})
        out['skipped_by_reason'] = skipped
        out['hashed'] = stats['hashed']
        out['bytes_hashed'] = stats['bytes_hashed']
        out['seconds'] = round(time.monotonic() - started, 3)
        timings['frozen'] = guard.frozen_seconds
        timings['frozen_max'] = guard.frozen_max
        out['freezes'] = guard.frozen_count
        out['timings'] = {k: round(v, 4) for k, v in timings.items()}
        return out
    finally:
        scan.dirs.close()
        index.close()


def _remove_leftovers(scan, check_mode, guard):
    """Temp names of a killed run: extra links to a complete file, or unfinished private copies.

    A leftover link to a protected (immutable) inode is removed with every running guest frozen: the inode's
    other names may be in any tree, and its flag is lifted only for the unlink."""
    count = 0
    dirs = scan.dirs
    for entry in scan.leftovers:
        try:
            dfd = dirs.open(entry[0])
        except OSError:
            continue
        try:
            st = os.stat(entry[1], dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            count += 1
            if check_mode:
                continue
            node = scan.nodes.get((st.st_dev, st.st_ino))
            try:
                os.unlink(entry[1], dir_fd=dfd)
            except PermissionError:
                unlink_protected(dfd, entry[1], guard)
            if node is not None:
                node.nlink -= 1
        except OSError:
            continue
        finally:
            dirs.release(entry[0], dfd)
    return count


def _open_node(node):
    """An fd on the node's inode, opened through one of its paths (None if none still names it)."""
    for entry in node.paths:
        try:
            fd = open_entry(node.dirs, entry)
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (node.dev, node.ino) and st.st_size == node.size:
            return fd
        os.close(fd)
    return None


def _node_flags(node, index):
    if node.flags is None:
        row = index.fresh(node)
        if row is not None and row[5] is not None and row[5] & FLAGS_KNOWN:
            node.flags = FS_IMMUTABLE_FL if row[5] & FLAGS_IMMUTABLE else 0
        else:
            fd = _open_node(node)
            try:
                node.flags = get_flags(fd) if fd is not None else 0
            except OSError:
                node.flags = 0
            finally:
                if fd is not None:
                    os.close(fd)
    return node.flags


def _probe(scan, method):
    """The method per device: hardlink, or reflink where a read-only FIDEDUPERANGE probe says it works."""
    groups = collections.defaultdict(list)
    for node in scan.nodes.values():
        groups[(node.dev, node.size)].append(node)
    dev_method = {}
    probe_nodes = {}
    for (dev, size), group in groups.items():
        if len(group) > 1:
            probe_nodes.setdefault(dev, group[0])
    for dev, node in probe_nodes.items():
        if method == 'hardlink':
            dev_method[dev] = 'hardlink'
            continue
        fd = _open_node(node)
        ok = False
        if fd is not None:
            try:
                ok = reflink_supported(fd, node.size)
            finally:
                os.close(fd)
        if method == 'reflink' and not ok:
            raise VServerError('method: reflink needs a filesystem that shares extents (XFS with reflink=1, '
                               'btrfs); the tree at %s does not; use method hardlink or auto'
                               % node.dirs.path(node.paths[0]), 'method')
        dev_method[dev] = 'reflink' if ok else 'hardlink'
    return dev_method


def _unify(scan, index, p, stats, check_mode, dev_method, guard=None):
    nodes = list(scan.nodes.values())
    before = _shared_counts(nodes)
    method = p['method']
    # 1. candidate groups (device and size first; metadata unless reflinking separate inodes)
    groups = collections.defaultdict(list)
    for node in nodes:
        groups[(node.dev, node.size)].append(node)
    cands = []
    for (dev, size), group in groups.items():
        if len(group) < 2:
            continue
        if dev_method.get(dev) == 'reflink':
            sub = {(): group}
        else:
            sub = collections.defaultdict(list)
            for node in group:
                sub[(node.mode, node.uid, node.gid, None if p['ignore_mtime'] else node.mtime)].append(node)
        for grp in sub.values():
            if len(grp) < 2:
                continue
            if any(n.mutable for n in grp):
                cands.append(grp)
    stats['candidates'] = sum(len(n.paths) for g in cands for n in g)
    mark = time.monotonic()
    classes = _prove(cands, index, stats, {d for d, m in dev_method.items() if m == 'reflink'})
    stats['_timings']['prove'] = time.monotonic() - mark
    mark = time.monotonic()
    # 2. act
    linked = saved = 0
    touched = set()
    dropped = set()

    def act(cls):
        local = collections.Counter()
        try:
            if dev_method.get(cls[0].dev) == 'reflink':
                n, s = _reflink_class(cls, local, check_mode, touched)
            else:
                n, s = _link_class(cls, index, local, check_mode, touched, dropped, guard)
        except OSError as exc:  # e.g. flags refused on this filesystem: leave the class alone, go on
            local[_reason(exc)] += sum(len(node.paths) for node in cls)
            return 0, 0, local
        return n, s, local

    # Classes share no inode: several threads keep the filesystem's journal busy while one waits.
    with ThreadPoolExecutor(max_workers=1 if check_mode else ACT_WORKERS) as pool:
        for n, s, local in pool.map(act, classes):
            linked += n
            saved += s
            stats.update(local)
    stats['_timings']['act'] = time.monotonic() - mark
    mark = time.monotonic()
    # 3. protection of hardlinked inodes shared by two guests or more
    protected = unprotected = 0
    for node in nodes:
        if not node.alive or dev_method.get(node.dev) == 'reflink':
            continue
        all_seen = node.nlink <= len(node.paths)
        if not all_seen:
            continue  # names outside the scanned trees: never modified
        if p['protect'] and len(node.guests) > 1:
            want = True
        elif node.ours:
            want = False
        else:
            continue
        if not want and not node.mutable:
            continue
        flags = _node_flags(node, index)
        have = bool(flags & FS_IMMUTABLE_FL)
        if have == want:
            if node.ours != want:  # e.g. set by a run that was killed before it saved the index
                node.ours = want
                touched.add(node)
            continue
        if check_mode:
            protected += want
            unprotected += not want
            continue
        fd = _open_node(node)
        if fd is None:
            stats['skip_unreadable'] += 1
            continue
        try:
            set_immutable(fd, want)
            node.ours = want
            node.flags = (flags | FS_IMMUTABLE_FL) if want else (flags & ~FS_IMMUTABLE_FL)
            protected += want
            unprotected += not want
            touched.add(node)
        except OSError as exc:
            stats['skip_protect_' + errno.errorcode.get(exc.errno, str(exc.errno)).lower()] += 1
        finally:
            os.close(fd)
    stats['_timings']['protect'] = time.monotonic() - mark
    mark = time.monotonic()
    after = _shared_counts(nodes)
    if not check_mode:
        _save_index(index, nodes, touched, dropped)
    stats['_timings']['index'] = time.monotonic() - mark
    return {'_changed': bool(linked or protected or unprotected), '_before': before, '_after': after,
            'candidates': stats['candidates'], 'linked': linked, 'bytes_saved': saved,
            'protected': protected, 'unprotected': unprotected, 'verified': stats['verified'],
            'methods': sorted(set(dev_method.values())) or [method if method != 'auto' else 'hardlink'],
            'shared_paths': after['shared_paths'], 'bytes_shared': after['bytes_shared']}


def _save_index(index, nodes, touched, dropped):
    rows = []
    for node in nodes:
        if not node.alive:
            continue
        prev = index.fresh(node)  # keep what the index knew (also when the ctime moved because of us)
        if prev is not None:
            node.hash = node.hash or prev[3]
            node.xattr = node.xattr if node.xattr is not None else prev[4]
        if node in touched:
            st = node.after
            if st is None:
                try:
                    st = lstat_entry(node.dirs, node.paths[0])
                except (OSError, IndexError):
                    continue
            if (st.st_dev, st.st_ino) != (node.dev, node.ino):
                continue
            node.ctime, node.mtime, node.size = st.st_ctime_ns, st.st_mtime_ns, st.st_size
        if node.hash is None and node.xattr is None and node.flags is None:
            continue
        flags = None
        if node.flags is not None:
            flags = FLAGS_KNOWN | (FLAGS_IMMUTABLE if node.flags & FS_IMMUTABLE_FL else 0) | \
                (OURS_IMMUTABLE if node.ours and node.flags & FS_IMMUTABLE_FL else 0)
        rows.append((node.dev, node.ino, node.size, node.mtime, node.ctime, node.hash, node.xattr, flags))
    index.save(rows, dropped)


def _replace_with_link(dirs, target_fd, entry, node):
    """Atomically make ``entry`` a hardlink to the inode open as ``target_fd`` (if it still names ``node``)."""
    dfd = dirs.open(entry[0])
    tmp = TMP_PREFIX + secrets.token_hex(8) + '.link'
    try:
        os.link('/proc/self/fd/%d' % target_fd, tmp, dst_dir_fd=dfd, follow_symlinks=True)
        try:
            st = os.stat(entry[1], dir_fd=dfd, follow_symlinks=False)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (node.dev, node.ino, node.size, node.mtime):
                raise OSError(errno.ESTALE, 'changed during the run')
            os.rename(tmp, entry[1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        dirs.release(entry[0], dfd)


def _reason(exc):
    if exc.errno == errno.EMLINK:
        return 'skip_link_limit'
    if exc.errno == errno.ESTALE:
        return 'skip_changed_during_run'
    return 'skip_' + errno.errorcode.get(exc.errno, 'error').lower()


def _move(target, node, moved):
    target.paths.extend(moved)
    target.guests.update(e[2] for e in moved)
    target.nlink += len(moved)
    node.paths = [e for e in node.paths if e not in moved]
    node.guests = {e[2] for e in node.paths}
    node.nlink -= len(moved)


def _content_digest(fd):
    """SHA-256 of a file's bytes, read through ``fd`` from offset 0 (as ``partition`` hashes them)."""
    h = hashlib.new(ALGO)
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return h.digest()
        h.update(chunk)
        offset += len(chunk)


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
        same = _content_digest(fd) == target.hash and (not xattrs or xattr_key(fd) == target.xattr)
    if not same:
        stats['skip_changed_during_run' if quiet else 'skip_open_for_write'] += len(target.paths)
    return same


def _link_class(cls, index, stats, check_mode, touched, dropped, guard=None):
    """Hardlink every mutable path of the class to one target inode. Returns (paths linked, bytes saved).

    An inode with names outside the scanned trees (more links than paths seen) is never the target and is never
    changed. When a running guest reaches an inode of the class (``guard``: the run's Freezer), the target is
    sealed first (``_seal``) and the links are made with those guests frozen: a flag lifted for the link is back
    before any of them runs again."""
    usable = []
    for node in cls:
        if node.nlink > len(node.paths):
            stats['skip_linked_outside'] += len(node.paths)
            continue
        flags = _node_flags(node, index)
        if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL) and not node.ours:
            stats['skip_immutable'] += len(node.paths)
            continue
        usable.append(node)
    if len(usable) < 2:
        return 0, 0
    # The target: an inode reachable from guests we may not change, then the one with the most links.
    usable.sort(key=lambda n: (any(not e[3] for e in n.paths), len(n.paths), n.nlink, -n.ino), reverse=True)
    target = usable[0]
    others = [n for n in usable[1:] if n.mutable]
    if not others:
        return 0, 0
    linked = saved = 0
    if check_mode:
        for node in others:
            mine = [e for e in node.paths if e[3]]
            linked += len(mine)
            _move(target, node, mine)
            if not node.paths and node.nlink <= 0:
                node.alive = False
                saved += node.size
        return linked, saved
    running = guard.running(set(target.guests).union(*(n.guests for n in others))) if guard else []
    fd = _open_node(target)
    if fd is None:
        stats['skip_unreadable'] += sum(len(n.paths) for n in others)
        return 0, 0
    try:
        if running:
            touched.add(target)
            if not _seal(target, fd, guard, guard.running(target.guests), stats, True):
                return 0, 0
            if not no_writer(fd):  # e.g. a writer from before the inode became immutable
                stats['skip_open_for_write'] += len(target.paths)
                return 0, 0
            with guard.frozen(running):
                return _relink(target, fd, others, stats, touched, dropped)
        return _relink(target, fd, others, stats, touched, dropped)
    finally:
        os.close(fd)


def _relink(target, fd, others, stats, touched, dropped):
    """The links of ``_link_class``; protected (immutable) inodes get their flag cleared around the links and
    set again before returning."""
    linked = saved = 0
    cleared = []
    try:
        if target.flags & FS_IMMUTABLE_FL:
            set_immutable(fd, False)
            target.flags &= ~FS_IMMUTABLE_FL
            cleared.append((target, fd, False))
        for node in others:
            if node.flags & FS_IMMUTABLE_FL:
                nfd = _open_node(node)
                if nfd is None:
                    continue
                cleared.append((node, nfd, True))
                set_immutable(nfd, False)
                node.flags &= ~FS_IMMUTABLE_FL
            moved = []
            for entry in [e for e in node.paths if e[3]]:
                try:
                    _replace_with_link(node.dirs, fd, entry, node)
                except OSError as exc:
                    stats[_reason(exc)] += 1
                    continue
                moved.append(entry)
            linked += len(moved)
            _move(target, node, moved)
            touched.add(node)
            if not node.paths and node.nlink <= 0:
                node.alive = False
                saved += node.size
                dropped.add((node.dev, node.ino))
        touched.add(target)
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


def _reflink_class(cls, stats, check_mode, touched):
    """FIDEDUPERANGE every mutable inode of the class onto one source. Returns (files deduped, bytes)."""
    cls = sorted(cls, key=lambda n: (any(not e[3] for e in n.paths), n.nlink, -n.ino), reverse=True)
    src = cls[0]
    sfd = _open_node(src)
    if sfd is None:
        return 0, 0
    done = saved = 0
    try:
        src_ext = extents(sfd)
        for node in cls[1:]:
            if not node.mutable:
                continue
            if node.nlink > len(node.paths):  # names outside the scanned trees: never changed
                stats['skip_linked_outside'] += len(node.paths)
                continue
            dfd = _open_node(node)
            if dfd is None:
                continue
            try:
                if src_ext and extents(dfd) == src_ext:
                    continue  # already sharing every extent
                if get_flags(dfd) & (FS_IMMUTABLE_FL | FS_APPEND_FL):
                    stats['skip_immutable'] += len(node.paths)
                    continue
                if check_mode:
                    done += 1
                    saved += node.size
                    continue
                try:
                    dedupe(sfd, dfd, node.size)
                except OSError as exc:
                    stats['skip_dedupe_' + errno.errorcode.get(exc.errno, 'error').lower()] += 1
                    continue
                done += 1
                saved += node.size
                touched.add(node)
            finally:
                os.close(dfd)
    finally:
        os.close(sfd)
    return done, saved


# --- de-unification ---------------------------------------------------------------------------------

def _copy_private(node, stats):
    """Write a private copy of ``node`` under a temp name next to its first path.

    Returns (dir index, temp name, fd of the copy); nothing is renamed yet."""
    dirs = node.dirs
    sfd = _open_node(node)
    if sfd is None:
        raise OSError(errno.ENOENT, 'vanished')
    entry = node.paths[0]
    ddir = dirs.open(entry[0])
    tmp = TMP_PREFIX + secrets.token_hex(8) + '.copy'
    dfd = None
    try:
        st = os.fstat(sfd)
        dfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=ddir)
        left = st.st_size
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
        # chown first (it clears setuid bits and file capabilities), then xattrs, then the mode
        os.fchown(dfd, st.st_uid, st.st_gid)
        for name in os.listxattr(sfd):
            os.setxattr(dfd, name, os.getxattr(sfd, name))
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        stats['bytes_copied'] += st.st_size
        return entry[0], tmp, dfd
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
        dirs.release(entry[0], ddir)


def _outside(nodes):
    shared = [n for n in nodes if n.alive and n.paths and n.nlink > len(n.paths)]
    return {'shared_paths': sum(len(n.paths) for n in shared), 'bytes_shared': sum(n.size for n in shared)}


def _deunify(scan, index, p, stats, check_mode, guard):
    nodes = list(scan.nodes.values())
    before = _outside(nodes)
    shared = [n for n in nodes if n.nlink > len(n.paths)]
    ours = [n for n in nodes if n.nlink <= len(n.paths) and n.ours]
    copied = unprotected = 0
    if check_mode:
        copied = sum(len(n.paths) for n in shared)
        unprotected = sum(1 for n in ours if _node_flags(n, index) & FS_IMMUTABLE_FL)
        for n in shared:
            stats['bytes_copied'] += n.size
        after = {'shared_paths': 0, 'bytes_shared': 0}
    else:
        touched = set()
        dropped = set()
        batch = []

        def flush():
            nonlocal copied
            if not batch:
                return
            os.sync()  # the copies' data is on disk before a rename makes them the file
            # The shared inodes lose their flag for the renames: every running guest (the sharers may be any of
            # them, this one included) stays frozen until it is back.
            for i in range(0, len(batch), FREEZE_BATCH):
                part = batch[i:i + FREEZE_BATCH]
                try:
                    with guard.frozen():
                        for node, copy in part:
                            try:
                                copied += _install_copy(node, copy, touched, dropped)
                            except OSError as exc:
                                stats[_reason(exc)] += len(node.paths)
                except OSError as exc:  # a guest did not freeze: nothing of this part was renamed
                    stats[_reason(exc)] += sum(len(node.paths) for node, dummy in part)
            for node, copy in batch:  # a copy not renamed (failed, or no freeze) goes
                os.close(copy[2])
                try:
                    dfd = node.dirs.open(copy[0])
                except OSError:
                    continue
                try:
                    os.unlink(copy[1], dir_fd=dfd)
                except OSError:
                    pass
                finally:
                    node.dirs.release(copy[0], dfd)
            batch.clear()

        for node in shared:
            try:
                batch.append((node, _copy_private(node, stats)))
            except OSError as exc:
                stats[_reason(exc)] += len(node.paths)
            if len(batch) >= 256:
                flush()
        flush()
        for node in ours:
            fd = _open_node(node)
            if fd is None:
                continue
            try:
                if set_immutable(fd, False):
                    unprotected += 1
                node.ours = False
                node.flags = get_flags(fd)
                touched.add(node)
            except OSError as exc:
                stats[_reason(exc)] += 1
            finally:
                os.close(fd)
        _save_index(index, nodes, touched, dropped)
        after = _outside(nodes)
    return {'_changed': bool(copied or unprotected), '_before': before, '_after': after,
            'deunified': copied, 'bytes_copied': stats['bytes_copied'], 'unprotected': unprotected,
            'shared_paths': after['shared_paths'], 'bytes_shared': after['bytes_shared']}


def _install_copy(node, copy, touched, dropped):
    """Rename the private copy over the guest's paths of ``node`` (internal hardlinks kept)."""
    dirs = node.dirs
    fd = _open_node(node)
    if fd is None:
        raise OSError(errno.ENOENT, 'vanished')
    cdir, tmp, cfd = copy
    restore = False
    try:
        if get_flags(fd) & FS_IMMUTABLE_FL:
            set_immutable(fd, False)  # else the rename over it is refused
            restore = True
        done = 0
        first = True
        moved = []
        for entry in list(node.paths):
            dfd = dirs.open(entry[0])
            try:
                st = os.stat(entry[1], dir_fd=dfd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != (node.dev, node.ino):
                    continue
                if first and entry[0] == cdir:
                    os.rename(tmp, entry[1], src_dir_fd=dfd, dst_dir_fd=dfd)
                else:
                    link = TMP_PREFIX + secrets.token_hex(8) + '.link'
                    os.link('/proc/self/fd/%d' % cfd, link, dst_dir_fd=dfd, follow_symlinks=True)
                    try:
                        os.rename(link, entry[1], src_dir_fd=dfd, dst_dir_fd=dfd)
                    except BaseException:
                        os.unlink(link, dir_fd=dfd)
                        raise
                first = False
                done += 1
                moved.append(entry)
            finally:
                dirs.release(entry[0], dfd)
        if restore and os.fstat(fd).st_nlink > 1:
            set_immutable(fd, True)  # still shared by other guests
        node.flags = get_flags(fd)  # what the index keeps (with ``ours``) for the next run
        node.after = os.fstat(fd)
        node.paths = [e for e in node.paths if e not in moved]
        if node.after.st_nlink == 0:
            node.alive = False
            dropped.add((node.dev, node.ino))
        else:
            touched.add(node)
        return done
    finally:
        os.close(fd)
