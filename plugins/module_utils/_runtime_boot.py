# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: guests that boot a distribution's init (systemd, sysvinit), docs/guests.md.

Guest side (called by _runtime_child in the guest's init, after pivot_root): what the init program is
(``guest_init_kind``), the mounts a booting init expects of its container (``setup``: /run, /run/lock, for systemd
/run/systemd/container and its delegated cgroup tree), a stable ``container_uuid``. Host side (called by
_runtime.stop): what the running init is (``init_kind``), the signal that shuts it down (``stop_signal``), and when a
sysvinit guest is down (``wait_sysvinit_down``).
"""

from __future__ import annotations

import os
import signal
import stat
import time

from ansible_collections.vserver.core.plugins.module_utils import _config, _kernel as K, _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from ansible_collections.vserver.core.plugins.module_utils._cgroup import CgroupV1, CgroupV2

# --- a booted distribution's init (systemd, sysvinit): docs/guests.md ---------------------------------------------

SYSTEMD_NAMES = ('systemd',)
SYSV_PATHS = ('/sbin/init', '/usr/sbin/init')


def guest_init_kind(program: str) -> str | None:
    """What the guest's init program is: 'systemd', 'sysvinit' (a real /sbin/init that is not systemd or busybox),
    or None (anything else: a service, a shell, busybox init; started as before). Called after pivot_root, in the
    guest's own mount namespace: every symlink of the guest resolves inside its tree, never on the host."""
    try:
        real = os.path.realpath(program)
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if os.path.basename(real) in SYSTEMD_NAMES:
        return 'systemd'
    if program in SYSV_PATHS and os.path.basename(real) == 'init':
        return 'sysvinit'
    return None


def container_uuid(doc: dict) -> str:
    """A stable id of the guest (its name and xid) that systemd takes as machine-id when /etc/machine-id is empty or
    missing (the container interface's ``container_uuid``), so a fresh tree boots with one that stays. FNV-1a
    (128 bits), in plain arithmetic: every start computes it, and importing hashlib would cost it milliseconds."""
    value = 0x6C62272E07BB014262B821756295C58D
    for byte in ('vserver.core %s %s' % (doc['name'], doc.get('xid'))).encode():
        value = ((value ^ byte) * 0x0000000001000000000000000000013B) & ((1 << 128) - 1)
    digest = bytearray(value.to_bytes(16, 'big'))
    digest[6] = (digest[6] & 0x0F) | 0x40     # a version 4 layout, as systemd's own ids
    digest[8] = (digest[8] & 0x3F) | 0x80
    hexa = digest.hex()
    return '%s-%s-%s-%s-%s' % (hexa[:8], hexa[8:12], hexa[12:16], hexa[16:20], hexa[20:])


def _mount_tmpfs(path, flags, options):
    if not os.path.isdir(path):
        if os.path.lexists(path):
            os.unlink(path)
        os.mkdir(path, 0o755)
    K.mount('tmpfs', path, 'tmpfs', flags, options)


def _delegated_cgroup():
    """The guest's own cgroup (its cgroup namespace root) as cgroup2 at /sys/fs/cgroup, for systemd to manage its
    units in. Writable only when no limit of the host sits in it: on a hybrid (v1) host the unified hierarchy
    carries no controller (the limits are in the v1 hierarchies, not mounted here); on a cgroup2 mount with
    ``nsdelegate`` the kernel refuses the guest's writes to its namespace root's limit files. Otherwise read-only."""
    target = '/sys/fs/cgroup'
    nosuid = K.MS_NOSUID | K.MS_NODEV | K.MS_NOEXEC
    K.mount('cgroup2', target, 'cgroup2', nosuid)
    with open(target + '/cgroup.controllers') as handle:
        controllers = handle.read().split()
    delegated = any(entry['mountpoint'] == target and 'nsdelegate' in entry['super'].split(',')
                    for entry in P.read_mountinfo())
    if controllers and not delegated:
        K.mount(None, target, None, K.MS_REMOUNT | K.MS_BIND | K.MS_RDONLY | nosuid)
    return not controllers or delegated


def setup(kind: str) -> None:
    """What a booting distribution expects of its container (systemd's container interface): /run and /run/lock as
    tmpfs, /run/systemd/container; for systemd also its cgroup tree. Runs after _setup_root, in the guest's root."""
    nosuid = K.MS_NOSUID | K.MS_NODEV
    _mount_tmpfs('/run', nosuid, 'mode=755,size=20%')
    _mount_tmpfs('/run/lock', nosuid | K.MS_NOEXEC, 'mode=1777,size=5120k')
    if kind != 'systemd':
        return
    os.mkdir('/run/systemd', 0o755)
    with open('/run/systemd/container', 'w') as handle:
        handle.write('vserver\n')
    _delegated_cgroup()


# --- host side: stopping a booted init ---------------------------------------------------------------------------

# A booted distribution's init stops through itself (docs/guests.md): systemd on SIGRTMIN+3 (SIGTERM makes systemd
# re-execute itself), sysvinit on SIGPWR (its inittab's powerfail entry: "p0::powerfail:/sbin/init 0", as LXC's).
BOOT_STOP_SIGNALS = {'systemd': 'SIGRTMIN+3', 'sysvinit': 'SIGPWR'}
SYSVINIT_IDLE = 1.0   # seconds sysvinit must be alone in its guest after the stop signal to count as halted


def init_kind(proc_fd: int) -> str | None:
    """'systemd', 'sysvinit' or None: what the running init (``proc_fd``) executes, read from the kernel
    (/proc/PID/exe, the path as the guest's own root shows it; nothing in the tree is followed)."""
    try:
        exe = os.readlink('exe', dir_fd=proc_fd)
    except OSError:
        return None
    base = os.path.basename(exe)
    if base == 'systemd':
        return 'systemd'
    if exe in ('/sbin/init', '/usr/sbin/init'):
        return 'sysvinit'
    return None


def stop_signal(kind: str | None, sig: int) -> int:
    """The signal that stops an init of ``kind``: the configured one, except the default SIGTERM, which neither
    systemd (it re-executes itself) nor sysvinit (it ignores it) take as a request to shut down."""
    if kind in BOOT_STOP_SIGNALS and sig == int(signal.Signals[_config.DEFAULT_STOP_SIGNAL]):
        return _config.parse_signal(BOOT_STOP_SIGNALS[kind])
    return sig


def wait_sysvinit_down(proc_fd: int, group: CgroupV1 | CgroupV2, timeout: float) -> None:
    """sysvinit runs runlevel 0 (every service stopped, then every process killed by sendsigs) and then halts with
    reboot(), which a guest without CAP_SYS_BOOT may not call: init stays, alone. Once it has been the only process
    of its guest for SYSVINIT_IDLE seconds the guest is down, and init is killed."""
    deadline = time.monotonic() + timeout
    alone_since = None
    while time.monotonic() < deadline:
        st = P.read_stat_at(proc_fd)
        if st is None or st[0] in ('Z', 'X'):
            return
        try:
            alone = len(group.procs()) <= 1
        except (OSError, VServerError):
            alone = False
        now = time.monotonic()
        alone_since = (alone_since or now) if alone else None
        if alone_since is not None and now - alone_since >= SYSVINIT_IDLE:
            try:
                signal.pidfd_send_signal(proc_fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.1)
