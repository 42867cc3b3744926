# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the guest lifecycle (start, stop, freeze, thaw, status, the concerns' steps).

Start forks twice. The first child joins the guest's cgroup, unshares the mount, UTS, IPC, network,
cgroup, PID and time namespaces, sets the boottime offset (virtual uptime), the host name and brings
``lo`` up, then forks the guest's init (PID 1 of the new PID namespace) and exits. The init process
sets up its root (bind, nodev, pivot_root, old root detached), a fresh /proc, read-only /proc/sys and
/sys, a minimal /dev, drops its bounding set, clears ambient and inheritable capabilities, applies
rlimits and execs the guest's init (those two processes: _runtime_child). No host-side process stays behind per
guest.

The concerns (capabilities, limits, network) take part in a start and a removal through one explicit
interface: ``_steps()`` below names each call, in the order it runs. Phases (where, and what a step may do):

  cgroup   ``f(doc, group)``: host side, after the guest's cgroup is created, before any process joins it.
           Check the concern's section (a bad config fails the start before any fork) and write cgroup files
           (limits: memory.max, pids.max, devices, the disk image).        1. _caps (syscall filter)  2. _limits
  netns    ``f(doc)``: in the intermediate child, inside the guest's new network namespace, before init is
           forked. Set per-netns state (interface defaults, sysctls).     1. _netns  2. _caps (ccaps sysctls)
  child    ``f(doc)``: in the guest's init after pivot_root, before the bounding set is dropped: per-process
           settings (rlimits); `vserver exec/enter` copy them from init (see _enter).      1. _limits
  started  ``f(paths, doc, runtime)``: host side, after init runs; may raise, and the start is then rolled back
           (everything of the guest removed).       1. _netns (interface, addresses, routes)  2. _caps (record)
  absent   ``f(paths, doc)``: when a guest is removed, after it is stopped and before its config goes; ``doc`` is
           None for a broken config.                                     1. _limits (disk image)

A step reads only its own config section. Concerns never import this file (the layers point down, see
docs/architecture.md; tests/unit/test_layers.py checks it).
Nothing else of a concern runs inside a start.
"""

from __future__ import annotations

import os
import signal
import time

from ansible_collections.vserver.core.plugins.module_utils import (
    _caps, _cgroup, _config, _kernel as K, _lxcfs, _procfs as P, _logs, _runtime_boot, _runtime_child)
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError, read_json, write_json

STATE_FILE = 'state.json'
NETNS_HANDLE = 'netns'
NAMESPACES = ('mnt', 'uts', 'ipc', 'net', 'pid', 'cgroup', 'time')

BROKEN_MESSAGE = ("processes in the guest's cgroup but no tracked init (a start or stop was killed half-way); "
                  "state started kills them and starts the guest afresh, state stopped kills them")


def _read_record(path):
    """The runtime record (state.json) of a guest, or {} when it is missing or unusable (truncated by a crash, not
    a JSON object): then the guest's init is untracked, and what its cgroup holds decides (stopped, or broken until
    a start or stop cleans it up). A volatile file under /run never breaks a listing or a stop."""
    try:
        record = read_json(path, {})
    except (VServerError, OSError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


class Runtime:
    """What the kernel says about one guest: its init process, cgroup and netns handle."""

    def __init__(self, paths, name, layout=None):
        self.paths = paths
        self.name = name
        self.dir = paths.runtime(name)
        self.record = _read_record(os.path.join(self.dir, STATE_FILE))
        self._layout = layout
        self.repaired = False

    @property
    def layout(self):
        if self._layout is None:
            self._layout = _cgroup.host_layout()
        return self._layout

    @property
    def parent(self):
        """The cgroup parent of this guest: as recorded at start, else where a start would put it."""
        recorded = self.record.get('cgroup_parent')
        if isinstance(recorded, str) and recorded:
            return recorded
        return _cgroup.guest_parent(self.paths.cgroup_parent, self.layout)

    @property
    def group(self):
        return self.layout.group(self.parent, self.name)

    @property
    def netns(self):
        return os.path.join(self.dir, NETNS_HANDLE)

    def init(self):
        """One read of the guest's init: ``(pid, stat)`` if that very process still runs (pid and start time
        match, and it is in the guest's cgroup), else ``(None, None)``. Callers use what this one read returned,
        never a second look: init may exit at any moment."""
        fd, st = self._open_init()
        if fd is None:
            return None, None
        os.close(fd)
        return self.record['init_pid'], st

    def init_pid(self):
        """The guest's init pid if that very process still runs, else None."""
        return self.init()[0]

    def open_init(self):
        """A directory fd on /proc/PID of the guest's init, checked through that fd, or None if init is gone.

        What is opened through this fd belongs to that very process: once it exits, opening fails (ESRCH)
        even if its pid is reused meanwhile. It is also a pidfd (signal.pidfd_send_signal). The caller closes it."""
        return self._open_init()[0]

    def _open_init(self):
        pid = self.record.get('init_pid')
        if not pid or not isinstance(pid, int):
            return None, None
        try:
            fd = os.open('/proc/%d' % pid, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):  # ESRCH: exiting right now
            return None, None
        try:
            st = P.read_stat_at(fd)
            if st is None or st[0] in ('Z', 'X') or st[2] != self.record.get('init_start') or not self._owns(fd):
                os.close(fd)
                return None, None
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _owns(self, proc_fd):
        """Is the process behind ``proc_fd`` in this guest's cgroup? A recorded pid and start time alone may
        match a host process (a forged or stale state file): that one is not the guest's init."""
        raw = P.read_at(proc_fd, 'cgroup')
        return raw is not None and _cgroup.guest_of(_cgroup.parse_proc_cgroup(raw), self.parent) == self.name

    def netns_lost(self, proc_fd):
        """True when the netns handle is not (a bind mount of) the network namespace of init (``proc_fd``)."""
        try:
            want = os.stat('ns/net', dir_fd=proc_fd)
        except (FileNotFoundError, ProcessLookupError):
            return False  # init is gone: there is nothing to keep reachable
        except PermissionError:  # EACCES while init exits
            if _exiting(proc_fd):
                return False
            raise
        try:
            have = os.stat(self.netns)
        except FileNotFoundError:
            return True
        return (have.st_dev, have.st_ino) != (want.st_dev, want.st_ino)

    def repair_netns(self, proc_fd):
        """Bind init's network namespace (through its /proc fd) at the handle again, over whatever is there."""
        for dummy in range(8):  # a stale mount stacked on the handle
            if not os.path.ismount(self.netns):
                break
            K.umount(self.netns, K.MNT_DETACH)
        return _bind_netns(proc_fd, self.netns)

    def netns_handle(self, repair=False):
        """``(pid, handle)`` of a running guest, the handle checked against init's network namespace; else
        ``(None, None)``. A lost handle (unmounted, removed) is bound again when ``repair`` (the caller holds the
        host lock; ``self.repaired`` is then True), else VServerError."""
        self.repaired = False
        fd = self.open_init()
        if fd is None:
            return None, None
        try:
            if self.netns_lost(fd):
                if not repair:
                    raise VServerError(
                        'guest %s runs but its network namespace handle %s is lost (unmounted or removed); '
                        'state started (vserver.core.context, or vserver %s start) repairs it'
                        % (self.name, self.netns, self.name), 'name')
                self.repair_netns(fd)
                self.repaired = True
            return self.record['init_pid'], self.netns
        finally:
            os.close(fd)

    def stop_mark_trusted(self, grace):
        """A ``stopping`` mark explains a dead init only while that stop can still be the cause: up to its
        stop_timeout plus ``grace`` seconds after the mark. A stop killed before it signalled leaves a mark that
        must not turn a later crash into a clean stop."""
        mark = self.record.get('stopping')
        if not isinstance(mark, dict):
            return bool(mark)
        try:
            return P.boottime_now() <= float(mark['at']) + float(mark['timeout']) + grace
        except (KeyError, TypeError, ValueError):
            return False

    def repairs(self, proc_fd):
        """What is wrong with the runtime state of a running guest (init ``proc_fd``): a list of actions."""
        out = []
        if self.netns_lost(proc_fd):
            out.append('repair netns handle')
        if self.record.get('stopping'):
            out.append('clear stale stop mark')
        return out

    def repair(self, proc_fd, actions):
        if 'repair netns handle' in actions:
            self.repair_netns(proc_fd)
        if 'clear stale stop mark' in actions:
            self.record.pop('stopping', None)
            write_json(os.path.join(self.dir, STATE_FILE), self.record, 0o600, durable=False)

    def _state_of(self, pid):
        if pid is None:
            # no tracked init: a start or stop killed half-way may have left processes in the cgroup
            try:
                return 'broken' if self.group.exists() and self.group.procs() else 'stopped'
            except (OSError, VServerError):
                return 'stopped'
        try:
            if self.group.frozen():
                return 'frozen'
        except (OSError, VServerError):
            pass
        return 'running'

    def state(self):
        return self._state_of(self.init_pid())

    def leftovers(self):
        """Anything of this guest still on the host (for cleanup after a crash of init)."""
        found = []
        if os.path.isdir(self.dir):
            found.append(self.dir)
        if self.group.exists():
            found.append('cgroup')
        return found


def _log_fd(paths, name):
    os.makedirs(paths.log_dir, mode=0o750, exist_ok=True)
    _logs.cap(paths.log_file(name), _logs.log_max())  # bounded while it runs by vserver-supervise (_logs)
    return os.open(paths.log_file(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def log_watched(paths: Paths) -> bool:
    """Whether a vserver-supervise watcher keeps the guests' console logs capped (``vserver NAME start`` says so when
    none does)."""
    return _logs.watching(paths.log_dir)


def _bind_netns(proc_fd, handle):
    """Keep the guest's netns reachable at ``handle`` (for address changes); False if init already exited.

    ``proc_fd`` is init's /proc/PID directory fd: the namespace bound is that process's, never a reused pid's."""
    try:
        ns_fd = os.open('ns/net', os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:  # EACCES: the kernel refuses the namespaces of a process that is exiting
        if _exiting(proc_fd):
            return False
        raise
    try:
        with open(handle, 'w'):
            pass
        K.mount('/proc/self/fd/%d' % ns_fd, handle, None, K.MS_BIND)
    finally:
        os.close(ns_fd)
    return True


def _exiting(proc_fd, timeout=2.0):
    """After EACCES on a namespace of the process behind ``proc_fd``: is it exiting? (It is then a zombie, or
    gone, within moments; its /proc state may still say running while it tears down.)"""
    deadline = time.monotonic() + timeout
    while True:
        st = P.read_stat_at(proc_fd)
        if st is None or st[0] in ('Z', 'X'):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _ns_inodes(proc_fd):
    out = {}
    for kind in NAMESPACES:
        try:
            out[kind] = os.readlink('ns/' + kind, dir_fd=proc_fd)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            out[kind] = None
    return out


def cleanup(paths: Paths, name: str, layout: _cgroup.Layout | None = None, timeout: float = 5.0) -> None:
    """Remove every runtime trace of a guest: processes, cgroup, netns handle, runtime dir."""
    rt = Runtime(paths, name, layout)
    group = rt.group
    if group.exists():
        if group.frozen():
            group.thaw()
        if not group.kill(timeout):
            raise VServerError('processes of guest %s survived SIGKILL: %s' % (name, group.procs()))
        group.remove()
    if os.path.exists(rt.netns):
        try:
            K.umount(rt.netns, K.MNT_DETACH)
        except OSError:
            pass
    import shutil  # here, not at the top: `vserver exec` never needs it (it imports bz2, lzma)
    shutil.rmtree(rt.dir, ignore_errors=True)


def _record_init(rt, pid, parent, group, root):
    """Write the runtime record of a guest whose init is ``pid`` and bind its network namespace at the handle.
    Everything about init is read once, through its /proc fd: it may exit (or its pid be reused) any time."""
    try:
        proc_fd = os.open('/proc/%d' % pid, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        proc_fd = None
    try:
        st = P.read_stat_at(proc_fd) if proc_fd is not None else None
        alive = st is not None and st[0] not in ('Z', 'X')
        record = {
            'name': rt.name, 'init_pid': pid, 'init_start': st[2] if st else None,
            'started_at': time.time(), 'cgroup_parent': parent,
            'cgroup': group.paths(), 'root': root,
            'ns': _ns_inodes(proc_fd) if alive else {kind: None for kind in NAMESPACES},
        }
        write_json(os.path.join(rt.dir, STATE_FILE), record, 0o600, durable=False)  # /run: volatile
        if alive:
            _bind_netns(proc_fd, os.path.join(rt.dir, NETNS_HANDLE))
    finally:
        if proc_fd is not None:
            os.close(proc_fd)
    return record


def _guest_view(doc):
    """The guest's LXCFS view of /proc (docs/guest-view.md): ``(taken mounts, warnings)``. Taken host side, before
    any fork (the guest's init attaches them after its /proc is mounted, see ``start``); LXCFS not running or the
    guest's ``lxcfs: false``: none, and the guest starts with the host's files (a warning in the first case)."""
    if not _lxcfs.enabled(doc):
        return [], []
    why = _lxcfs.unavailable()
    if why is None:
        try:
            return _lxcfs.take(), []
        except OSError as exc:
            why = 'LXCFS at %s: %s' % (_lxcfs.directory(), exc)
    return [], ['guest %s: %s; it sees the host\'s memory, CPUs and uptime in /proc (lxcfs: false in its config '
                'turns this view off)' % (doc['name'], why)]


def start(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None) -> dict:
    """Start the guest described by ``doc``; return its runtime record. Rolls back on failure."""
    name = doc['name']
    root = os.path.realpath(doc['root'])
    if not os.path.isdir(root):
        raise VServerError('root %s of guest %s does not exist' % (doc['root'], name), 'root')
    rt = Runtime(paths, name, layout)
    if rt.init_pid():
        raise VServerError('guest %s is already running' % name)
    if rt.leftovers():
        cleanup(paths, name, rt.layout)
    rt = Runtime(paths, name, rt.layout)
    parent = rt.parent  # under systemd: inside the delegated unit
    if parent != paths.cgroup_parent:
        _cgroup.ensure_delegation(rt.layout)
    group = rt.layout.group(parent, name)
    os.makedirs(paths.run_dir, mode=0o755, exist_ok=True)
    log_fd = pid_r = pid_w = err_r = err_w = None
    view = []
    try:
        os.makedirs(rt.dir, mode=0o700, exist_ok=True)
        group.create()
        for step in _steps('cgroup'):  # the first call imports the concerns: before any fork
            step(doc, group)
        view, view_warnings = _guest_view(doc)
        child_steps = _steps('child') + ([_lxcfs.attacher(view)] if view else [])
        log_fd = _log_fd(paths, name)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            os.close(pid_r)
            os.close(err_r)
            _runtime_child.intermediate(doc, group, root, log_fd, pid_w, err_w, _steps('netns'), child_steps)
        os.close(pid_w)
        pid_w = None
        os.close(err_w)
        err_w = None
        dummy, status = os.waitpid(child, 0)
        raw = P.read_all(pid_r)
        errors = P.read_all(err_r)  # EOF once init has exec'd (close-on-exec) or died
        if errors or not raw:
            reason = errors.decode(errors='replace') or 'intermediate exited with %d' % status
            raise VServerError('guest %s failed to start: %s' % (name, reason))
        pid = int(raw)
        record = _record_init(rt, pid, parent, group, root)
        rt = Runtime(paths, name, rt.layout)
        for step in _steps('started'):
            step(paths, doc, rt)
        return dict(record, warnings=view_warnings) if view_warnings else record
    except BaseException:
        try:
            cleanup(paths, name, rt.layout)
        except Exception:
            pass
        raise
    finally:
        for fd in [log_fd, pid_r, pid_w, err_r, err_w] + [fd for fd, dummy in view]:
            if fd is not None:
                os.close(fd)


# --- stopping ----------------------------------------------------------------------------------------

# The stop settings are context keys of the config (checked by _config); re-exported for the callers here.
DEFAULT_STOP_SIGNAL = _config.DEFAULT_STOP_SIGNAL
DEFAULT_STOP_TIMEOUT = _config.DEFAULT_STOP_TIMEOUT
parse_signal = _config.parse_signal
parse_stop_timeout = _config.parse_stop_timeout


def stop_settings(doc):
    """``(signal number, timeout, warnings)`` for stopping ``doc``'s guest. A config with a bad stop_signal or
    stop_timeout still stops (an admin must be able to stop such a guest): with the default, and a warning."""
    warnings = []
    try:
        sig = parse_signal(doc.get('stop_signal', DEFAULT_STOP_SIGNAL))
    except VServerError as exc:
        sig = int(signal.Signals[DEFAULT_STOP_SIGNAL])
        warnings.append('%s; stopped with %s instead' % (exc, DEFAULT_STOP_SIGNAL))
    try:
        timeout = parse_stop_timeout(doc.get('stop_timeout', DEFAULT_STOP_TIMEOUT))
    except VServerError as exc:
        timeout = DEFAULT_STOP_TIMEOUT
        warnings.append('%s; waited %d seconds instead' % (exc, DEFAULT_STOP_TIMEOUT))
    return sig, timeout, warnings


def _wait_gone(proc_fd, timeout):
    """Wait until the process behind ``proc_fd`` has exited (zombie or reaped), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        st = P.read_stat_at(proc_fd)
        if st is None or st[0] in ('Z', 'X'):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.05))


def stop(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None) -> list[str]:
    """Signal init, wait ``stop_timeout``, kill what is left; leave nothing of the guest behind.

    Returns a list of warnings (bad stop settings in the config, replaced by the defaults). Only a process in
    the guest's cgroup is signalled, through its /proc fd (a pidfd): never a host process that matches a
    stale record or reused init's pid."""
    name = doc['name']
    sig, timeout, warnings = stop_settings(doc)  # before anything is touched
    rt = Runtime(paths, name, layout)
    proc_fd = rt.open_init()
    if proc_fd is not None:
        try:
            # mark the stop first: a watcher (vserver-supervise) seeing init gone must not take it for a crash
            mark = {'at': P.boottime_now(), 'timeout': timeout}
            write_json(os.path.join(rt.dir, STATE_FILE), dict(rt.record, stopping=mark), 0o600, durable=False)
            if rt.group.exists() and rt.group.frozen():
                rt.group.thaw()
            kind = _runtime_boot.init_kind(proc_fd)
            deadline = time.monotonic() + timeout
            try:
                signal.pidfd_send_signal(proc_fd, _runtime_boot.stop_signal(kind, sig))
            except ProcessLookupError:
                pass
            if kind == 'sysvinit':
                _runtime_boot.wait_sysvinit_down(proc_fd, rt.group, timeout)
            _wait_gone(proc_fd, max(0.0, deadline - time.monotonic()))
        finally:
            os.close(proc_fd)
    cleanup(paths, name, rt.layout)
    return warnings


def freeze(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None) -> None:
    rt = Runtime(paths, doc['name'], layout)
    if not rt.group.freeze():
        raise VServerError('guest %s did not freeze in time' % doc['name'])


def thaw(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None) -> None:
    Runtime(paths, doc['name'], layout).group.thaw()


def status(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None) -> dict:
    """Facts about one guest, read from the kernel."""
    rt = Runtime(paths, doc['name'], layout)
    pid, st = rt.init()  # read once: an init that exits from here on is reported as it was seen
    state = rt._state_of(pid)
    out = {'name': doc['name'], 'xid': doc.get('xid'), 'state': state, 'root': doc.get('root'),
           'hostname': doc.get('hostname') or doc['name'], 'init_pid': None, 'uptime': None,
           'nproc': 0, 'memory_bytes': None, 'cpu_seconds': None,
           'addresses': list((doc.get('network') or {}).get('addresses') or [])}
    if state == 'stopped':
        return out
    if state == 'broken':
        out['message'] = BROKEN_MESSAGE
        out['nproc'] = len(rt.group.procs())
        out['cgroup'] = rt.group.paths()
        return out
    out['init_pid'] = pid
    out['uptime'] = round(P.uptime() - st[2] / float(P.clock_ticks()), 2)
    group = rt.group
    procs = group.procs()
    out['nproc'] = len(procs)
    out['memory_bytes'] = group.memory_usage()
    cpu = group.cpu_usage_ns()
    out['cpu_seconds'] = round(cpu / 1e9, 3) if cpu is not None else None
    out['cgroup'] = group.paths()
    out['namespaces'] = rt.record.get('ns')
    return out


def set_uts(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None) -> None:
    """Apply hostname/domainname to a running guest, live."""
    proc_fd = Runtime(paths, doc['name'], layout).open_init()
    if proc_fd is None:
        return

    def apply():
        import socket
        socket.sethostname(doc.get('hostname') or doc['name'])
        K.setdomainname(doc.get('domainname') or '(none)')
    try:  # through init's /proc fd: never the UTS namespace of a process that reused its pid
        K.call_in_namespaces(['/proc/self/fd/%d/ns/uts' % proc_fd], apply)
    except OSError as exc:
        raise VServerError('guest %s: cannot set its host name: %s' % (doc['name'], exc), 'hostname')
    finally:
        os.close(proc_fd)


# --- the concerns' steps in a start and a removal (the interface described at the top) ----------------------

_STEPS = []


def _steps(phase):
    """The functions of ``phase``, in call order.

    The table is built on the first start or removal, not at import: _limits and _netns take ~50 ms to import and
    `vserver exec/enter/status/stat` (which import this file) never start a guest (measured: `import _runtime`
    70 ms, with both concerns 120 ms). The imports are still direct and point down a floor (test_layers)."""
    if not _STEPS:
        from ansible_collections.vserver.core.plugins.module_utils import _limits, _netns
        _STEPS.extend((  # each step takes what its phase gives (see the top of this file)
            ('cgroup', _caps.on_cgroup),      # the syscall filter built (and checked) before anything
            ('cgroup', lambda doc, group: _limits.on_cgroup(doc['root'], doc.get('limits'), group)),  # disk, limits
            ('netns', _netns.on_netns),       # interface defaults in the new netns
            ('netns', _caps.on_netns),        # ccaps sysctls (raw_icmp: ping_group_range)
            ('child', lambda doc: _limits.on_child(doc.get('limits'))),  # rlimits, before caps are dropped
            ('started', _netns.on_started),   # interface, addresses, routes
            ('started', _caps.on_started),    # which filter runs (restart_required)
            ('absent', lambda paths, doc: _limits.on_absent(doc.get('root') if doc else None)),  # its disk image
        ))
    return [func for name, func in _STEPS if name == phase]


def on_absent(paths: Paths, doc: dict | None) -> None:
    """A guest is being removed (stopped already; its config still there, or ``doc`` None when it is broken)."""
    for step in _steps('absent'):
        step(paths, doc)
