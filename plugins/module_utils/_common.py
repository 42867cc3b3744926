# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: errors, host paths, validators, atomic files and the host lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from typing import Any

NAME_RE = re.compile(r'^[a-z0-9_-][a-z0-9_.-]{0,62}$')
XID_MIN = 2
XID_MAX = 49151

DEFAULTS = {
    'config_dir': '/etc/vservers',
    'run_dir': '/run/vservers',
    'tree_dir': '/var/lib/vservers',
    'log_dir': '/var/log/vservers',
    'cgroup_parent': 'vservers',
}
ENV = {key: 'VSERVER_' + key.upper() for key in DEFAULTS}
CGROUP_PARENT_RE = re.compile(r'^[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*$')


class VServerError(Exception):
    """A failure to report to the user. ``field`` names the offending option, if any."""

    def __init__(self, msg, field=None):
        super().__init__(msg)
        self.field = field


DEFAULTS_FILE = '/etc/default/vserver'


def read_defaults_file(path=DEFAULTS_FILE, keys=None):
    """VSERVER_*=VALUE lines of the host's defaults file (written by the host role), as a dict (the host roots,
    or the variables named in ``keys``)."""
    keys = ENV.values() if keys is None else keys
    out = {}
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except (FileNotFoundError, PermissionError):
        return out
    for line in lines:
        key, eq, value = line.strip().partition('=')
        if eq and key in keys:
            out[key] = value.strip().strip('"\'')
    return out


class Paths:
    """Where guest state lives on a host. Each root comes from, in order: the option given, the VSERVER_*
    environment variable, the host's defaults file (/etc/default/vserver, written by the host role), the
    built-in default."""

    def __init__(self, config_dir=None, run_dir=None, tree_dir=None, log_dir=None, cgroup_parent=None,
                 defaults_file=DEFAULTS_FILE):
        given = dict(config_dir=config_dir, run_dir=run_dir, tree_dir=tree_dir, log_dir=log_dir,
                     cgroup_parent=cgroup_parent)
        host = read_defaults_file(defaults_file) if defaults_file else {}
        for key, default in DEFAULTS.items():
            value = given[key] or os.environ.get(ENV[key]) or host.get(ENV[key]) or default
            if key == 'cgroup_parent':
                if not CGROUP_PARENT_RE.match(value) or any(p in ('.', '..') for p in value.split('/')):
                    raise VServerError('cgroup_parent must be a relative cgroup path of letters, digits, '
                                       '"_", ".", "@" and "-" (got %r)' % value, 'cgroup_parent')
                if value.split('/')[0] == 'hold':
                    # under systemd, vservers.service/hold is the leaf of the unit's idle process
                    raise VServerError('cgroup_parent must not start with "hold" (reserved under systemd)',
                                       'cgroup_parent')
            elif not os.path.isabs(value):
                raise VServerError('%s must be an absolute path (got %r)' % (key, value), key)
            else:
                value = os.path.normpath(value)
            setattr(self, key, value)

    def as_dict(self):
        return {key: getattr(self, key) for key in DEFAULTS}

    def config_file(self, name):
        return os.path.join(self.config_dir, name + '.json')

    def runtime(self, name):
        return os.path.join(self.run_dir, name)

    def log_file(self, name):
        return os.path.join(self.log_dir, name + '.log')

    def autostart_mark(self, name):
        """The boot mark of a guest (``_mgr_guests.autostart_dir``/NAME): supervisor and units start marked guests."""
        return os.path.join(self.config_dir, 'autostart', name)

    def default_root(self, name):
        return os.path.join(self.tree_dir, name)


def check_name(name: Any, field: str = 'name') -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or '..' in name:
        raise VServerError(
            '%s must be 1 to 63 characters of lowercase letters, digits, "-", "_" and ".", not starting with '
            '"." and without "/" or ".." (got %r)' % (field, name), field)
    return name


def check_xid(xid, field='xid'):
    try:
        value = int(xid)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(xid, bool) or str(value) != str(xid).strip() or not XID_MIN <= value <= XID_MAX:
        raise VServerError('%s must be an integer from %d to %d (got %r)' % (field, XID_MIN, XID_MAX, xid), field)
    return value


def terminal_safe(text: object) -> str:
    """``text`` fit for a terminal: a string a guest controls (a process name, a host name read from its tree)
    may carry escape sequences or line breaks. Every non-printable character (newline too) is shown as \\xNN
    (\\uNNNN above 0xff; a byte that was not UTF-8, read with errors='surrogateescape', as \\xNN) and a backslash
    as \\\\, so what is printed cannot move the cursor, retitle the window or be mistaken for a different name.
    Module results (JSON) carry the raw string, JSON-escaped."""
    out = []
    for char in str(text):
        if char == '\\':
            out.append('\\\\')
        elif char.isprintable():
            out.append(char)
        elif 0xdc80 <= ord(char) <= 0xdcff:  # a byte that was not UTF-8 (read with errors='surrogateescape')
            out.append('\\x%02x' % (ord(char) - 0xdc00))
        elif ord(char) <= 0xff:
            out.append('\\x%02x' % ord(char))
        else:
            out.append('\\u%04x' % ord(char))
    return ''.join(out)


def write_fully(fd, data):
    """Write every byte of ``data`` to ``fd`` (os.write may write less, e.g. on a nearly full disk), then check
    the file's size: a short write raises OSError (ENOSPC when the disk took nothing more)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        count = os.write(fd, view[done:])
        if count <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += count
    size = os.fstat(fd).st_size
    if size != len(data):
        raise OSError(errno.EIO, 'wrote %d bytes but the file holds %d' % (len(data), size))


def fsync_dir(path, dir_fd=None):
    """fsync a directory (so a rename or unlink in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path, exc):
    """The one message for a failed write: the file named, the reason (``cannot write P: No space left...``)."""
    return VServerError('cannot write %s: %s' % (path, exc.strerror or exc))


# atomic_write's temp files: ".BASENAME." + mkstemp's 8 random characters; only config documents (.json)
CONFIG_TMP_RE = re.compile(r'^\..+\.json\.[a-z0-9_]{8}$')


def atomic_write(path: str, data: str | bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` (str or bytes) to ``path`` completely or not at all: a temp file in the same directory,
    every byte written and its size checked, fsync, rename, fsync of the directory. On failure the old file is
    untouched, the temp file removed and VServerError names the file (``cannot write PATH: REASON``).

    ``durable=False`` skips the fsyncs (for volatile state under /run: the rename alone keeps it atomic)."""
    import tempfile  # here, not at the top: only writers need it
    directory = os.path.dirname(path) or '.'
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', dir=directory)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        os.fchmod(fd, mode)
        write_fully(fd, data)
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = None
        os.rename(tmp, path)
        tmp = None
        if durable:
            fsync_dir(directory)
    except BaseException as exc:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


def remove_stale_temps(directory):
    """Remove the config temp files (CONFIG_TMP_RE) a killed run left in ``directory``. Only call this while
    holding the host lock: every config writer holds it, so none of these files belongs to a live writer."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if CONFIG_TMP_RE.match(entry):
            try:
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def write_json(path: str, doc: Any, mode: int = 0o644, durable: bool = True) -> None:
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + '\n', mode, durable)


def read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
    except ValueError as exc:
        raise VServerError('%s is not valid JSON: %s' % (path, exc))


class HostLock:
    """Host-wide exclusive lock (flock on CONFIG_DIR/.lock) so two runs cannot interleave.

    Every writer of CONFIG_DIR holds it; so taking it also removes the temp files killed writers left there.
    Re-entrant across instances within one process: a second HostLock on the same path (another manager called
    by the first, the supervisor calling a manager) shares the held flock instead of waiting on itself."""

    _held = {}  # lock path -> [fd, depth], shared by every instance in this process

    def __init__(self, paths, timeout=300):
        self.path = os.path.join(paths.config_dir, '.lock')
        self.timeout = timeout

    @property
    def fd(self):
        held = self._held.get(self.path)
        return held[0] if held else None

    @property
    def depth(self):
        held = self._held.get(self.path)
        return held[1] if held else 0

    def __enter__(self):
        held = self._held.get(self.path)
        if held is not None and held[2] == os.getpid():
            held[1] += 1
            return self
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(fd)
                    raise VServerError('could not take the host lock %s within %ss' % (self.path, self.timeout))
                time.sleep(0.05)
        self._held[self.path] = [fd, 1, os.getpid()]  # a forked child does not inherit the hold (its pid differs)
        remove_stale_temps(os.path.dirname(self.path))  # no writer is active now: what is there is left over
        return self

    def __exit__(self, *exc):
        held = self._held[self.path]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            os.close(held[0])
        return False
