# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: capability names <-> bits, the default guest bounding set, ccaps policy."""

from __future__ import annotations

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

CAPS = [
    'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid', 'setpcap',
    'linux_immutable', 'net_bind_service', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner',
    'sys_module', 'sys_rawio', 'sys_chroot', 'sys_ptrace', 'sys_pacct', 'sys_admin', 'sys_boot', 'sys_nice',
    'sys_resource', 'sys_time', 'sys_tty_config', 'mknod', 'lease', 'audit_write', 'audit_control', 'setfcap',
    'mac_override', 'mac_admin', 'syslog', 'wake_alarm', 'block_suspend', 'audit_read', 'perfmon', 'bpf',
    'checkpoint_restore',
]
CAP_BITS = {name: bit for bit, name in enumerate(CAPS)}

# util-vserver's "insecure" bcaps (never granted to a guest by default), plus what mainline added since and
# what a mainline kernel without the VServer patch does not confine (see docs/security.md):
#   dac_read_search: open_by_handle_at() reaches files outside the guest root on the same filesystem;
#   syslog: reads/clears the host kernel log; bpf, perfmon: kernel-wide tracing and programs;
#   checkpoint_restore, block_suspend, wake_alarm, audit_read: host-wide facilities; net_raw: use ccap raw_icmp.
DEFAULT_DROPPED = [
    'dac_read_search', 'linux_immutable', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner',
    'sys_module', 'sys_rawio', 'sys_pacct', 'sys_admin', 'sys_boot', 'sys_nice', 'sys_resource', 'sys_time',
    'sys_tty_config', 'mknod', 'lease', 'audit_control', 'mac_override', 'mac_admin', 'syslog', 'wake_alarm',
    'block_suspend', 'audit_read', 'perfmon', 'bpf', 'checkpoint_restore',
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


def mask(names):
    value = 0
    for name in names:
        value |= 1 << CAP_BITS[name]
    return value


def names_from_mask(value):
    return [name for name, bit in CAP_BITS.items() if value & (1 << bit)]


def resolve(section):
    """The bounding set (names) a guest gets from its ``capabilities`` config section."""
    section = section or {}
    if section.get('bcaps') is not None:
        return normalize_list(section['bcaps'])
    caps = set(DEFAULT_BCAPS)
    caps |= set(normalize_list(section.get('bcaps_add'), 'bcaps_add'))
    caps -= set(normalize_list(section.get('bcaps_drop'), 'bcaps_drop'))
    return normalize_list(caps)
