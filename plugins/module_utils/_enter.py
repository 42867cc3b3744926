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
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import stat

from ansible_collections.vserver.core.plugins.module_utils import _caps, _enter_stage, _kernel as K
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

# joined in this order; mount last (it changes the root), PID applies to the second stage's children only
NS_ORDER = ('cgroup', 'ipc', 'uts', 'net', 'time', 'pid', 'mnt')
GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
PTMX = (5, 2)


def rlimit_ids():
    return sorted(getattr(resource, name) for name in dir(resource) if name.startswith('RLIMIT_'))


def cgroup_dirs(cgroup_raw, mounts):
    """The host directories of the cgroups listed in a /proc/PID/cgroup text, one per hierarchy (``mounts``: the
    host's mountinfo). A hierarchy the host has not mounted is skipped when the process sits at its root."""
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
                    out.append(mnt['mountpoint'].rstrip('/') + path[len(root):])
                    break
        else:
            if path != '/':
                raise VServerError('cgroup hierarchy %r of the guest is not mounted on the host' % controllers)
    return out


def guest_facts(proc_fd):
    """What the guest's init holds, read once through its /proc fd; None if init is gone."""
    status = K.read_at(proc_fd, 'status')
    cgroup = K.read_at(proc_fd, 'cgroup')
    if not status or not cgroup:
        return None
    fields = K.parse_status(status)
    pid = int(fields['Pid'])
    limits = [(res,) + resource.prlimit(pid, res) for res in rlimit_ids()]
    if K.read_stat_at(proc_fd) is None:  # the limits read were those of that very init
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
            name, uid, user, login, tty, 'yes' if terminal else 'no', json.dumps(list(argv))))
        syslog.closelog()
    except Exception:  # no syslog daemon, no /dev/log: the entry goes on
        pass


def enter(rt, doc, argv, env=None, terminal=True, stage=None):
    """Run ``argv`` inside the running guest of Runtime ``rt`` with exactly its init's credentials; return the exit
    status (128+N when the command was killed by signal N). ``terminal``: give it a pty of the guest's own for
    each of fds 0-2 that is a terminal here, and relay it. ``stage``: a second stage already started
    (``_enter_stage.spawn()``, done first thing by the vserver command so that it starts meanwhile)."""
    if os.geteuid() != 0:
        raise VServerError('entering guest %s needs root' % doc['name'])
    if stage is None:
        stage = _enter_stage.spawn()
    opened = []
    try:
        try:
            plan, master = _plan(rt, doc, argv, env, terminal, opened, stage)
        except BaseException:
            stage.abort()
            raise
        log_entry(doc['name'], argv, bool(plan['ttys']))
        old = {sig: signal.getsignal(sig) for sig in FORWARDED}
        try:
            stage.send(plan, [fd for dummy, fd in plan['ns']] + ([plan['pty']] if plan['pty'] is not None else []))
            return _wait(stage.pid, master, plan['ttys'])
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    finally:
        for fd in opened:
            os.close(fd)


def _plan(rt, doc, argv, env, terminal, opened, stage):
    """Everything the second stage needs, read from init through its /proc fd and opened here (``opened`` gets
    the fds, which the second stage duplicates from this process); returns (plan, pty master or None)."""
    name = doc['name']
    if not argv or not isinstance(argv[0], str) or not argv[0]:
        raise VServerError('exec: the command is empty; give a program to run inside guest %s' % name, 'command')
    proc_fd = rt.open_init()
    if proc_fd is None:
        raise VServerError('guest %s is not running' % name)
    opened.append(proc_fd)
    if rt.group.frozen():
        raise VServerError('guest %s is frozen: nothing can run in it until `vserver %s thaw`' % (name, name))
    facts = guest_facts(proc_fd)
    if facts is None:
        raise VServerError('guest %s is not running' % name)
    ns = []
    try:  # through init's /proc fd: an init that exits (or a reused pid) is never entered
        for kind in NS_ORDER:
            opened.append(os.open('ns/' + kind, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd))
            ns.append((kind, opened[-1]))
    except (FileNotFoundError, ProcessLookupError):
        raise VServerError('guest %s is not running' % name) from None
    # the second stage joins the guest's cgroup in every hierarchy now, while it starts up, long before it forks
    # what the guest will see: joining waits for an RCU grace period (~10 ms), which this hides
    for path in cgroup_dirs(facts['cgroup'], K.read_mountinfo()):
        _write_all_to(os.path.join(path, 'cgroup.procs'), b'%d' % stage.pid)
    ttys = [fd for fd in (0, 1, 2) if os.isatty(fd)] if terminal else []
    master = peer = None
    if ttys:
        try:
            master, peer = _open_guest_ptmx(proc_fd)
        except OSError as exc:
            raise VServerError('guest %s: cannot allocate a terminal inside it: %s' % (name, exc)) from None
        opened += [master, peer]
    section = doc.get('capabilities') or {}
    environ = {'PATH': GUEST_PATH, 'container': 'vserver', 'HOME': '/root',
               'TERM': os.environ.get('TERM', 'linux') if ttys else 'dumb'}
    environ.update(env or {})
    plan = {'ns': ns, 'pty': peer, 'ttys': ttys,
            'bcaps': _caps.mask(_caps.resolve(section)) & facts['bcaps'],
            'nnp': facts['nnp'] or bool(section.get('no_new_privs')),
            'uids': facts['uids'], 'gids': facts['gids'], 'groups': facts['groups'], 'rlimits': facts['rlimits'],
            'seccomp': _caps.seccomp_program(doc),  # the guest's syscall filter (None: unconfined), as its init's
            'argv': list(argv), 'env': environ}
    return plan, master


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
    import fcntl
    import struct
    import termios
    import tty
    out = 1 if 1 in ttys else 2
    size_fd = ttys[0]
    saved = None

    def winsize(*dummy):
        try:
            raw = fcntl.ioctl(size_fd, termios.TIOCGWINSZ, struct.pack('HHHH', 0, 0, 0, 0))
            fcntl.ioctl(master, termios.TIOCSWINSZ, raw)
        except OSError:
            pass
    old_winch = signal.signal(signal.SIGWINCH, winsize)
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
        signal.signal(signal.SIGWINCH, old_winch)
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
