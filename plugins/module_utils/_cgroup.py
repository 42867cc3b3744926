# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: one cgroup interface, two backends (v1 hybrid hosts, v2 unified hosts).

``detect()`` reads mountinfo and returns a layout; ``layout.group(parent, name)`` returns the guest's
cgroup, which is created, joined, frozen, killed, read and removed the same way on both backends.
Everything takes its paths from the layout, so unit tests run against fake cgroup trees.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ansible_collections.vserver.core.plugins.module_utils import _common, _kernel
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._procfs import read_mountinfo

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from typing import Any, Callable

V1_CONTROLLERS = ('memory', 'pids', 'cpu', 'cpuacct', 'cpuset', 'freezer', 'blkio', 'devices')


def _read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return default


def _write(path, value):
    with open(path, 'w') as handle:
        handle.write(str(value))


class Layout:
    """The cgroup hierarchies mounted on this host."""

    def __init__(self, version, v1=None, unified=None):
        self.version = version          # 1 (v1 controllers, maybe a hybrid unified mount) or 2
        self.v1 = v1 or {}              # controller -> mountpoint (v1 only)
        self.unified = unified          # cgroup2 mountpoint or None

    def group(self, parent, name):
        if self.version == 2:
            return CgroupV2(self, parent, name)
        return CgroupV1(self, parent, name)

    def describe(self):
        return {'version': self.version, 'v1': dict(self.v1), 'unified': self.unified}


def detect(mountinfo='/proc/self/mountinfo'):
    mounts = mountinfo if isinstance(mountinfo, list) else read_mountinfo(mountinfo)
    v1 = {}
    unified = None
    for entry in mounts:
        if entry['fstype'] == 'cgroup2' and unified is None:
            unified = entry['mountpoint']
        elif entry['fstype'] == 'cgroup':
            for opt in entry['super'].split(','):
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = entry['mountpoint']
    if v1:
        return Layout(1, v1=v1, unified=unified)
    if unified:
        return Layout(2, unified=unified)
    raise VServerError('no cgroup filesystem is mounted on this host (need cgroup v1 controllers or cgroup2)')


_HOST_LAYOUT = []


def host_layout() -> Layout:
    """This host's layout, detected once per process (cgroup mounts do not move under a running tool)."""
    if not _HOST_LAYOUT:
        _HOST_LAYOUT.append(detect())
    return _HOST_LAYOUT[0]


class _Base:
    def __init__(self, layout, parent, name):
        self.layout = layout
        self.parent = parent
        self.name = name
        self.rel = parent + '/' + name

    # --- shared logic --------------------------------------------------------------------------
    # A guest's processes may sit in child cgroups it made itself (an unconfined guest can mount cgroupfs in a
    # user namespace): everything below counts the whole subtree, in every hierarchy. A process cannot leave the
    # subtree: its cgroup namespace is rooted at the guest's cgroup, and the kernel refuses moves outside it.
    def procs(self):
        """Every process in the group's subtree, in every hierarchy (sorted pids)."""
        found = set()
        for top in self.paths().values():
            for path in _subtree(top):
                raw = _read(os.path.join(path, 'cgroup.procs'), '') or ''
                found.update(int(x) for x in raw.split())
        return sorted(found)

    def wait_empty(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.procs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def kill(self, timeout=5.0):
        """Kill every process of the group's subtree and wait until it is empty: ``cgroup.kill`` where the kernel
        has it (cgroup v2, Linux 5.14+; it kills the whole subtree), else freeze the subtree, SIGKILL each
        process, thaw (a frozen process cannot fork away from the kill)."""
        if not self.exists():
            return True
        deadline = time.monotonic() + timeout
        while self.procs():
            self._kill_once()
            if self.wait_empty(0.5):
                break
            if time.monotonic() > deadline:
                return False
        return True

    def _kill_each(self):
        for pid in self.procs():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _freeze_kill_thaw(self):
        frozen = False
        try:
            frozen = self.freeze(timeout=1.0)
        except (OSError, VServerError):
            pass
        self._kill_each()
        if frozen:
            self.thaw()
        self._thaw_subtree()

    def _thaw_subtree(self):
        """Let pending SIGKILLs land everywhere in the subtree (v1: a task frozen in a child cgroup the guest froze
        itself does not die until that cgroup is thawed; v2: a frozen process dies of SIGKILL)."""

    def remove(self, timeout=5.0):
        """Remove the group's subtree bottom-up in every hierarchy, then the shared parent once empty. A cgroup
        whose last process was just killed stays busy until that process is reaped: EBUSY is retried until
        ``timeout``; what is left then is named in the error."""
        deadline = time.monotonic() + timeout
        left = []
        for top in self.paths().values():
            for path in _subtree(top):
                if not _rmdir(path, deadline):
                    left.append(path)
        if left:
            procs = self.procs()
            raise VServerError('cgroups of guest %s could not be removed (busy): %s%s'
                               % (self.name, ', '.join(left),
                                  '; processes still in them: %s' % ' '.join(map(str, procs)) if procs else ''))
        for top in self.paths().values():
            _rmdir_if_empty(os.path.dirname(top))

    def info(self):
        return {'path': self.paths(), 'memory_bytes': self.memory_usage(), 'cpu_ns': self.cpu_usage_ns(),
                'nproc': len(self.procs())}


def _subtree(top):
    """The cgroup directories of ``top``'s subtree, deepest first, ``top`` last (none if it does not exist)."""
    if not os.path.isdir(top):
        return []
    out = [os.path.join(base, name) for base, dirs, dummy in os.walk(top, topdown=False) for name in dirs]
    return out + [top]


def _rmdir(path, deadline):
    """rmdir one cgroup, retrying EBUSY until ``deadline``; True once it is gone."""
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                return False
        time.sleep(0.02)


def _rmdir_if_empty(path, attempts=50):
    """Remove the shared parent once its last guest is gone. A just-removed child can keep it busy for a
    moment (its css is released asynchronously), so EBUSY is retried while it has no child cgroup left."""
    for dummy in range(attempts):
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return
        try:
            if any(entry.is_dir(follow_symlinks=False) for entry in os.scandir(path)):
                return  # other guests live here
        except OSError:
            return
        time.sleep(0.02)


class CgroupV1(_Base):
    """cgroup v1: one directory per controller hierarchy, plus the unified (cgroup2) one on hybrid hosts."""

    def _dirs(self):
        seen = {}
        for ctrl, mnt in self.layout.v1.items():
            seen.setdefault(mnt, ctrl)
        out = [(ctrl, os.path.join(mnt, self.rel)) for mnt, ctrl in seen.items()]
        if self.layout.unified:
            out.append(('unified', os.path.join(self.layout.unified, self.rel)))
        return out

    def paths(self):
        return dict(self._dirs())

    def dir_for(self, controller):
        mnt = self.layout.v1.get(controller)
        if mnt is None:
            raise VServerError('the cgroup v1 controller %r is not mounted on this host' % controller)
        return os.path.join(mnt, self.rel)

    def exists(self):
        return any(os.path.isdir(path) for dummy, path in self._dirs())

    def create(self):
        for ctrl, path in self._dirs():
            self._mkdirs(ctrl, path)

    def _mkdirs(self, ctrl, path):
        root = self.layout.unified if ctrl == 'unified' else self.layout.v1[ctrl]
        current = root
        for part in os.path.relpath(path, root).split('/'):
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                continue
            if 'cpuset' in self.layout.v1 and self.layout.v1['cpuset'] == root:
                parent = os.path.dirname(current)
                for key in ('cpuset.cpus', 'cpuset.mems'):
                    value = _read(os.path.join(parent, key))
                    if value and not _read(os.path.join(current, key)):
                        _write(os.path.join(current, key), value)

    def join(self, pid):
        for dummy, path in self._dirs():
            _write(os.path.join(path, 'cgroup.procs'), pid)

    def _kill_once(self):
        # hybrid host: the unified hierarchy's cgroup.kill reaches every process of the guest (each joined it)
        unified = self.paths().get('unified')
        if unified and os.path.exists(os.path.join(unified, 'cgroup.kill')):
            _write(os.path.join(unified, 'cgroup.kill'), 1)
            self._thaw_subtree()
            if self.wait_empty(0.2):
                return
        if 'freezer' in self.layout.v1:
            self._freeze_kill_thaw()   # the v1 freezer freezes the whole subtree
        else:
            self._kill_each()

    def freeze(self, timeout=5.0):
        state = os.path.join(self.dir_for('freezer'), 'freezer.state')
        _write(state, 'FROZEN')
        deadline = time.monotonic() + timeout
        while _read(state) != 'FROZEN':
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def thaw(self):
        _write(os.path.join(self.dir_for('freezer'), 'freezer.state'), 'THAWED')
        return True

    def _thaw_subtree(self):
        if 'freezer' not in self.layout.v1:
            return
        for path in reversed(_subtree(self.dir_for('freezer'))):   # top first
            try:
                _write(os.path.join(path, 'freezer.state'), 'THAWED')
            except (FileNotFoundError, ProcessLookupError):
                continue

    def frozen(self):
        if 'freezer' not in self.layout.v1:
            return False
        return _read(os.path.join(self.dir_for('freezer'), 'freezer.state')) in ('FROZEN', 'FREEZING')

    def memory_usage(self):
        if 'memory' not in self.layout.v1:
            return None
        value = _read(os.path.join(self.dir_for('memory'), 'memory.usage_in_bytes'))
        return int(value) if value else None

    def cpu_usage_ns(self):
        if 'cpuacct' not in self.layout.v1:
            return None
        value = _read(os.path.join(self.dir_for('cpuacct'), 'cpuacct.usage'))
        return int(value) if value else None

    def read(self, key):
        return _read(os.path.join(self.dir_for(key.split('.')[0]), key))

    def file(self, key: str) -> str:
        """The path of a controller file of this group (e.g. 'memory.max', 'pids.max')."""
        return os.path.join(self.dir_for(key.split('.')[0]), key)

    def unified_dir(self):
        """The group's directory in the cgroup2 hierarchy (hybrid hosts), or None."""
        return self.paths().get('unified')

    def write(self, key, value):
        _write(os.path.join(self.dir_for(key.split('.')[0]), key), value)


class CgroupV2(_Base):
    """cgroup v2: one directory in the unified hierarchy; controllers enabled down from the root."""

    WANTED = ('cpu', 'cpuset', 'io', 'memory', 'pids')

    @property
    def path(self):
        return os.path.join(self.layout.unified, self.rel)

    def paths(self):
        return {'unified': self.path}

    def exists(self):
        return os.path.isdir(self.path)

    def create(self):
        current = self.layout.unified
        for part in self.rel.split('/'):
            available = (_read(os.path.join(current, 'cgroup.controllers'), '') or '').split()
            enabled = (_read(os.path.join(current, 'cgroup.subtree_control'), '') or '').split()
            missing = [c for c in self.WANTED if c in available and c not in enabled]
            if missing:
                _write(os.path.join(current, 'cgroup.subtree_control'), ' '.join('+' + c for c in missing))
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass

    def join(self, pid):
        _write(os.path.join(self.path, 'cgroup.procs'), pid)

    def _kill_once(self):
        kill = os.path.join(self.path, 'cgroup.kill')
        if os.path.exists(kill):
            _write(kill, 1)
        else:
            self._freeze_kill_thaw()   # cgroup.freeze freezes the whole subtree

    def freeze(self, timeout=5.0):
        _write(os.path.join(self.path, 'cgroup.freeze'), 1)
        deadline = time.monotonic() + timeout
        while 'frozen 1' not in (_read(os.path.join(self.path, 'cgroup.events'), '') or ''):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def thaw(self):
        _write(os.path.join(self.path, 'cgroup.freeze'), 0)
        return True

    def frozen(self):
        return _read(os.path.join(self.path, 'cgroup.freeze')) == '1'

    def memory_usage(self):
        value = _read(os.path.join(self.path, 'memory.current'))
        return int(value) if value else None

    def cpu_usage_ns(self):
        raw = _read(os.path.join(self.path, 'cpu.stat'))
        if not raw:
            return None
        for line in raw.splitlines():
            key, dummy, value = line.partition(' ')
            if key == 'usage_usec':
                return int(value) * 1000
        return None

    def read(self, key):
        return _read(os.path.join(self.path, key))

    def file(self, key: str) -> str:
        return os.path.join(self.path, key)

    def unified_dir(self):
        return self.path

    def write(self, key, value):
        _write(os.path.join(self.path, key), value)


# --- where the guests' cgroups live: delegation when systemd is PID 1 --------------------------------------
#
# systemd owns the cgroup tree it runs on and may move or prune cgroups it did not create. A manager that
# creates its own cgroups must do so inside a unit with Delegate=yes; systemd then leaves that subtree alone
# (and marks it with the trusted.delegate xattr, systemd >= 251). Slices cannot be delegated, so the guests
# live under a service, vservers.service. It must stay active with a process: systemd releases (prunes) the
# cgroup of a service whose processes are all gone, even one that "remains after exit" (seen on systemd 252:
# ControlGroup= empty, no xattr), and a cgroup it released is a stranger's. Its one idle process moves itself to
# a leaf (hold/) on a pure cgroup v2 host, because a cgroup with processes of its own cannot hand controllers
# to its children (the "no internal processes" rule); the guests' cgroups go beside it (PARENT/NAME).
# Stopping the unit kills every guest: RefuseManualStop keeps that to shutdown, after the vserver@ units.

DELEGATE_UNIT = 'vservers.service'
DELEGATE_SLICE = 'system.slice'
# (systemd expands $ in ExecStart: every $ of the shell is written $$)
DELEGATE_UNIT_TEXT = """[Unit]
Description=Linux-VServer style guests (vserver.core): delegated cgroup subtree
RefuseManualStop=yes

[Service]
Type=exec
Delegate=yes
ExecStart=/bin/sh -c 'if [ -f /sys/fs/cgroup/cgroup.controllers ]; then \\
  d=/sys/fs/cgroup$$(sed -n "s/^0:://p" /proc/self/cgroup)/hold; \\
  mkdir -p "$$d" && echo $$$$ > "$$d/cgroup.procs" || exit 1; fi; exec sleep infinity'

[Install]
WantedBy=multi-user.target
"""


def systemd_is_pid1(proc='/proc'):
    """True when PID 1 is systemd (its comm, or the executable it runs)."""
    comm = _read(os.path.join(proc, '1', 'comm'), '') or ''
    if comm == 'systemd':
        return True
    try:
        return os.path.basename(os.readlink(os.path.join(proc, '1', 'exe'))) == 'systemd'
    except OSError:
        return False


def is_delegated(path):
    """A cgroup directory systemd delegated (trusted.delegate or user.delegate xattr set to 1)."""
    for attr in ('trusted.delegate', 'user.delegate'):
        try:
            if os.getxattr(path, attr).strip(b'\0 \n') == b'1':
                return True
        except OSError:
            continue
    return False


def _in_unit(parent):
    return any(part.endswith(('.service', '.scope')) for part in parent.split('/'))


def guest_parent(parent: str, layout: Layout | None, proc: str = '/proc') -> str:
    """The cgroup path (relative to each hierarchy root) the guests' cgroups go under.

    Without systemd as PID 1 this is ``parent`` itself. Under systemd it is ``parent`` inside the delegated
    unit (``system.slice/vservers.service/PARENT``), unless ``parent`` already names a path inside a
    .service or .scope unit (an administrator's own delegated unit), which is kept as is.
    """
    if not systemd_is_pid1(proc) or _in_unit(parent):
        return parent
    return '/'.join((DELEGATE_SLICE, DELEGATE_UNIT, parent))


def delegation_status(layout, proc='/proc'):
    """For reports and checks: is systemd PID 1, and is the delegated unit's cgroup in place and delegated."""
    if not systemd_is_pid1(proc):
        return {'systemd': False, 'delegated': None, 'path': None}
    root = layout.unified if layout.version == 2 else layout.v1.get('memory') or layout.unified
    path = os.path.join(root, DELEGATE_SLICE, DELEGATE_UNIT) if root else None
    return {'systemd': True, 'path': path,
            'delegated': bool(path and os.path.isdir(path) and (layout.version == 1 or is_delegated(path)))}


def _delegates(text):
    return bool(text) and any(line.strip().replace(' ', '') == 'Delegate=yes' for line in text.splitlines())


def ensure_delegation(layout: Layout, proc: str = '/proc', unit_dir: str = '/etc/systemd/system',
                      run: Callable[[list[str]], Any] | None = None) -> list[str]:
    """Under systemd: install and start the delegated unit the guests' cgroups live in. Returns actions."""
    if not systemd_is_pid1(proc):
        return []
    run = run or _kernel.run
    actions = []
    unit = os.path.join(unit_dir, DELEGATE_UNIT)
    # the host role installs its own copy (with a managed-file header): any unit that delegates is kept as is
    if not _delegates(_read(unit)):
        os.makedirs(unit_dir, exist_ok=True)
        _common.atomic_write(unit, DELEGATE_UNIT_TEXT, 0o644)
        run(['systemctl', 'daemon-reload'])
        actions.append('install %s' % unit)
    if not delegation_status(layout, proc)['delegated']:
        run(['systemctl', 'enable', '--now', DELEGATE_UNIT])
        actions.append('start %s' % DELEGATE_UNIT)
    return actions


# --- which guest a process is in (its /proc/PID/cgroup) -------------------------------------------------

def parse_proc_cgroup(raw: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {hierarchy key: path}; key is the controller list ('' for cgroup2)."""
    out = {}
    for line in raw.splitlines():
        parts = line.split(':', 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def guest_of(cgroups: dict[str, str], parent: str) -> str | None:
    """Guest name from a process's cgroup paths, or None for host processes."""
    prefix = '/' + parent.strip('/') + '/'
    for path in cgroups.values():
        if path.startswith(prefix):
            return path[len(prefix):].split('/')[0]
    return None
