# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: running a program inside a running guest (``vserver NAME exec|enter``).

The second stage (``_enter_stage``: a fresh interpreter executed from a read-only mount of the Python binary, so
no process that can be seen from inside the guest is ever the admin's Python or has a writable host binary as its
exe) is started first (by the vserver command before it loads anything else, or here). Meanwhile this side, in the
admin's process, reads what the guest's init holds (namespaces, cgroups in every hierarchy, bounding set,
no_new_privs, groups, rlimits) through init's /proc fd, moves the second stage into the guest's cgroups, opens the
namespaces and, when a terminal is involved, a pty in the guest's own devpts instance, logs the entry to syslog
and sends the plan with those fds (SCM_RIGHTS). The second stage joins the guest, drops to its credentials
and forks the guest's program; this side relays the pty (keys, output, window size), forwards
SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 and returns the exit status. See docs/security.md, "Entering a guest".
An entry that went the full way keeps what it concluded for the next (``enter_known``: the fast path of `vserver
exec`, used while every input of that conclusion is the same).
"""

from __future__ import annotations

# Only what the second stage loads anyway, and C modules: this module is the fast path of `vserver exec`
# (``enter_known``), which must not wait for `re`, `json` or `enum` (``signal`` and ``socket`` import it); the
# collection's other modules (config, validators, the runtime) are imported where the full path needs them.
import _json
import _signal
import marshal
import os
import resource
import select
import stat
import sys

from ansible_collections.vserver.core.plugins.module_utils import _enter_stage, _kernel as K
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time (see _common)
if TYPE_CHECKING:
    from ansible_collections.vserver.core.plugins.module_utils._runtime import Runtime

# joined in this order; mount last (it changes the root), PID applies to the second stage's children only
NS_ORDER = ('cgroup', 'ipc', 'uts', 'net', 'time', 'pid', 'mnt')
GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)
# `vserver NAME enter`: root's login shell as the guest's /etc/passwd names it (bash on Debian: /etc/profile,
# ~/.profile, ~/.bashrc), in root's home, with SHELL set; /bin/sh where the guest has no such entry or shell. The
# lookup runs inside the guest, with the guest's credentials: nothing of the guest's tree is read by the host.
LOGIN_SCRIPT = ('shell=/bin/sh home=/root; '
                'if [ -r /etc/passwd ]; then while IFS=: read -r u p i g c h s; do '
                'if [ "$u" = root ]; then shell=$s home=$h; break; fi; done < /etc/passwd; fi; '
                '[ -x "$shell" ] || shell=/bin/sh; [ -d "$home" ] || home=/; '
                'export SHELL="$shell" HOME="$home"; cd "$home" && exec "$shell" -l')
LOGIN_ARGV = ['/bin/sh', '-c', LOGIN_SCRIPT, 'login']
PTMX = (5, 2)
# What an entry that went the full way (config read and checked, init found) concluded, kept in the guest's
# runtime dir for the next one (see ``enter_known``).
KNOWN_FILE = 'entry.known'
KNOWN_VERSION = 1
KNOWN_MAX = 1 << 20
# the host roots (``_common.Paths``): their inputs are part of what a conclusion rests on
ROOT_KEYS = ('config_dir', 'run_dir', 'tree_dir', 'log_dir', 'cgroup_parent')
DEFAULTS_FILE = '/etc/default/vserver'
DEFAULT_RUN_DIR = '/run/vservers'


def _error(msg, field=None):
    from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
    return VServerError(msg, field)


def rlimit_ids():
    return sorted(getattr(resource, name) for name in dir(resource) if name.startswith('RLIMIT_'))


def cgroup_dirs(cgroup_raw, mounts):
    """The host directories of the cgroups listed in a /proc/PID/cgroup text, one per hierarchy (``mounts``: the
    host's mountinfo). A hierarchy the host has not mounted is skipped when the process sits at its root."""
    return [path for dummy, path in _cgroup_dirs(cgroup_raw, mounts)]


def _cgroup_dirs(cgroup_raw, mounts):
    """``[(controllers, directory)]`` (controllers '' for cgroup2), as ``cgroup_dirs``."""
    out = []
    for line in cgroup_raw.splitlines():
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        wanted = set(controllers.split(',')) if controllers else None
        for mnt in mounts:
            if wanted is None and mnt['fstype'] == 'cgroup2' or \
                    wanted and mnt['fstype'] == 'cgroup' and wanted <= set(mnt['super'].split(',')):
                root = mnt['root'].rstrip('/')
                if path == root or path.startswith(root + '/'):
                    out.append((controllers, mnt['mountpoint'].rstrip('/') + path[len(root):]))
                    break
        else:
            if path != '/':
                raise _error('cgroup hierarchy %r of the guest is not mounted on the host' % controllers)
    return out


def guest_facts(proc_fd):
    """What the guest's init holds, read once through its /proc fd; None if init is gone."""
    status = P.read_at(proc_fd, 'status')
    cgroup = P.read_at(proc_fd, 'cgroup')
    if not status or not cgroup:
        return None
    fields = P.parse_status(status)
    pid = int(fields['Pid'])
    limits = [(res,) + resource.prlimit(pid, res) for res in rlimit_ids()]
    if P.read_stat_at(proc_fd) is None:  # the limits read were those of that very init
        return None
    return {'bcaps': int(fields['CapBnd'], 16), 'nnp': fields.get('NoNewPrivs', '0') == '1',
            'uids': [int(u) for u in fields['Uid'].split()[:3]], 'gids': [int(g) for g in fields['Gid'].split()[:3]],
            'groups': [int(g) for g in fields.get('Groups', '').split()], 'cgroup': cgroup, 'rlimits': limits}


def _open_guest_ptmx(proc_fd):
    """The guest's own /dev/pts/ptmx, opened through init's root without following a symlink the guest may have
    planted, and checked to be a devpts ptmx. Returns (master, peer) fds."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    root = os.open('root', flags, dir_fd=proc_fd)
    dirs = [root]
    try:
        dirs.append(os.open('dev', flags | os.O_NOFOLLOW, dir_fd=root))
        dirs.append(os.open('pts', flags | os.O_NOFOLLOW, dir_fd=dirs[-1]))
        if K.fs_type(dirs[-1]) != K.DEVPTS_SUPER_MAGIC:
            raise OSError('/dev/pts of the guest is not a devpts mount')
        master = os.open('ptmx', os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dirs[-1])
    finally:
        for fd in dirs:
            os.close(fd)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != PTMX \
                or K.fs_type(master) != K.DEVPTS_SUPER_MAGIC:
            raise OSError('/dev/pts/ptmx of the guest is not a pty multiplexer')
        return master, K.pty_pair(master)
    except BaseException:
        os.close(master)
        raise


def log_entry(name, argv, terminal):
    """One syslog line (authpriv.notice) per exec/enter: who, which guest, which command. Never fails."""
    try:
        import pwd
        import syslog
        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        login = os.environ.get('SUDO_USER') or user
        tty = os.ttyname(0) if os.isatty(0) else '-'
        syslog.openlog('vserver', syslog.LOG_PID, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_NOTICE, 'guest=%s uid=%d user=%s login=%s tty=%s pty=%s command=%s' % (
            name, uid, user, login, tty, 'yes' if terminal else 'no', _json_list(argv)))
        syslog.closelog()
    except Exception:  # no syslog daemon, no /dev/log: the entry goes on
        pass


def _json_list(strings):
    """``json.dumps(list(strings))`` for strings, without importing json (and with it re)."""
    return '[' + ', '.join(_json.encode_basestring_ascii(item) for item in strings) + ']'


def enter_guest(paths, doc, argv, layout=None, env=None, terminal=True, stage=None):
    """``enter`` for guest ``doc`` under host roots ``paths``: run ``argv`` inside it with exactly its init's
    credentials (namespaces, cgroups in every hierarchy, bounding set, capabilities, no_new_privs, rlimits)."""
    from ansible_collections.vserver.core.plugins.module_utils import _runtime  # same floor; see enter_known
    return enter(_runtime.Runtime(paths, doc['name'], layout), doc, argv, env=env, terminal=terminal, stage=stage)


def enter(rt: Runtime, doc: dict, argv: list[str], env: dict | None = None, terminal: bool = True,
          stage: _enter_stage.Stage | None = None, known: tuple | None = None) -> int:
    """Run ``argv`` inside the running guest of Runtime ``rt`` with exactly its init's credentials; return the exit
    status (128+N when the command was killed by signal N). ``terminal``: give it a pty of the guest's own for
    each of fds 0-2 that is a terminal here, and relay it. ``stage``: a second stage already started
    (``_enter_stage.spawn()``, done first thing by the vserver command so that it starts meanwhile). ``known``:
    ``(options, roots_key(options), config bytes)`` of the vserver command, which ``doc`` was parsed from and
    checked: what this entry concludes is then kept for the next one (``enter_known``)."""
    if os.geteuid() != 0:
        raise _error('entering guest %s needs root' % doc['name'])
    if stage is None:
        stage = _enter_stage.spawn()
    opened = []
    try:
        try:
            plan, master, facts, config = _plan(rt, doc, argv, env, terminal, opened, stage)
            if known is not None:
                _remember(rt, known, facts, config)
        except BaseException:
            stage.abort()
            raise
        return _run(stage, doc['name'], argv, plan, master)
    finally:
        for fd in opened:
            os.close(fd)


def _run(stage, name, argv, plan, master):
    """Log the entry, send the plan and wait for the command (forwarding signals, relaying the pty)."""
    log_entry(name, argv, bool(plan['ttys']))
    old = {sig: _signal.getsignal(sig) for sig in FORWARDED}
    try:
        stage.send(plan, [fd for dummy, fd in plan['ns']] + ([plan['pty']] if plan['pty'] is not None else []))
        return _wait(stage.pid, master, plan['ttys'])
    finally:
        for sig, handler in old.items():
            _signal.signal(sig, handler if handler is not None else _signal.SIG_DFL)


def _plan(rt, doc, argv, env, terminal, opened, stage):
    """Everything the second stage needs, read from init through its /proc fd and opened here (``opened`` gets
    the fds, which the second stage duplicates from this process); returns (plan, pty master or None, init's
    facts, what the config says: ``configured``)."""
    name = doc['name']
    if not argv or not isinstance(argv[0], str) or not argv[0]:
        raise _error('exec: the command is empty; give a program to run inside guest %s' % name, 'command')
    proc_fd = rt.open_init()
    if proc_fd is None:
        raise _error('guest %s is not running' % name)
    opened.append(proc_fd)
    if rt.group.frozen():
        raise _error('guest %s is frozen: nothing can run in it until `vserver %s thaw`' % (name, name))
    facts = guest_facts(proc_fd)
    if facts is None:
        raise _error('guest %s is not running' % name)
    ns = _open_namespaces(proc_fd, opened)
    if ns is None:
        raise _error('guest %s is not running' % name)
    # the second stage joins the guest's cgroup in every hierarchy now, while it starts up, long before it forks
    # what the guest will see: joining waits for an RCU grace period (~10 ms), which this hides
    _move(stage, _cgroup_dirs(facts['cgroup'], P.read_mountinfo()))
    config = configured(doc)
    plan, master = _finish(name, proc_fd, facts, ns, config, argv, env, terminal, opened)
    return plan, master, facts, config


def configured(doc):
    """What the guest's config says about entering it: ``{'bcaps': mask, 'nnp': bool, 'seccomp': program or
    None}`` (the bounding set configured, which the plan intersects with init's; no_new_privs; the syscall filter
    of the guest's processes, as its init's)."""
    from ansible_collections.vserver.core.plugins.module_utils import _caps
    section = doc.get('capabilities') or {}
    return {'bcaps': _caps.mask(_caps.resolve(section)), 'nnp': bool(section.get('no_new_privs')),
            'seccomp': _caps.seccomp_program(doc)}


def _open_namespaces(proc_fd, opened):
    """[(kind, fd)] of init's namespaces, in the order they are joined; None once init is gone."""
    ns = []
    try:  # through init's /proc fd: an init that exits (or a reused pid) is never entered
        for kind in NS_ORDER:
            opened.append(os.open('ns/' + kind, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd))
            ns.append((kind, opened[-1]))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ns


def _move(stage, groups):
    for dummy, path in groups:
        _write_all_to(os.path.join(path, 'cgroup.procs'), b'%d' % stage.pid)


def _finish(name, proc_fd, facts, ns, config, argv, env, terminal, opened):
    """The plan (and the pty master or None) from init's ``facts``, its namespaces ``ns`` and ``config`` (as
    ``configured``)."""
    ttys = [fd for fd in (0, 1, 2) if os.isatty(fd)] if terminal else []
    master = peer = None
    if ttys:
        try:
            master, peer = _open_guest_ptmx(proc_fd)
        except OSError as exc:
            raise _error('guest %s: cannot allocate a terminal inside it: %s' % (name, exc)) from None
        opened += [master, peer]
    environ = {'PATH': GUEST_PATH, 'container': 'vserver', 'HOME': '/root',
               'TERM': os.environ.get('TERM', 'linux') if ttys else 'dumb'}
    if facts['uids'] and facts['uids'][0] == 0:
        environ.update(USER='root', LOGNAME='root')
    environ.update(env or {})
    plan = {'ns': ns, 'pty': peer, 'ttys': ttys,
            'bcaps': config['bcaps'] & facts['bcaps'],
            'nnp': facts['nnp'] or config['nnp'],
            'uids': facts['uids'], 'gids': facts['gids'], 'groups': facts['groups'], 'rlimits': facts['rlimits'],
            'seccomp': config['seccomp'],
            'argv': list(argv), 'env': environ}
    return plan, master


# --- the fast path: an entry like the last one ---------------------------------------------------------------
#
# Reading a guest's config means loading the config store and every validator of the sections it holds, and
# finding its init, the runtime: most of the CPU an exec costs (the imports of `re`, `json` and the collection's
# modules, 30-50 ms on the CI machine), and the critical path (the second stage waits for its plan). So an
# entry that went the full way keeps what it concluded in the guest's runtime dir (root's, on tmpfs, removed
# with it by stop), with every input it rests on: the command's options, the VSERVER_* variables and the
# defaults file (the host roots), the exact bytes of the config and of the runtime record, the size, times and
# inode of every module of this library and the interpreter's version (the code that checked them), and init's
# /proc/PID/cgroup as found in the guest's cgroup. The next entry uses that conclusion only when every input is
# the same again; anything else (or anything unusual on the way) takes the full path, which decides and says what
# is wrong. What a conclusion never stands in for is read afresh every time, as by the full path: that init runs
# (its pid, start time and cgroup), whether the guest is frozen, init's credentials, rlimits and namespaces. A
# runtime record is rewritten by every start, so a conclusion lives at most as long as the guest's init.

def roots_key(opts: dict) -> tuple:
    """What the host roots of a vserver command with options ``opts`` rest on (``_common.Paths`` reads these)."""
    try:
        with open(DEFAULTS_FILE, 'rb') as handle:
            defaults = handle.read(KNOWN_MAX)
    except (FileNotFoundError, PermissionError):
        defaults = None
    return (tuple(sorted(opts.items())), tuple(os.environ.get('VSERVER_' + key.upper()) for key in ROOT_KEYS),
            defaults)


def code_key():
    """The modules of this library (name, size, mtime, ctime, inode) and the interpreter's version: a conclusion
    holds for the code that drew it."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = [sys.hexversion]
    for entry in sorted(os.listdir(here)):
        if entry.endswith('.py'):
            st = os.stat(os.path.join(here, entry))
            out.append((entry, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)


def _read_file(path, private=False):
    """The bytes of a small regular file (None if there is none), without following a symlink at its end;
    ``private``: only if it is ours and nobody else may read or write it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or private and (st.st_uid != os.geteuid() or st.st_mode & 0o077):
            return None
        return os.read(fd, KNOWN_MAX + 1)
    finally:
        os.close(fd)


def _remember(rt, known, facts, config):
    """Keep what this entry concluded (see above), if its inputs held still meanwhile; never fails."""
    import json
    from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _runtime
    try:
        opts, roots, config_raw = known
        state_file = os.path.join(rt.dir, _runtime.STATE_FILE)
        state_raw = _read_file(state_file)
        record = rt.record
        if not state_raw or json.loads(state_raw.decode('utf-8')) != record or roots_key(opts) != roots \
                or _read_file(rt.paths.config_file(rt.name)) != config_raw \
                or _cgroup.guest_of(_cgroup.parse_proc_cgroup(facts['cgroup']), rt.parent) != rt.name:
            return
        data = marshal.dumps({
            'version': KNOWN_VERSION, 'name': rt.name, 'run_dir': rt.paths.run_dir, 'roots': roots,
            'config_file': rt.paths.config_file(rt.name), 'config': config_raw, 'state_file': state_file,
            'state': state_raw, 'code': code_key(), 'init_pid': record['init_pid'],
            'init_start': record['init_start'], 'cgroup': facts['cgroup'], 'configured': config})
    except Exception:  # pylint: disable=broad-except
        return
    tmp = os.path.join(rt.dir, '.%s.%d' % (KNOWN_FILE, os.getpid()))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(rt.dir, KNOWN_FILE))
    except OSError:  # a stop removing the runtime dir meanwhile, a full /run: the next entry goes the full way
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _run_dir(opts, defaults):
    """Where the runtime dirs are, as ``_common.Paths`` finds it (only to find a kept conclusion, which says
    where it was drawn: an answer that differs finds none); None if unusual."""
    value = opts.get('run_dir') or os.environ.get('VSERVER_RUN_DIR')
    if not value and defaults:
        for line in defaults.decode('utf-8', 'replace').splitlines():
            key, eq, found = line.strip().partition('=')
            if eq and key == 'VSERVER_RUN_DIR':
                value = found.strip().strip('"\'')
    value = value or DEFAULT_RUN_DIR
    return os.path.normpath(value) if os.path.isabs(value) else None


def enter_known(opts: dict, name: str, argv: list[str], stage: _enter_stage.Stage, terminal: bool = True) -> int | None:
    """`vserver [opts] NAME exec ARGV...` (or enter) the fast way, when every input of the last entry's conclusion
    is the same again (see above): returns the exit status as ``enter``, or None (before anything was sent) when
    the full path must decide. The second stage ``stage`` is sent its plan here, or left for the full path."""
    if not name or len(name) > 63 or '/' in name or name[0] == '.' or '\0' in name or not argv or not argv[0]:
        return None
    opened = []
    try:
        try:
            ready = _known_plan(opts, name, argv, stage, terminal, opened)
        except Exception:  # pylint: disable=broad-except  # the full path decides, and says what is wrong
            ready = None
        if ready is None:
            return None
        return _run(stage, name, argv, *ready)
    finally:
        for fd in opened:
            os.close(fd)


def _known_plan(opts, name, argv, stage, terminal, opened):
    roots = roots_key(opts)
    run_dir = _run_dir(opts, roots[2])
    if run_dir is None:
        return None
    raw = _read_file(os.path.join(run_dir, name, KNOWN_FILE), private=True)
    if not raw or len(raw) > KNOWN_MAX:
        return None
    known = marshal.loads(raw)
    if not isinstance(known, dict) or known.get('version') != KNOWN_VERSION or known.get('name') != name \
            or known.get('run_dir') != run_dir or known.get('roots') != roots \
            or known['state_file'] != os.path.join(run_dir, name, os.path.basename(known['state_file'])) \
            or _read_file(known['config_file']) != known['config'] \
            or _read_file(known['state_file']) != known['state'] or known['code'] != code_key():
        return None
    # that init, still running, still in the guest's cgroup (as Runtime.open_init), and the guest not frozen
    try:
        proc_fd = os.open('/proc/%d' % known['init_pid'], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    opened.append(proc_fd)
    st = P.read_stat_at(proc_fd)
    cgroup = P.read_at(proc_fd, 'cgroup')
    if st is None or st[0] in ('Z', 'X') or st[2] != known['init_start'] or cgroup != known['cgroup']:
        return None
    groups = _cgroup_dirs(cgroup, P.read_mountinfo())
    if _frozen(groups):
        return None
    _move(stage, groups)  # first: it waits for an RCU grace period, while the second stage starts up
    facts = guest_facts(proc_fd)
    if facts is None or facts['cgroup'] != cgroup:
        return None
    ns = _open_namespaces(proc_fd, opened)
    if ns is None:
        return None
    return _finish(name, proc_fd, facts, ns, known['configured'], argv, None, terminal, opened)


def _frozen(groups):
    """Is any of the cgroups ``groups`` (``_cgroup_dirs``) frozen or freezing (v1 freezer, v2 cgroup.freeze)?"""
    for controllers, path in groups:
        if 'freezer' in controllers.split(','):
            value, wanted = _read_file(os.path.join(path, 'freezer.state')), (b'FROZEN', b'FREEZING')
        elif not controllers:
            value, wanted = _read_file(os.path.join(path, 'cgroup.freeze')), (b'1',)
        else:
            continue
        if value is None or value.strip() in wanted:
            return True
    return False


def _write_all_to(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _wait(pid, master, ttys):
    """Forward signals to the second stage, relay the pty if any; return the exit status."""
    _enter_stage.forward_signals(pid, FORWARDED)
    if master is not None:
        _relay(pid, master, ttys)
    while True:
        try:
            dummy, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 126
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _relay(pid, master, ttys):
    """Keys from our terminal (fd 0) to the guest's pty, its output to our terminal, window size along, until the
    second stage exits. The admin's terminal is in raw mode meanwhile: ^C, ^Z reach the guest's line discipline."""
    import termios
    import tty
    out = 1 if 1 in ttys else 2
    size_fd = ttys[0]
    saved = None

    def winsize(*dummy):
        try:
            K.copy_winsize(size_fd, master)
        except OSError:
            pass
    old_winch = _signal.signal(_signal.SIGWINCH, winsize)
    pidfd = os.pidfd_open(pid)
    try:
        try:
            termios.tcsetattr(master, termios.TCSANOW, termios.tcgetattr(size_fd))
        except termios.error:
            pass
        winsize()
        if 0 in ttys:
            saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)
        reading = 0 in ttys
        pending = b''
        while True:
            rlist = [master, pidfd] + ([0] if reading and not pending else [])
            wlist = [master] if pending else []
            readable, writable, dummy = select.select(rlist, wlist, [])
            if master in readable and not _copy_out(master, out):
                break
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    reading = False
                pending += data
            if master in writable:
                try:
                    pending = pending[os.write(master, pending):]
                except BlockingIOError:
                    pass
            if pidfd in readable:
                _copy_out(master, out)  # what the command wrote last
                break
    finally:
        os.close(pidfd)
        _signal.signal(_signal.SIGWINCH, old_winch)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _copy_out(master, out):
    """Copy what the guest's pty has for us; False once nobody holds its other end."""
    while True:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return True
        except OSError:  # EIO: every holder of the guest's side closed it
            return False
        if not data:
            return False
        _write_all(out, data)
