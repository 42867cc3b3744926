# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: what the host and migrate roles look at and the host role removes beyond what builtin
modules do (behind the private modules ``_host_probe``, ``_host_remove``, ``_host_metrics`` and ``_target_guests``; were
roles/host/files/host_probe.py, host_remove.py and roles/migrate/files/target_guests.py).

``probe(want)`` is one read-only look at everything the host role manages, so an idempotent re-run costs one task
instead of one per item. ``Removal`` does one phase of ``host_state=absent`` at a time:
  probe       the configured guests, the guests' enabled boot units, the running vserver-supervise, the units
  supervisor  stop the vserver-supervise that --daemon started (its pid file in RUN_DIR), by pid, never by name
  bridge      delete the guest bridge, only while no link is attached to it
  cgroup      remove the guests' cgroup parent in every mounted hierarchy, each level only when empty
  dirs        remove the state directories (and the command's prefix) that hold nothing but bookkeeping
With ``check`` nothing is changed and the result says what a real run would do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from typing import Any, Dict

from ansible_collections.vserver.core.plugins.module_utils import _config, _kernel as K
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError, read_json

# files the runtime keeps for itself; a directory holding only these (and empty autostart/) counts as empty
BOOKKEEPING = {'.lock', '.unify-index', '.unify-index-journal', '.unify-index-wal', '.unify-index-shm',
               '.supervise.pid', '.lxcfs.pid', 'supervise.log', 'autostart', '.cap.lock', '.watch.lock', '.metrics.pid',
               'metrics.log'}
UNITS = '/etc/systemd/system'
PHASES = ('probe', 'supervisor', 'bridge', 'cgroup', 'dirs')


def _ip_json(*args):
    proc = subprocess.run(['ip', '-j'] + list(args), capture_output=True, text=True, check=False, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []


def _read(path, mode='r'):
    try:
        with open(path, mode) as handle:
            return handle.read()
    except OSError:
        return None


def probe(want: Dict[str, Any]) -> Dict[str, Any]:
    """packages missing, directories not as wanted, the env file, the installed bundle's sha1, links not ours, the
    bridge: {packages, dirs: [{path, mode}], env_file, bundle, installed, links: [{src, dest}], bridge}."""
    out = {'changed': False, 'systemd': os.path.isdir('/run/systemd/system')}
    proc = subprocess.run(['dpkg-query', '-W', '-f=${Package} ${db:Status-Status}\n'] + want['packages'],
                          capture_output=True, text=True, check=False)
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(' installed')}
    out['missing_packages'] = [p for p in want['packages'] if p not in installed]
    out['dirs_bad'] = []
    for item in want['dirs']:
        try:
            st = os.stat(item['path'])
            ok = stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == int(item['mode'], 8) and st.st_uid == 0
        except OSError:
            ok = False
        if not ok:
            out['dirs_bad'].append(item['path'])
    out['env_content'] = _read(want['env_file'])
    bundle = _read(want['bundle'], 'rb')
    out['bundle_sha1'] = hashlib.sha1(bundle).hexdigest() if bundle is not None else None
    out['installed_ok'] = all(os.path.exists(p) for p in want['installed'])
    out['links_bad'] = [link['dest'] for link in want['links']
                        if not os.path.islink(link['dest']) or os.readlink(link['dest']) != link['src']]
    bridge = {'exists': False, 'up': False, 'addrs': []}
    info = _ip_json('addr', 'show', 'dev', want['bridge']) if want.get('bridge') else []
    if info:
        bridge = {'exists': True, 'up': 'UP' in info[0].get('flags', []),
                  'addrs': ['%s/%s' % (a['local'], a['prefixlen']) for a in info[0].get('addr_info', [])]}
    out['bridge'] = bridge
    return out


def _alive(pid):
    """Running (a zombie has exited: on hosts whose PID 1 never reaps, it stays one)."""
    state = P.read_stat(pid)
    return state is not None and state[0] != 'Z'


def _rmdir_cgroup(path):
    for dummy in range(50):  # a just-removed child can keep the parent busy for a moment
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    os.rmdir(path)


def _only_bookkeeping(path):
    for entry in os.scandir(path):
        if entry.name not in BOOKKEEPING:
            return False
        if entry.is_dir(follow_symlinks=False) and (entry.name != 'autostart' or os.listdir(entry.path)):
            return False
    return True


def _remove_dir(path):
    autostart = os.path.join(path, 'autostart')
    if os.path.isdir(autostart) and not os.path.islink(autostart):
        os.rmdir(autostart)
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def cgroup_roots(mountinfo: str = '/proc/self/mountinfo'):
    """Mount points of every cgroup (v1) and cgroup2 hierarchy, in mount order."""
    roots = []
    for mount in P.read_mountinfo(mountinfo):
        if mount['fstype'] in ('cgroup', 'cgroup2') and mount['mountpoint'] not in roots:
            roots.append(mount['mountpoint'])
    return roots


class Removal:
    """One phase of the host role's removal; ``out`` is the result ({changed, actions, kept, ...})."""

    def __init__(self, req: Dict[str, Any], check: bool):
        self.req = req
        self.check = check
        self.out = {'changed': False, 'actions': [], 'kept': []}

    def run(self, phase: str) -> Dict[str, Any]:
        getattr(self, phase)()
        return self.out

    def act(self, what, func, *args):
        self.out['changed'] = True
        self.out['actions'].append(what)
        if not self.check:
            func(*args)

    def supervisor_pid(self):
        """The pid in RUN_DIR/.supervise.pid while that process is vserver-supervise (a stale file names no one)."""
        try:
            with open(os.path.join(self.req['run_dir'], '.supervise.pid')) as handle:
                pid = int(handle.read().strip() or 0)
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                argv = handle.read().split(b'\0')
        except (OSError, ValueError):
            return None
        ours = any(a.endswith(b'vserver-supervise') for a in argv) and b'--daemon' in argv
        return pid if ours and _alive(pid) else None

    def probe(self) -> None:
        paths = Paths(config_dir=self.req['config_dir'], run_dir=self.req['run_dir'], defaults_file=None)
        self.out['guests'] = _config.names(paths)
        try:  # runtime state of guests (also one whose config is gone)
            self.out['running'] = sorted(n for n in os.listdir(paths.run_dir) if not n.startswith('.'))
        except OSError:
            self.out['running'] = []
        self.out['systemd'] = os.path.isdir('/run/systemd/system')
        self.out['links_ours'] = [link['dest'] for link in self.req.get('links') or []
                                  if os.path.islink(link['dest']) and os.readlink(link['dest']) == link['src']]
        self.out['supervisor'] = self.supervisor_pid()
        try:
            wants = [os.path.join(UNITS, d) for d in os.listdir(UNITS) if d.endswith('.wants')]
            self.out['guest_units'] = sorted({n for d in wants for n in os.listdir(d)
                                              if n.startswith('vserver@') and n != 'vserver@.service'})
        except OSError:
            self.out['guest_units'] = []

    def supervisor(self):
        pid = self.supervisor_pid()
        if pid:
            self.act('stop vserver-supervise (pid %d)' % pid, self._stop_supervisor, pid)

    def lxcfs_pid(self):
        """The pid in RUN_DIR/.lxcfs.pid while that process is LXCFS (vserver-supervise --lxcfs started it)."""
        try:
            with open(os.path.join(self.req['run_dir'], '.lxcfs.pid')) as handle:
                pid = int(handle.read().strip() or 0)
            with open('/proc/%d/comm' % pid) as handle:
                comm = handle.read().strip()
        except (OSError, ValueError):
            return None
        return pid if comm == 'lxcfs' and _alive(pid) else None

    def _stop_supervisor(self, pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            raise VServerError('vserver-supervise (pid %d) did not exit within 60 s of SIGTERM' % pid)
        try:
            os.unlink(os.path.join(self.req['run_dir'], '.supervise.pid'))
        except FileNotFoundError:
            pass
        lxcfs = self.lxcfs_pid()  # the LXCFS it ran (the guests are gone by now): it unmounts itself on SIGTERM
        if lxcfs:
            os.kill(lxcfs, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(lxcfs) and time.monotonic() < deadline:
                time.sleep(0.2)

    def bridge(self):
        name = self.req['bridge']
        info = _ip_json('-d', 'link', 'show', 'dev', name) if name else []
        if not info:
            return
        if info[0].get('linkinfo', {}).get('info_kind') != 'bridge':
            self.out['kept'].append('%s is not a bridge: left alone' % name)
            return
        ports = [link['ifname'] for link in _ip_json('link', 'show', 'master', name)]
        if ports:
            self.out['kept'].append('bridge %s kept: links attached (%s)' % (name, ', '.join(ports)))
            return
        self.act('delete bridge %s' % name, K.run, ['ip', 'link', 'del', 'dev', name])

    def cgroup(self):
        parts = self.req['cgroup_parent'].split('/')
        for root in cgroup_roots():
            for depth in range(len(parts), 0, -1):
                path = os.path.join(root, *parts[:depth])
                if not os.path.isdir(path):
                    continue
                if any(e.is_dir(follow_symlinks=False) for e in os.scandir(path)):
                    self.out['kept'].append('cgroup %s kept: it has child cgroups' % path)
                    break
                self.act('remove cgroup %s' % path, _rmdir_cgroup, path)

    def dirs(self):
        for path in self.req['dirs']:
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            if os.path.ismount(path):
                self.out['kept'].append('%s kept: it is a mount point' % path)
            elif _only_bookkeeping(path):
                self.act('remove directory %s' % path, _remove_dir, path)
            else:
                self.out['kept'].append('%s kept: it holds %s' % (path, ', '.join(sorted(os.listdir(path))[:5])))
        # the command's prefix, innermost first: only when empty (in check mode: once what the run removes is gone)
        gone = set(self.req.get('removed') or []) if self.check else set()
        for path in self.req.get('empty_dirs') or []:
            if os.path.isdir(path) and not os.path.islink(path) and \
                    all(os.path.join(path, name) in gone for name in os.listdir(path)):
                self.act('remove directory %s' % path, os.rmdir, path)
                gone.add(path)


def target_guests(config_dir: str, tree_dir: str) -> Dict[str, Any]:
    """A migration target's guests (name -> xid and addresses; unreadable configs are skipped), the free space for
    trees (of tree_dir, or of its nearest existing parent) and which names already have a tree there."""
    guests = {}
    for name in _config.names(Paths(config_dir=config_dir, tree_dir=tree_dir, defaults_file=None)):
        try:
            doc = read_json(os.path.join(config_dir, name + '.json'))
        except (OSError, VServerError):
            continue
        if isinstance(doc, dict):
            guests[name] = {'xid': doc.get('xid'), 'addresses': (doc.get('network') or {}).get('addresses') or []}
    probe_dir = tree_dir
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(probe_dir)
    st = os.statvfs(probe_dir)
    roots = {name: True for name in os.listdir(tree_dir)} if os.path.isdir(tree_dir) else {}
    return {'changed': False, 'guests': guests, 'free_bytes': st.f_bavail * st.f_frsize, 'root_exists': roots}


# --- the metrics writer of hosts without systemd (private module _host_metrics) ----------------------------------
#
# Where systemd is PID 1 the host role installs a timer. Elsewhere one detached `vserver metrics --textfile DIR
# --every S` per host writes the textfile: started here, its pid in RUN_DIR/.metrics.pid, its stderr appended to
# LOG_DIR/metrics.log. It is found again by that pid and its command line (never by name); a writer with other
# settings is stopped and started afresh.

METRICS_PIDFILE = '.metrics.pid'
METRICS_FILE = 'vserver.prom'


def metrics_argv(req: Dict[str, Any]) -> list:
    """The writer's command line: the host's Python runs the installed command with explicit host roots."""
    argv = [req['python'], '-IS', req['command']]
    for key in ('config_dir', 'run_dir', 'tree_dir', 'log_dir', 'cgroup_parent'):
        argv += ['--' + key.replace('_', '-'), req[key]]
    return argv + ['metrics', '--textfile', req['textfile_dir'], '--every', str(req['interval'])]


def _metrics_writer(run_dir):
    """``(pid, argv)`` of the running writer named by RUN_DIR/.metrics.pid, or ``(None, None)``."""
    try:
        with open(os.path.join(run_dir, METRICS_PIDFILE)) as handle:
            pid = int(handle.read().strip() or 0)
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            argv = [a.decode('utf-8', 'surrogateescape') for a in handle.read().split(b'\0')[:-1]]
    except (OSError, ValueError):
        return None, None
    ours = argv[-5:-3] == ['metrics', '--textfile'] and argv[-2:-1] == ['--every'] and _alive(pid)
    return (pid, argv) if ours else (None, None)


def _stop_writer(pid, pidfile):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        raise VServerError('the metrics writer (pid %d) did not exit within 10 s of SIGTERM' % pid)
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass


def _start_writer(argv, run_dir, log_dir):
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    os.makedirs(log_dir, mode=0o750, exist_ok=True)
    log = os.open(os.path.join(log_dir, 'metrics.log'), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:  # a session of its own, no fd of the module's: it outlives this run
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd='/',
                                start_new_session=True, close_fds=True)
    finally:
        os.close(log)
    time.sleep(0.3)  # a writer that fails at once (the textfile directory went away): said here, not in its log
    if proc.poll() is not None:
        raise VServerError('the metrics writer exited at once (status %s); see %s'
                           % (proc.returncode, os.path.join(log_dir, 'metrics.log')), 'textfile_dir')
    from ansible_collections.vserver.core.plugins.module_utils._common import atomic_write
    atomic_write(os.path.join(run_dir, METRICS_PIDFILE), '%d\n' % proc.pid, 0o644, durable=False)
    return proc.pid


def metrics_writer(req: Dict[str, Any], check: bool) -> Dict[str, Any]:
    """``state=present``: one writer runs with exactly these settings; ``absent``: none runs, and the textfile it
    wrote (``textfile_dir``'s and the running writer's) is removed: node_exporter would serve it forever."""
    out = {'changed': False, 'actions': []}
    pidfile = os.path.join(req['run_dir'], METRICS_PIDFILE)
    pid, argv = _metrics_writer(req['run_dir'])
    want = metrics_argv(req) if req['state'] == 'present' else None
    if want and not 1 <= req['interval'] <= 86400:
        raise VServerError('interval: seconds between 1 and 86400 (got %s)' % req['interval'], 'interval')
    if want and not os.path.isdir(req['textfile_dir']):
        raise VServerError('textfile_dir: %s is not a directory (node_exporter\'s --collector.textfile.directory, '
                           'which must exist)' % req['textfile_dir'], 'textfile_dir')

    def act(what, func, *args):
        out['changed'] = True
        out['actions'].append(what)
        return None if check else func(*args)
    if pid and argv != want:
        act('stop the metrics writer (pid %d)' % pid, _stop_writer, pid, pidfile)
    if want and argv != want:
        out['pid'] = act('start the metrics writer: %s' % ' '.join(want[2:]), _start_writer, want,
                         req['run_dir'], req['log_dir'])
    elif want:
        out['pid'] = pid
    old = argv[-3] if argv else None
    stale = {req.get('textfile_dir'), old} if not want else {old} - {req['textfile_dir']}
    for path in sorted(os.path.join(d, METRICS_FILE) for d in stale if d):
        if os.path.isfile(path):
            act('remove %s' % path, os.unlink, path)
    return out
