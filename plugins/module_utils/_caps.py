# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the capabilities concern (floor 3, see docs/architecture.md). Capability names <->
bits, the default guest bounding set, ccaps policy, the section's options (ARGUMENT_SPEC, DEFAULTS), its validation
and the guest's start-time steps. The planner of a change is _caps_plan; what needs a running guest is done by the
manager, _mgr_capabilities. This file is on the path of every `vserver exec` (the runtime drops capabilities with
it): it imports nothing it does not need there (no dataclasses, no typing)."""

from __future__ import annotations

import copy
import os

from ansible_collections.vserver.core.plugins.module_utils import _seccomp
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError, atomic_write

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from typing import Any, Iterable

    from ansible_collections.vserver.core.plugins.module_utils._cgroup import CgroupV1, CgroupV2

CAPS = [
    'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid', 'setpcap',
    'linux_immutable', 'net_bind_service', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner',
    'sys_module', 'sys_rawio', 'sys_chroot', 'sys_ptrace', 'sys_pacct', 'sys_admin', 'sys_boot', 'sys_nice',
    'sys_resource', 'sys_time', 'sys_tty_config', 'mknod', 'lease', 'audit_write', 'audit_control', 'setfcap',
    'mac_override', 'mac_admin', 'syslog', 'wake_alarm', 'block_suspend', 'audit_read', 'perfmon', 'bpf',
    'checkpoint_restore',
]
CAP_BITS = {name: bit for bit, name in enumerate(CAPS)}

# The section's options: the capabilities module's argument spec (plus name and restart) and the keys of a config's
# ``capabilities`` section. One source: the module, the config check and the guests module derive from these.
_NAMES = {'type': 'list', 'elements': 'str'}
ARGUMENT_SPEC = {
    'bcaps': dict(_NAMES),
    'bcaps_add': dict(_NAMES),
    'bcaps_drop': dict(_NAMES),
    'ccaps': dict(_NAMES),
    'no_new_privs': {'type': 'bool'},
    'seccomp': {'type': 'dict', 'options': {
        'mode': {'type': 'str', 'choices': ['default', 'log', 'unconfined'], 'default': 'default'},
        'allow': dict(_NAMES),
        'deny': dict(_NAMES),
    }},
}
MUTUALLY_EXCLUSIVE = [('bcaps', 'bcaps_add'), ('bcaps', 'bcaps_drop')]
SECTION_KEYS = tuple(ARGUMENT_SPEC)
# A task's options: None keeps the stored value (``merge``). A whole section (the guests module, ``replace``): an
# option left out has these values, the default of each.
DEFAULTS = {'bcaps': None, 'bcaps_add': None, 'bcaps_drop': None, 'ccaps': None, 'no_new_privs': False,
            'seccomp': None}

# The default guest bounding set. util-vserver starts a guest with every capability except its "insecure" set
# (lib/getinsecurebcaps.c, vc_get_insecurebcaps()): linux_immutable, net_broadcast, net_admin, net_raw, ipc_lock,
# ipc_owner, sys_module, sys_rawio, sys_pacct, sys_admin, sys_nice, sys_resource, sys_time, mknod and its own
# quotactl (no mainline bit: quotactl needs sys_admin here), plus sys_boot where the kernel has no vshelper.
# Here sys_boot is kept (VServer's vshelper behaviour): in a PID namespace reboot(2) only ends the guest's init,
# with SIGHUP (restart) or SIGINT (halt), and vserver-supervise restarts or stops the guest (docs/guest-view.md).
# kexec_load/kexec_file_load check CAP_SYS_BOOT against the host: the default filter denies them always, and a
# guest whose filter would let them through (seccomp mode log or unconfined, or kexec in seccomp.allow) loses
# sys_boot from the default set; asking for it there is refused (``validate``). On top of that set, what the VServer kernel confined by itself and a
# mainline kernel does not, or what mainline added since (see docs/security.md):
#   dac_read_search: open_by_handle_at() reaches files outside the guest root on the same filesystem;
#   mac_admin, mac_override, audit_control: host-wide LSM/audit policy; syslog: reads/clears the host kernel log;
#   sys_tty_config: vhangup and console ioctls; lease: a lease on a file unified (hardlinked) across guests
#   would let one guest stall another's open(); bpf, perfmon: kernel-wide tracing and programs;
#   checkpoint_restore, block_suspend, wake_alarm, audit_read: host-wide facilities; net_raw: use ccap raw_icmp;
#   sys_ptrace: it bypasses the dumpable flag and the capability-subset check of ptrace, /proc/PID/{mem,exe,fd},
#   pidfd_getfd and process_vm_*: a guest root keeping it acts on any process that appears in its PID namespace,
#   however privileged (the admin's `vserver exec` was one). Without it, root still traces its own dumpable
#   processes (gdb, strace of the guest's programs keep working).
# Kept: chown, dac_override, fowner, fsetid, kill, setgid, setuid, setpcap, net_bind_service, sys_chroot,
# sys_boot, audit_write, setfcap.
UTIL_VSERVER_INSECURE = [
    'linux_immutable', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner', 'sys_module',
    'sys_rawio', 'sys_pacct', 'sys_admin', 'sys_nice', 'sys_resource', 'sys_time', 'mknod', 'sys_boot',
]
DEFAULT_DROPPED = [
    'dac_read_search', 'linux_immutable', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner',
    'sys_module', 'sys_rawio', 'sys_ptrace', 'sys_pacct', 'sys_admin', 'sys_nice', 'sys_resource',
    'sys_time', 'sys_tty_config', 'mknod', 'lease', 'audit_control', 'mac_override', 'mac_admin', 'syslog',
    'wake_alarm', 'block_suspend', 'audit_read', 'perfmon', 'bpf', 'checkpoint_restore',
]
DEFAULT_BCAPS = [c for c in CAPS if c not in DEFAULT_DROPPED]

# VServer context capabilities with a mainline equivalent, and what they map to.
CCAPS = {
    'raw_icmp': 'net.ipv4.ping_group_range and net.ipv6 ping sockets opened to all groups in the guest netns',
}
CCAP_ALIASES = {'ping': 'raw_icmp'}


def normalize(name, field='bcaps'):
    if not isinstance(name, str):
        raise VServerError('%s: capability names are strings (got %r)' % (field, name), field)
    key = name.strip().lower()
    if key.startswith('cap_'):
        key = key[4:]
    if key not in CAP_BITS:
        raise VServerError('%s: unknown capability %r; use Linux names such as CAP_CHOWN or chown (known: %s)'
                           % (field, name, ', '.join(CAPS)), field)
    return key


def normalize_list(names, field='bcaps'):
    out = []
    for name in names or []:
        key = normalize(name, field)
        if key not in out:
            out.append(key)
    return sorted(out, key=CAP_BITS.get)


def normalize_ccaps(names, field='ccaps'):
    out = []
    for name in names or []:
        key = str(name).strip().lower()
        key = CCAP_ALIASES.get(key, key)
        if key not in CCAPS:
            raise VServerError('%s: %r has no mainline equivalent; supported: %s (alias: %s)'
                               % (field, name, ', '.join(sorted(CCAPS)),
                                  ', '.join('%s=%s' % kv for kv in CCAP_ALIASES.items())), field)
        if key not in out:
            out.append(key)
    return sorted(out)


def mask(names: Iterable[str]) -> int:
    value = 0
    for name in names:
        value |= 1 << CAP_BITS[name]
    return value


def names_from_mask(value):
    return [name for name, bit in CAP_BITS.items() if value & (1 << bit)]


def resolve(section: dict | None) -> list[str]:
    """The bounding set (names) a guest gets from its ``capabilities`` config section."""
    section = section or {}
    if section.get('bcaps') is not None:
        return normalize_list(section['bcaps'])
    caps = set(DEFAULT_BCAPS)
    if kexec_open(section):
        caps.discard('sys_boot')
    caps |= set(normalize_list(section.get('bcaps_add'), 'bcaps_add'))
    caps -= set(normalize_list(section.get('bcaps_drop'), 'bcaps_drop'))
    return normalize_list(caps)


KEXEC = ('kexec_load', 'kexec_file_load')


def kexec_open(section: dict | None) -> bool:
    """Would the guest's filter let kexec_load/kexec_file_load through (mode log or unconfined, or allowed)?"""
    seccomp = (section or {}).get('seccomp') or {}
    if not isinstance(seccomp, dict):
        return False  # refused by the filter's own check
    return (seccomp.get('mode') or 'default') != 'default' or bool(set(seccomp.get('allow') or []) & set(KEXEC))


def _check_sys_boot(section):
    """sys_boot asked for explicitly together with a filter that lets kexec through: refused."""
    field = 'bcaps' if section.get('bcaps') is not None else 'bcaps_add'
    if 'sys_boot' in (section.get(field) or []) and kexec_open(section):
        raise VServerError('%s: sys_boot (reboot and halt from inside) needs the syscall filter to deny kexec_load and '
                           'kexec_file_load, which check CAP_SYS_BOOT against the host; with seccomp mode %s%s it '
                           'would let a guest load a new host kernel. Drop sys_boot, or keep seccomp mode default '
                           'without allowing kexec' % (field, (section.get('seccomp') or {}).get('mode') or 'default',
                                                       ' and kexec allowed' if set(
                                                           (section.get('seccomp') or {}).get('allow') or [])
                                                       & set(KEXEC) else ''), field)


# --- the guest's syscall filter (key ``seccomp`` of this section; the program is built by _seccomp) ----------

SECCOMP_RECORD = 'seccomp'   # in the guest's runtime dir: the fingerprint of the filter its init runs


def seccomp_program(doc: dict) -> bytes | None:
    """The filter program a guest's processes get (None: unconfined). Its config is checked again here: a
    hand-edited config with an unknown name fails the start, before any process is forked."""
    section = doc.get('capabilities') or {}
    _seccomp.validate(section.get('seccomp'), 'capabilities.seccomp')
    return _seccomp.for_guest(doc, resolve(section))


def on_cgroup(doc: dict, group: CgroupV1 | CgroupV2) -> None:  # pylint: disable=unused-argument
    """Start, host side, before any fork: build (and so check) the filter; the forked init reuses it."""
    seccomp_program(doc)


def on_started(paths: Paths, doc: dict, runtime: Any) -> None:  # pylint: disable=unused-argument
    """Record which filter the guest's init runs, so a changed filter reports restart_required."""
    atomic_write(os.path.join(runtime.dir, SECCOMP_RECORD), _seccomp.digest(seccomp_program(doc)) + '\n',
                 0o600, durable=False)


def seccomp_running(runtime_dir: str, status: dict[str, str]) -> str:
    """The fingerprint of the filter a running guest was started with; 'unconfined' when its init has none
    (Seccomp 0 in /proc/PID/status: e.g. a guest started before the filter existed)."""
    if status.get('Seccomp', '0').strip() == '0':
        return 'unconfined'
    try:
        with open(os.path.join(runtime_dir, SECCOMP_RECORD)) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return 'unknown'


# --- ccaps in the guest's network namespace, and the capabilities manager ---------------------------------

PING_GROUP_RANGE = 'net/ipv4/ping_group_range'   # also governs ICMPv6 datagram sockets
PING_ALL = '0\t2147483647'
PING_NONE = '1\t0'                               # the kernel's default in a new netns: nobody


def ccap_sysctls(section: dict | None) -> dict[str, str]:
    """Per-netns sysctls a capabilities section asks for: {path under /proc/sys: value}."""
    ccaps = normalize_ccaps((section or {}).get('ccaps'))
    return {PING_GROUP_RANGE: PING_ALL if 'raw_icmp' in ccaps else PING_NONE}


def norm_sysctl(value: object) -> str:
    return '\t'.join(str(value).split())


def write_sysctls(values: dict[str, str], proc: str = '/proc') -> None:
    for key, value in values.items():
        with open(os.path.join(proc, 'sys', key), 'w') as handle:
            handle.write(value.replace('\t', ' '))


def read_sysctls(keys: Iterable[str], proc: str = '/proc') -> dict[str, str]:
    out = {}
    for key in keys:
        with open(os.path.join(proc, 'sys', key)) as handle:
            out[key] = norm_sysctl(handle.read())
    return out


def on_netns(doc: dict) -> None:
    """In the guest's new network namespace, before init is forked: ccaps sysctls."""
    section = doc.get('capabilities') or {}
    if section.get('ccaps'):
        write_sysctls(ccap_sysctls(section))


def _is_default(bcaps):
    """``bcaps: default`` (a list option reads the word as [default]): back to the default bounding set."""
    if isinstance(bcaps, list) and len(bcaps) == 1:
        bcaps = bcaps[0]
    return isinstance(bcaps, str) and bcaps.strip().lower() == 'default'


def merge(stored: dict | None, params: dict | None) -> dict:
    """Raw options for ``validate``: the stored section with the options a task gives (not None) put over it.

    bcaps and bcaps_add/bcaps_drop are two forms of the bounding set: giving one form replaces the other.
    Removal: ``bcaps: default``, ``bcaps_add: []``, ``bcaps_drop: []``, ``ccaps: []``, ``no_new_privs: false``,
    ``seccomp: {mode: default}``."""
    out = copy.deepcopy(dict(stored or {}))
    params = params or {}
    if params.get('bcaps') is not None:
        out.pop('bcaps_add', None)
        out.pop('bcaps_drop', None)
    elif params.get('bcaps_add') is not None or params.get('bcaps_drop') is not None:
        out.pop('bcaps', None)
    for key in ('bcaps', 'bcaps_add', 'bcaps_drop', 'ccaps', 'no_new_privs', 'seccomp'):
        if params.get(key) is not None:
            out[key] = params[key]
    return out


def validate(params: dict | None) -> dict:
    """Module/role input -> the canonical ``capabilities`` section; unknown names fail before any write."""
    params = dict(params or {})
    if _is_default(params.get('bcaps')):
        params['bcaps'] = None
    section = {}
    if params.get('bcaps') is not None:
        if params.get('bcaps_add') or params.get('bcaps_drop'):
            raise VServerError('bcaps replaces the default bounding set; bcaps_add/bcaps_drop adjust the default. '
                               'Give one form, not both', 'bcaps')
        if isinstance(params['bcaps'], str):
            raise VServerError('bcaps: expected a list of capability names (e.g. [CAP_CHOWN, kill])', 'bcaps')
        section['bcaps'] = normalize_list(params['bcaps'], 'bcaps')
    else:
        for key in ('bcaps_add', 'bcaps_drop'):
            if isinstance(params.get(key), str):
                raise VServerError('%s: expected a list of capability names' % key, key)
            names = normalize_list(params.get(key), key)
            if names:
                section[key] = names
        both = set(section.get('bcaps_add', [])) & set(section.get('bcaps_drop', []))
        if both:
            raise VServerError('bcaps_add and bcaps_drop both name %s' % ', '.join(sorted(both)), 'bcaps_drop')
    if isinstance(params.get('ccaps'), str):
        raise VServerError('ccaps: expected a list (supported: %s)' % ', '.join(sorted(CCAPS)), 'ccaps')
    ccaps = normalize_ccaps(params.get('ccaps'))
    if ccaps:
        section['ccaps'] = ccaps
    if params.get('no_new_privs'):
        section['no_new_privs'] = True
    seccomp = _seccomp.validate(params.get('seccomp'), 'seccomp')
    if seccomp:
        section['seccomp'] = seccomp
    _check_sys_boot(section)
    return section


def observed(status: dict[str, str], last_cap: int) -> dict:
    """A running init's bounding set (names) and no_new_privs flag from its /proc status."""
    bound = int(status.get('CapBnd', '0'), 16)
    return {'bcaps': [n for n in names_from_mask(bound) if CAP_BITS[n] <= last_cap],
            'no_new_privs': status.get('NoNewPrivs', '0').strip() == '1'}
