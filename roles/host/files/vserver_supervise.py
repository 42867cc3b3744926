# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vserver-supervise — start the marked guests at boot and restart the ones that die (no systemd needed).

  vserver-supervise [--interval S]           stay in the foreground, supervise every marked guest
  vserver-supervise --daemon [--interval S]  the same, detached (log: LOG_DIR/supervise.log)
  vserver-supervise --once                   start the marked guests that are not running, then exit
  vserver-supervise --watch NAME             (vserver@.service) start NAME, wait for its init; exit 0 when it
                                             was stopped cleanly, 1 when init died on its own
  vserver-supervise --logs                   only keep the guests' console logs under the cap (see below);
                                             vserver-logs.service runs this on systemd hosts
  vserver-supervise --lxcfs-refresh          fresh LXCFS mounts into the running guests (after LXCFS started:
                                             lxcfs.service's ExecStartPost on systemd hosts)
  --lxcfs (foreground, --daemon)             also run LXCFS (VSERVER_LXCFS_DIR, default /var/lib/lxcfs) when none is
                                             mounted there, start it again when it dies; whenever LXCFS's mount
                                             changes the running guests get fresh mounts (docs/guest-view.md)

Marked guests are those with a file CONFIG_DIR/autostart/NAME (the guest role's `autostart: true`).
The foreground, --daemon and --logs modes keep the guests' console logs LOG_DIR/NAME.log under VSERVER_LOG_MAX
(default 16M): one thread woken by inotify copies the last VSERVER_LOG_MAX bytes of a log that passed it to
NAME.log.1 and truncates NAME.log (docs/security.md, "Guest console logs"). --watch leaves that to
vserver-logs.service (one watcher per host, never one per guest; vserver@.service wants it).
A guest stopped with `vserver NAME stop` leaves no runtime state and is left alone; a guest whose init died
(runtime state left behind) is restarted, at most 3 times a minute. A guest that ran `reboot` (its init killed by
SIGHUP: reboot(2) in its PID namespace) is started again, at most 10 times a minute; one that ran `halt` or
`poweroff` (SIGINT) is left stopped, also when marked: that needs init's wait status, which only its parent sees,
so it holds for the guests this process started (docs/guest-view.md). The supervisor is a child subreaper:
guest inits are reparented to it and reaped here, even on hosts whose PID 1 never reaps orphans.
Host roots come from the VSERVER_* environment (see /etc/default/vserver).
"""

import ctypes
import os
import signal
import sys
import time

if sys.version_info < (3, 9):  # the runtime needs 3.9+ (os.pidfd_open, os.waitstatus_to_exitcode): say so, touch nothing
    sys.exit('vserver-supervise: needs Python 3.9 or newer; %s is Python %s' % (sys.executable, '%d.%d.%d' % sys.version_info[:3]))


def _find_collections():
    here = os.path.dirname(os.path.realpath(__file__))
    parts = os.path.dirname(here).split(os.sep)
    if parts[-3:-2] == ['ansible_collections']:
        return os.sep.join(parts[:-3])
    dev = os.path.join(here, '..', '..', '..', '.build', 'collections')  # a checkout: roles/host/files/
    if os.path.isdir(os.path.join(dev, 'ansible_collections', 'vserver', 'core')):
        return os.path.realpath(dev)
    raise SystemExit('vserver-supervise: cannot find the vserver.core collection next to %s' % here)


sys.path.insert(0, _find_collections())

from ansible_collections.vserver.core.plugins.module_utils import (  # noqa: E402
    _config, _lxcfs, _runtime, _runtime_exit, _mgr_guests, _logs, _mgr_context)
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths, VServerError  # noqa: E402

MAX_RESTARTS = 3
MAX_REBOOTS = 10
WINDOW = 60.0
STOP_GRACE = 10.0


def log(msg):
    sys.stderr.write('%s vserver-supervise: %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), msg))
    sys.stderr.flush()


def marked(paths):
    try:
        return sorted(n for n in os.listdir(_mgr_guests.autostart_dir(paths)) if not n.startswith('.'))
    except FileNotFoundError:
        return []


def condition(paths, name, interval=10.0):
    """running | crashed (init gone, runtime state left) | stopped (cleanly).

    `_runtime.stop` marks a stop before it signals init. The mark explains a dead init only while that stop
    can be the cause (its stop_timeout plus STOP_GRACE and one interval after the mark): a stop killed before
    it signalled leaves a stale mark, and a later crash is still a crash. Processes in the guest's cgroup with
    no tracked init (a start killed half-way) count as crashed: a restart cleans them up."""
    rt = _runtime.Runtime(paths, name)
    state = rt.state()
    if state in ('running', 'frozen'):
        return 'running'
    if rt.stop_mark_trusted(STOP_GRACE + interval):
        return 'stopped'
    return 'crashed' if os.path.isdir(rt.dir) or state == 'broken' else 'stopped'


def start(paths, name):
    try:
        result = _mgr_context.ensure(paths, name, {'name': name, 'state': 'started'})
        log('%s: %s' % (name, ', '.join(result.actions) or 'already running'))
        return True
    except (VServerError, OSError) as exc:
        log('%s: start failed: %s' % (name, exc))
        return False


def restart(paths, name, recent, now, interval=10.0):
    """Restart a crashed guest, deciding again under the host lock: a `vserver NAME stop` in progress also
    leaves a dead init and runtime state behind for a moment, and must win. The start goes through the context
    manager, as a task's would: the host lock is re-entrant, so the manager shares the one taken here."""
    try:
        with HostLock(paths):
            if condition(paths, name, interval) != 'crashed':
                return
            log('%s: init died, restarting' % name)
            recent.append(now)
            if _config.load(paths, name) is None:
                return
            result = _mgr_context.ensure(paths, name, {'name': name, 'state': 'started'})
            log('%s: %s' % (name, ', '.join(result.actions) or 'start'))
    except (VServerError, OSError) as exc:
        log('%s: restart failed: %s' % (name, exc))


def ended(paths, name, why, history, now, interval=10.0):
    """Init of ``name`` exited by reboot(2): 'reboot' starts it again (at most MAX_REBOOTS a WINDOW), 'halt'
    leaves it stopped (its runtime traces removed, so it does not read as crashed). Under the host lock: a
    `vserver NAME stop` or start meanwhile wins."""
    recent = [t for t in history.get(name, []) if now - t < WINDOW]
    history[name] = recent
    try:
        with HostLock(paths):
            if condition(paths, name, interval) != 'crashed':
                return
            if why == _runtime_exit.REBOOT and len(recent) < MAX_REBOOTS:
                recent.append(now)
                log('%s: rebooted from inside, starting it again' % name)
                if _config.load(paths, name) is not None:
                    result = _mgr_context.ensure(paths, name, {'name': name, 'state': 'started'})
                    log('%s: %s' % (name, ', '.join(result.actions) or 'start'))
                return
            what = 'halted' if why == _runtime_exit.HALT else 'rebooted %d times within %ds' % (len(recent), WINDOW)
            log('%s: %s from inside, left stopped' % (name, what))
            _runtime_exit.halted(paths, name)
    except (VServerError, OSError) as exc:
        log('%s: %s failed: %s' % (name, why, exc))


class _Spawned:
    """A child started with posix_spawn; reaped by the main loop (``_runtime_exit.exits``), so alive = /proc."""

    def __init__(self, pid):
        self.pid = pid

    def poll(self):
        try:
            with open('/proc/%d/stat' % self.pid) as handle:
                return None if handle.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X') else 0
        except (OSError, IndexError):
            return 0


def spawn_lxcfs(paths, path):
    """LXCFS in the foreground of a new session, with default signals and an empty signal mask (this process
    blocks SIGTERM and SIGCHLD for its loop: a child would inherit that) and its pid in RUN_DIR/.lxcfs.pid, for the
    host role's removal. It outlives this supervisor: running guests keep their view."""
    os.makedirs(paths.run_dir, mode=0o755, exist_ok=True)
    argv = ['lxcfs', '-f', '-l', '--enable-cfs', '-p', os.path.join(paths.run_dir, '.lxcfs.pid'), path]
    null = os.open('/dev/null', os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = os.posix_spawnp('lxcfs', argv, dict(os.environ), setsid=True, setsigmask=(),
                              setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE),
                              file_actions=[(os.POSIX_SPAWN_DUP2, null, 0)])
    finally:
        os.close(null)
    return _Spawned(pid)


def lxcfs_tick(paths, state):
    """LXCFS under this supervisor (``state['run']``): started when nothing is mounted at its directory. When the
    LXCFS instance seen last is gone and one answers again (a restart, by us or anyone), the running guests get
    fresh mounts."""
    fd = state.get('fd')
    if fd is not None and _lxcfs.probe_alive(fd):
        return
    proc = state.get('proc')
    if _lxcfs.mount_id() is None and state.get('run') and (proc is None or proc.poll() is not None):
        path = _lxcfs.directory()
        os.makedirs(path, mode=0o755, exist_ok=True)
        log('starting LXCFS at %s' % path)
        try:
            state['proc'] = spawn_lxcfs(paths, path)
        except OSError as exc:  # not installed: guests start with the host's files (and a warning)
            log('LXCFS cannot run: %s; not trying again' % exc)
            state['run'] = False
            return
        deadline = time.monotonic() + 10
        while _lxcfs.mount_id() is None and time.monotonic() < deadline and state['proc'].poll() is None:
            time.sleep(0.1)
    new = _lxcfs.probe_open()
    if new is None:
        return
    if fd is not None:
        os.close(fd)
    state['fd'] = new
    # an instance not seen before: the guests' mounts of an old one answer ENOTCONN, or a guest started while none
    # ran has none
    with HostLock(paths):
        for name, err in sorted(_runtime_exit.refresh_views(paths).items()):
            log('%s: LXCFS view not refreshed: %s' % (name, err))


def reap():
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def cap_logs(paths):
    """The guests' console logs stay under the cap (VSERVER_LOG_MAX, see _logs): one thread of this one host
    process, woken by inotify as soon as a log in LOG_DIR is written. Started with the signals blocked (they stay
    the main loop's); it never writes to stderr (a fork of the main thread must not inherit a held lock)."""
    try:
        watcher = _logs.Watcher(paths.log_dir, _logs.log_max())
    except (OSError, VServerError) as exc:
        log('guest logs are not capped: %s' % exc)
        return None
    watcher.cap_all([n for n in os.listdir(paths.log_dir) if n.endswith('.log')])

    def loop():
        while True:
            try:
                watcher.cap_all(watcher.wait(60))
            except OSError:
                time.sleep(1)
    import threading
    thread = threading.Thread(target=loop, name='cap-logs', daemon=True)
    thread.start()
    return thread


def supervise(paths, interval, lxcfs=False):
    history = {}
    reboots = {}
    view = {'run': lxcfs, 'fd': None}  # the first tick refreshes: LXCFS may have restarted while none watched
    for name in marked(paths):
        if condition(paths, name) != 'running':
            start(paths, name)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD, signal.SIGTERM, signal.SIGINT])
    cap_logs(paths)
    lxcfs_tick(paths, view)
    while True:
        info = signal.sigtimedwait([signal.SIGCHLD, signal.SIGTERM, signal.SIGINT], interval)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            log('exiting; guests keep running')
            return 0
        lxcfs_tick(paths, view)
        now = time.monotonic()
        done = _runtime_exit.exits(paths)  # reaps every child: the guests' inits among them say why they ended
        for name, why in sorted(done.items()):
            ended(paths, name, why, reboots, now, interval)
        for name in marked(paths):
            if name in done or condition(paths, name, interval) != 'crashed':
                continue
            recent = [t for t in history.get(name, []) if now - t < WINDOW]
            if len(recent) >= MAX_RESTARTS:
                if len(recent) == MAX_RESTARTS:
                    log('%s: died %d times within %ds, not restarting' % (name, MAX_RESTARTS, WINDOW))
                    recent.append(now)
                history[name] = recent
                continue
            restart(paths, name, recent, now, interval)
            history[name] = recent


def watch(paths, name):
    """vserver@NAME: start the guest, wait for its init; a reboot from inside starts it again here, a halt
    leaves it stopped (exit 0, the unit is not restarted)."""
    reboots = {}
    while True:
        if condition(paths, name) != 'running' and not start(paths, name):
            return 1
        why = _watch_once(paths, name)
        if why is None:
            return 0 if condition(paths, name) == 'stopped' else 1
        before = len(reboots.get(name, []))
        ended(paths, name, why, reboots, time.monotonic())
        if condition(paths, name) != 'running' or len(reboots.get(name, [])) == before:
            return 0 if condition(paths, name) == 'stopped' else 1


def _watch_once(paths, name):
    """Wait until the guest's init is gone; 'reboot' or 'halt' when it ended so (seen as its parent), else None."""
    rt = _runtime.Runtime(paths, name)
    pid = rt.init_pid()
    if not pid:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None
    why = None
    try:
        while condition(paths, name) == 'running':
            if fd is not None:
                import select
                select.select([fd], [], [], 5)
            else:
                time.sleep(1)
            why = _runtime_exit.exits(paths).get(name) or why
        return _runtime_exit.exits(paths).get(name) or why
    finally:
        if fd is not None:
            os.close(fd)


def parse(argv):
    """``(mode, interval, guest name, lxcfs)``, or None for a bad command line."""
    interval, mode, name, lxcfs = 10.0, 'foreground', None, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == '--interval' and args:
            interval = float(args.pop(0))
        elif arg in ('--once', '--daemon', '--logs', '--lxcfs-refresh'):
            mode = arg[2:]
        elif arg == '--lxcfs':
            lxcfs = True
        elif arg == '--watch' and args:
            mode, name = 'watch', args.pop(0)
        else:
            return None
    return mode, interval, name, lxcfs


def main(argv):
    parsed = parse(argv)
    if parsed is None:
        sys.stderr.write(__doc__)
        return 2
    mode, interval, name, lxcfs = parsed
    paths = Paths()
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    if mode == 'once':
        ok = [start(paths, n) for n in marked(paths) if condition(paths, n) != 'running']
        reap()
        return 0 if all(ok) else 1
    if mode == 'watch':
        return watch(paths, name)
    if mode == 'lxcfs-refresh':
        return lxcfs_refresh(paths)
    if mode == 'logs':
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
        thread = cap_logs(paths)
        if thread is None:
            return 1
        signal.sigwait([signal.SIGTERM, signal.SIGINT])
        return 0
    if mode == 'daemon':
        pidfile = os.path.join(paths.run_dir, '.supervise.pid')
        try:
            with open(pidfile) as handle:
                old = int(handle.read().strip() or 0)
            with open('/proc/%d/cmdline' % old, 'rb') as handle:
                if b'vserver-supervise' in handle.read():
                    print('vserver-supervise already running (pid %d)' % old)
                    return 0
        except (OSError, ValueError):
            pass
        sys.stdout.flush()
        if os.fork():
            print('vserver-supervise started')
            return 0
        os.setsid()
        if os.fork():
            os._exit(0)
        os.makedirs(paths.run_dir, mode=0o755, exist_ok=True)
        with open(pidfile, 'w') as handle:
            handle.write('%d\n' % os.getpid())
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
        os.makedirs(paths.log_dir, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(paths.log_dir, 'supervise.log'), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        null = os.open('/dev/null', os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir('/')
    return supervise(paths, interval, lxcfs)


def lxcfs_refresh(paths, wait=10.0):
    """Wait (up to ``wait`` s) for LXCFS's mount, then give the running guests fresh mounts."""
    deadline = time.monotonic() + wait
    while _lxcfs.mount_id() is None:
        if time.monotonic() > deadline:
            log('LXCFS is not mounted at %s' % _lxcfs.directory())
            return 1
        time.sleep(0.1)
    with HostLock(paths):
        failed = _runtime_exit.refresh_views(paths)
    for name, err in sorted(failed.items()):
        log('%s: LXCFS view not refreshed: %s' % (name, err))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
