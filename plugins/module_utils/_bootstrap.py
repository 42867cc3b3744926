# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the Debian trees of debootstrap/mmdebstrap guests and tarball trees, built on the host
(behind the private module ``_guest_bootstrap`` the guest role calls; was roles/guest/files/guest_bootstrap.py).

``plan(requests)`` validates every request, finds the mirror of those without one (the host's apt sources,
_apt_sources) and says which trees need a build; nothing is written, so a bad entry stops the role before any guest
is touched. ``build(request, check)`` builds one tree into a sibling temporary directory (PARENT/.BASE.bootstrap),
renamed to ROOT only when the tool succeeded; on failure or timeout the tool's processes are killed, whatever is
still mounted below the temporary directory is lazily unmounted and the directory removed, so a half-made tree never
becomes ROOT. A build holds an flock on PARENT/.BASE.bootstrap.lock, so two runs cannot build the same tree at once.
``unpack(request, check)`` does the same for a tarball with tar.

REQUEST: {"name", "tool": mmdebstrap|debootstrap, "suite", "variant", "mirror" ("" = the host's), "components",
"packages", "root", "timeout", "fields": {key: name of the variable the value came from, for messages}}.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._apt_sources import (
    APT_SOURCES, host_codename, host_sources, pick_mirror)
from ansible_collections.vserver.core.plugins.module_utils._common import NAME_RE

TOOLS = ('mmdebstrap', 'debootstrap')
# debootstrap's own variants; "important" (its default set, Priority required + important) is passed as no --variant
VARIANTS = {
    'mmdebstrap': ('extract', 'custom', 'essential', 'apt', 'required', 'minbase', 'buildd', 'important',
                   'debootstrap', 'standard'),
    'debootstrap': ('minbase', 'buildd', 'fakechroot', 'important'),
}
# Debian Policy 5.6.1: lowercase letters, digits, plus, minus and full stop; two characters at least; an
# alphanumeric first. Suites (codenames like bookworm, bookworm-backports) and components (main, contrib,
# non-free-firmware) are archive directory names of the same characters.
PACKAGE_RE = re.compile(r'^[a-z0-9][a-z0-9+.-]+$')
SUITE_RE = re.compile(r'^[a-z0-9][a-z0-9+.-]*$')
COMPONENT_RE = re.compile(r'^[a-z0-9][a-z0-9+.-]*$')
STOP_GRACE = 10        # seconds between SIGTERM and SIGKILL of the tool's process group on timeout
REAP_DEADLINE = 30     # seconds to wait for every process of the tool to be gone
TAIL_LINES = 15


class Refused(Exception):
    """Bad input or a tree we must not touch: nothing was written."""


class BuildFailed(Exception):
    """The tool failed or timed out; what it wrote has been removed."""


def _field(req, key):
    fields = req.get('fields') or {}
    return fields.get(key) or 'vserver_guests[%s].%s' % (req.get('name'), key)


def _names(req, key, regex, what, allow_empty):
    value = req.get(key)
    field = _field(req, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused('%s must be a list of %s names (got %r)' % (field, what, value))
    if not value and not allow_empty:
        raise Refused('%s must name at least one %s' % (field, what))
    bad = [v for v in value if not regex.match(v) or len(v) > 100]
    if bad:
        raise Refused('%s: %s %s by Debian\'s rules (lowercase letters, digits, "+", "-" and ".", starting with a '
                      'letter or digit%s)'
                      % (field, ', '.join(repr(v) for v in bad),
                         'is not a %s name' % what if len(bad) == 1 else 'are not %s names' % what,
                         ', two characters at least' if what == 'package' else ''))
    return list(value)


def check_mirror(value, field):
    """An http, https or file URL (empty: the host's)."""
    if not isinstance(value, str):
        raise Refused('%s must be a URL string (got %r)' % (field, value))
    if value == '':
        return value
    if any(c.isspace() or ord(c) < 32 or c == ',' for c in value):
        raise Refused('%s must be one URL without spaces or commas (got %r)' % (field, value))
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise Refused('%s is not a URL: %s' % (field, exc))
    if parts.scheme in ('http', 'https'):
        if not parts.hostname:
            raise Refused('%s: %r has no host name' % (field, value))
    elif parts.scheme == 'file':
        if parts.netloc not in ('', 'localhost') or not parts.path.startswith('/'):
            raise Refused('%s: %r must be file:///absolute/path' % (field, value))
    else:
        raise Refused('%s must be an http://, https:// or file:/// URL (got %r)' % (field, value))
    return value


def check_request(req: dict) -> dict:
    """The request with its values checked, or Refused naming the offending variable."""
    if not isinstance(req, dict):
        raise Refused('a bootstrap request must be a dict (got %r)' % (req,))
    name = req.get('name')
    if not isinstance(name, str) or not NAME_RE.match(name) or '..' in name:  # _common.check_name's rule
        raise Refused('vserver_guests: bad guest name %r' % (name,))
    out = dict(req)
    tool = req.get('tool')
    if tool not in TOOLS:
        raise Refused('%s must be one of %s (got %r)' % (_field(req, 'template'), ', '.join(TOOLS), tool))
    suite = req.get('suite')
    if not isinstance(suite, str) or not SUITE_RE.match(suite) or len(suite) > 64:
        raise Refused('%s must be a Debian suite or codename such as bookworm or stable (lowercase letters, digits, '
                      '"+", "-" and "."; got %r)' % (_field(req, 'suite'), suite))
    variant = req.get('variant')
    if variant not in VARIANTS[tool]:
        raise Refused('%s must be one of %s for %s (got %r)'
                      % (_field(req, 'variant'), ', '.join(VARIANTS[tool]), tool, variant))
    out['components'] = _names(req, 'components', COMPONENT_RE, 'component', False)
    out['packages'] = _names(req, 'packages', PACKAGE_RE, 'package', True)
    out['mirror'] = check_mirror(req.get('mirror', ''), _field(req, 'mirror'))
    root = req.get('root')
    if not isinstance(root, str) or not root.startswith('/') or '\x00' in root or \
            os.path.normpath(root) in ('/', '//') or any(p in ('.', '..') for p in root.split('/')):
        raise Refused('%s must be an absolute path other than / without "." or ".." (got %r)'
                      % (_field(req, 'root'), root))
    out['root'] = os.path.normpath(root)
    timeout = req.get('timeout')
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise Refused('%s must be a positive number of seconds (got %r)' % (_field(req, 'timeout'), timeout))
    return out


# --- processes and mounts ---

def _parent_pids():
    out = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rfind(')') + 2:].split()
        out[int(entry)] = int(fields[1])
    return out


def descendants(pid=None):
    """PIDs whose chain of parents leads to PID (default: this process)."""
    me = pid or os.getpid()
    parents = _parent_pids()
    found = set()
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if child not in found and (parent == me or parent in found):
                found.add(child)
                grew = True
    return found


def _reap():
    while True:
        try:
            pid, dummy = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all_descendants(deadline=REAP_DEADLINE):
    """SIGKILL and reap every process below this one (the tool and whatever it forked; this process is a child
    subreaper, so none of them can slip out by double-forking). True when none is left."""
    end = time.monotonic() + deadline
    while True:
        _reap()
        left = descendants()
        if not left:
            return True
        if time.monotonic() > end:
            return False
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def stop_group(proc, grace=STOP_GRACE):
    """SIGTERM the tool's process group (it cleans up on TERM), SIGKILL it after GRACE seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def mounts_under(path, mountinfo='/proc/self/mountinfo'):
    """Mount points at or below PATH, deepest first."""
    real = os.path.realpath(path)
    points = {m['mountpoint'] for m in P.read_mountinfo(mountinfo)}
    out = [p for p in points if p == real or p.startswith(real.rstrip('/') + '/')]
    return sorted(out, key=lambda p: (p.count('/'), p), reverse=True)


def remove_tree(path):
    """Lazily unmount whatever is mounted at or below PATH (deepest first), then rm -rf --one-file-system it."""
    for dummy in range(5):
        points = mounts_under(path)
        if not points:
            break
        for point in points:
            subprocess.run(['umount', '-l', point], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
    left = mounts_under(path)
    if left:
        raise BuildFailed('cannot unmount %s; remove %s by hand' % (', '.join(left), path))
    if os.path.lexists(path):
        proc = subprocess.run(['rm', '-rf', '--one-file-system', '--', path], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
        if os.path.lexists(path):
            raise BuildFailed('cannot remove %s: %s' % (path, proc.stderr.strip()[-500:]))


# --- trees ---

def temp_of(root):
    parent, base = os.path.split(root)
    return os.path.join(parent, '.%s.bootstrap' % base)


def root_state(req):
    """'built' (ROOT/etc exists), 'absent' or 'empty'; Refused for anything we must not write into."""
    root = req['root']
    field = _field(req, 'root')
    if not os.path.lexists(root):
        return 'absent'
    if os.path.islink(root):
        if os.path.isdir(root) and os.path.lexists(os.path.join(root, 'etc')):
            return 'built'
        raise Refused('%s: %s is a symbolic link and holds no tree; give the real directory' % (field, root))
    if not os.path.isdir(root):
        raise Refused('%s: %s exists and is not a directory' % (field, root))
    if os.path.lexists(os.path.join(root, 'etc')):
        return 'built'
    if os.listdir(root):
        raise Refused('%s: %s is not empty and has no /etc: refusing to bootstrap guest %s into it (move its '
                      'content away, or point root at an empty or missing directory)' % (field, root, req['name']))
    return 'empty'


def find_tool(tool):
    for directory in os.environ.get('PATH', '').split(':') + ['/usr/sbin', '/usr/bin', '/sbin', '/bin']:
        path = os.path.join(directory or '.', tool)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise Refused('%s is not installed on this host (apt-get install %s; the vserver.core.host role installs it)'
                  % (tool, tool))


def tool_argv(req, target):
    if req['tool'] == 'tar':
        return [find_tool('tar'), '-x', '--numeric-owner', '--xattrs', '--acls', '-f', req['tarball'], '-C', target]
    argv = [find_tool(req['tool'])]
    if not (req['tool'] == 'debootstrap' and req['variant'] == 'important'):
        argv.append('--variant=%s' % req['variant'])
    argv.append('--components=%s' % ','.join(req['components']))
    if req['packages']:
        argv.append('--include=%s' % ','.join(req['packages']))
    return argv + [req['suite'], target, req['mirror']]


class Lock:
    """flock on PATH, held across the build; the file is removed on release (an inode check makes a waiter that
    locked a file removed meanwhile try again)."""

    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        end = time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        raise
                    if time.monotonic() > end:
                        os.close(fd)
                        raise BuildFailed('another run has been building this tree for over %d s (it holds %s)'
                                          % (self.timeout, self.path))
                    time.sleep(0.2)
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        return False


def _tail(handle):
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - 16384))
    lines = handle.read().decode('utf-8', 'replace').splitlines()[-TAIL_LINES:]
    return '\n'.join(line[:300] for line in lines)


def run_tool(req, target):
    """(exit status or None on timeout, seconds, output tail); every process of the tool is gone on return."""
    argv = tool_argv(req, target)
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive', LC_ALL='C.UTF-8')
    K.set_subreaper()  # the tool's orphans are reparented here and reaped
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd='/',
                                env=env, start_new_session=True)
        status = None
        try:
            status = proc.wait(req['timeout'])
        except subprocess.TimeoutExpired:
            stop_group(proc)
        except BaseException:
            stop_group(proc, grace=0)
            raise
        finally:
            clean = kill_all_descendants()
        seconds = round(time.monotonic() - start, 1)
        tail = _tail(out)
    if not clean:
        raise BuildFailed('guest %s: processes of %s are still running after SIGKILL (%s)'
                          % (req['name'], req['tool'], ', '.join(str(p) for p in sorted(descendants()))))
    return status, seconds, tail


def build(req: dict, check: bool = False) -> dict:
    """Make ROOT a bootstrapped tree unless it has one. Returns {"changed", "root", "seconds"}."""
    root = req['root']
    temp = temp_of(root)
    state = root_state(req)
    result = {'changed': False, 'root': root, 'seconds': 0}
    if check:
        result['changed'] = state != 'built' or os.path.lexists(temp)
        return result
    os.makedirs(os.path.dirname(root), mode=0o700, exist_ok=True)
    with Lock(temp + '.lock', req['timeout'] + STOP_GRACE + REAP_DEADLINE + 60):
        state = root_state(req)  # again: another run may have built it while we waited
        if os.path.lexists(temp):  # left by a run that crashed half-way
            remove_tree(temp)
            result['changed'] = True
        if state == 'built':
            return result
        try:
            status, seconds, tail = run_tool(req, temp)
        except BaseException:
            remove_tree(temp)
            raise
        result['seconds'] = seconds
        if status == 0:
            try:
                os.rename(temp, root)
                result['changed'] = True
                return result
            except OSError as exc:
                what = 'built the tree in %s s but it cannot become %s: %s' % (seconds, root, exc.strerror)
        elif status is None:
            what = 'timed out after %s s (guest_bootstrap_timeout) and was killed' % req['timeout']
        else:
            what = 'failed (exit status %s) after %s s' % (status, seconds)
        try:
            remove_tree(temp)
            removed = 'its partial tree was removed'
        except BuildFailed as exc:
            removed = 'its partial tree could not be removed (%s)' % exc
    raise BuildFailed('guest %s: %s %s %s from %s %s; %s, %s is untouched. Last lines of its output:\n%s'
                      % (req['name'], req['tool'], req['suite'], req['variant'], req['mirror'], what, removed, root,
                         tail))


UNPACK_TIMEOUT = 1800  # seconds for tar to unpack one tarball


def unpack(req: dict, check: bool = False) -> dict:
    """Make ROOT the tarball's tree unless it has one ({"name", "root", "tarball"}). Never into an existing tree a
    guest can reach: tar runs in a fresh sibling (PARENT/.BASE.bootstrap, in the 0700 tree directory) renamed onto
    ROOT when complete; a ROOT that is not absent or empty is never unpacked into (one with /etc is built, one
    without is refused). Returns {"changed", "root", "seconds"}."""
    if not isinstance(req, dict) or not NAME_RE.match(str(req.get('name', ''))) or '..' in str(req.get('name')) or \
            not isinstance(req.get('root'), str) or not os.path.isabs(req['root']) or \
            not isinstance(req.get('tarball'), str) or not os.path.isabs(req['tarball']):
        raise Refused('an unpack request needs a guest name, an absolute root and an absolute tarball path (got %r)'
                      % (req,))
    req = dict(req, tool='tar', timeout=UNPACK_TIMEOUT, fields=req.get('fields') or {})
    root = req['root']
    temp = temp_of(root)
    state = root_state(req)
    result = {'changed': False, 'root': root, 'seconds': 0}
    if check or state == 'built':
        result['changed'] = state != 'built'
        return result
    if not os.path.isfile(req['tarball']):
        raise Refused('%s: %s is not a file on this host' % (_field(req, 'tarball'), req['tarball']))
    os.makedirs(os.path.dirname(root), mode=0o700, exist_ok=True)
    with Lock(temp + '.lock', UNPACK_TIMEOUT + STOP_GRACE + REAP_DEADLINE + 60):
        state = root_state(req)
        if os.path.lexists(temp):
            remove_tree(temp)
            result['changed'] = True
        if state == 'built':
            return result
        os.mkdir(temp, 0o700)
        try:
            status, seconds, tail = run_tool(req, temp)
            if status != 0:
                raise BuildFailed('guest %s: tar could not unpack %s (%s); %s is untouched. Last lines:\n%s'
                                  % (req['name'], req['tarball'], 'timed out' if status is None else
                                     'exit status %s' % status, root, tail))
            os.rename(temp, root)
        except BaseException:
            remove_tree(temp)
            raise
    result.update(changed=True, seconds=seconds)
    return result


def plan(requests: list[dict]) -> dict:
    """Check every request, fill in the host's mirror, say which trees need a build. Writes nothing."""
    if not isinstance(requests, list):
        raise Refused('guests must be a list of bootstrap requests')
    errors = []
    checked = []
    for req in requests:
        try:
            checked.append(check_request(req))
        except Refused as exc:
            errors.append(str(exc))
    entries = None
    codename = host_codename()
    for req in checked:
        if not req['mirror']:
            if entries is None:
                entries = host_sources()
            req['mirror'] = pick_mirror(entries, req['suite'], codename) or ''
            if not req['mirror']:
                errors.append('%s: no Debian mirror for %s (or %s) main found in the host\'s apt sources (%s); '
                              'set it' % (_field(req, 'mirror'), req['suite'], codename, ', '.join(APT_SOURCES)))
                continue
        try:
            req['build'] = root_state(req) != 'built' or os.path.lexists(temp_of(req['root']))
        except Refused as exc:  # this guest's tree (e.g. a guest that deleted its /etc): the others go on
            req['build'] = False
            req['refused'] = str(exc)
    if errors:
        raise Refused('; '.join(errors))
    return {'changed': False, 'guests': checked}


def _interrupted(signum, dummy):
    raise BuildFailed('interrupted by signal %d' % signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP raise BuildFailed: a build that is interrupted still removes its partial tree."""
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)
