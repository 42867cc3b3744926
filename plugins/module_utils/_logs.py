# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the size cap of the guests' console logs (LOG_DIR/NAME.log).

A guest's init gets LOG_DIR/NAME.log as its stdout and stderr (opened by the host, O_APPEND): every process of
the guest can write to it (/proc/1/fd/1), outside any disk limit of the guest. No process runs per guest to relay
it; instead one host process (vserver-supervise, or under systemd its --logs mode in vserver-logs.service) watches
LOG_DIR with inotify and, as soon as a log passes the cap, copies its last CAP bytes to NAME.log.1 and truncates
NAME.log to zero (copytruncate): the guest's next write lands at the start of the file (O_APPEND). A start caps
the log too. Every rotation holds LOG_DIR/.cap.lock (two watchers, or a watcher and a start, never rotate the same
log at once); a watcher holds LOG_DIR/.watch.lock shared while it runs (``watching`` asks whether one does). Both
lock files are the host's: a guest, which reaches only its log's open file, cannot take them.
See docs/security.md "Guest console logs".
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import stat
import struct
import time

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
from ansible_collections.vserver.core.plugins.module_utils._common import (
    DEFAULTS_FILE, VServerError, read_defaults_file)

LOG_MAX_VAR = 'VSERVER_LOG_MAX'
LOG_MAX_DEFAULT = 16 << 20
LOG_MAX_MIN = 64 << 10
COPY_EVERY = 1.0  # seconds: at most one copy to NAME.log.1 per log and second; faster floods are truncated only
SIZE_RE = re.compile(r'^([0-9]+)([KMG]?)$')
CAP_LOCK = '.cap.lock'
WATCH_LOCK = '.watch.lock'
_EVENT = struct.Struct('iIII')


def log_max(defaults_file: str = DEFAULTS_FILE) -> int:
    """The cap in bytes: VSERVER_LOG_MAX from the environment or the host's defaults file (a number of bytes with
    an optional K, M or G), else 16 MiB; at least 64 KiB."""
    raw = os.environ.get(LOG_MAX_VAR) or read_defaults_file(defaults_file, keys=(LOG_MAX_VAR,)).get(LOG_MAX_VAR)
    if not raw:
        return LOG_MAX_DEFAULT
    match = SIZE_RE.match(raw.strip().upper())
    if not match:
        raise VServerError('%s must be a size in bytes with an optional K, M or G (got %r)' % (LOG_MAX_VAR, raw),
                           LOG_MAX_VAR)
    value = int(match.group(1)) << {'': 0, 'K': 10, 'M': 20, 'G': 30}[match.group(2)]
    return max(value, LOG_MAX_MIN)


def cap(path: str, limit: int, keep: bool = True) -> bool:
    """If the log PATH holds more than LIMIT bytes: its last LIMIT bytes go to PATH.1 (when ``keep``), then PATH
    is truncated to zero. Returns True if it was. What the guest writes between the copy and the truncation is
    lost (copytruncate's known gap). Under LOG_DIR/.cap.lock: the size is read, the tail copied and the log
    truncated by one process at a time (else a second one could copy from past the first one's truncation and
    replace PATH.1 with a short tail, or write into the same PATH.1.tmp)."""
    lock = _lock(os.path.dirname(path), CAP_LOCK, fcntl.LOCK_EX)
    try:
        return _cap_locked(path, limit, keep)
    finally:
        os.close(lock)


def _cap_locked(path, limit, keep):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= limit:
            return False
        if keep:
            _keep_tail(fd, path + '.1', st.st_size, limit)
        os.ftruncate(fd, 0)
        return True
    finally:
        os.close(fd)


def _lock(log_dir, name, how):
    """An fd of LOG_DIR/NAME (created 0600) holding flock HOW; the caller closes it to let go."""
    fd = os.open(os.path.join(log_dir, name), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


def watching(log_dir: str) -> bool:
    """True while a watcher (vserver-supervise, any mode but --once and --watch) keeps LOG_DIR's logs capped."""
    try:
        fd = os.open(os.path.join(log_dir, WATCH_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _keep_tail(fd, dest, size, limit):
    tmp = dest + '.tmp'
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        offset = size - limit
        left = limit
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 20), offset)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
            offset += len(chunk)
            left -= len(chunk)
    finally:
        os.close(out)
    os.rename(tmp, dest)


class Watcher:
    """inotify on LOG_DIR: ``wait(timeout)`` returns the names of the guest logs written since, ``cap_all`` caps
    them. While it exists it holds LOG_DIR/.watch.lock shared (see ``watching``)."""

    def __init__(self, log_dir, limit):
        self.log_dir = log_dir
        self.limit = limit
        self.copied = {}
        os.makedirs(log_dir, mode=0o750, exist_ok=True)
        self.fd = K.inotify_watch(log_dir, K.IN_MODIFY)
        self.held = _lock(log_dir, WATCH_LOCK, fcntl.LOCK_SH)

    def wait(self, timeout):
        ready = select.select([self.fd], [], [], timeout)[0]
        names = set()
        while ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise
            offset = 0
            while offset < len(data):
                dummy, dummy, dummy, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b'\0').decode(errors='replace')
                offset += _EVENT.size + length
                if name.endswith('.log'):
                    names.add(name)
        return names

    def cap_all(self, names):
        now = time.monotonic()
        for name in names:
            keep = now - self.copied.get(name, -COPY_EVERY) >= COPY_EVERY
            if cap(os.path.join(self.log_dir, name), self.limit, keep) and keep:
                self.copied[name] = now

    def close(self):
        os.close(self.fd)
        os.close(self.held)
