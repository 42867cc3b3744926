# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the guest's default system call filter (a classic BPF seccomp program).

Every guest process gets it as the last step before exec (``_runtime_child.drop_privileges``): a deny-list at least as
strict as Docker's default profile for a container with the guest's capabilities, covering every ABI the kernel
accepts on this machine: x86_64 (x32 numbers, bit 0x40000000, are denied as a whole range), i386 through
``int 0x80`` (its own numbers), aarch64. Any other ABI value gets the deny action for every call.

Denied calls fail with EPERM; ``clone3`` with ENOSYS, because its flags sit in memory a filter cannot read and
libc falls back to ``clone`` on ENOSYS, whose flags the filter checks. ``log`` mode allows what would be denied and
logs it (SECCOMP_RET_LOG, audit type 1326 in the kernel log); ``unconfined`` loads no filter.

The config lives in the guest's ``capabilities`` section, key ``seccomp`` (see docs/security.md):
``{mode: default|log|unconfined, allow: [names], deny: [names]}``; names are checked against this machine's table.
"""

from __future__ import annotations

import os
import struct

from ansible_collections.vserver.core.plugins.module_utils import _syscalls
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from typing import Any

MODES = ('default', 'log', 'unconfined')

# Denied whatever the guest's capabilities (its confinement rests on them: see docs/security.md).
ALWAYS_DENIED = (
    # kernel keyrings: in this mode they are host root's keyrings
    'keyctl', 'add_key', 'request_key',
    # namespaces (clone and unshare only with namespace flags, checked below)
    'setns',
    # the mount API: a guest's mounts are made by the runtime before the filter is loaded
    'mount', 'umount', 'umount2', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'move_mount', 'open_tree',
    'open_tree_attr', 'mount_setattr', 'pivot_root',
    # kernel-wide facilities and attack surface
    'bpf', 'perf_event_open', 'userfaultfd', 'kexec_load', 'kexec_file_load', 'swapon', 'swapoff',
    'io_uring_setup', 'io_uring_enter', 'io_uring_register',
    # obsolete or host-wide
    'uselib', 'ustat', 'sysfs', '_sysctl', 'nfsservctl', 'create_module', 'get_kernel_syms', 'query_module',
    'vm86', 'vm86old',
)
# Denied unless the guest's bounding set holds the capability (Docker's default profile does the same).
CAP_GATED = {
    'sys_admin': ('lookup_dcookie', 'quotactl', 'quotactl_fd', 'fanotify_init'),
    'sys_boot': ('reboot',),
    'sys_module': ('init_module', 'finit_module', 'delete_module'),
    'sys_pacct': ('acct',),
    'sys_rawio': ('iopl', 'ioperm'),
    'sys_time': ('settimeofday', 'stime', 'clock_settime', 'clock_settime64', 'clock_adjtime',
                 'clock_adjtime64'),
    'sys_nice': ('mbind', 'set_mempolicy', 'get_mempolicy', 'move_pages', 'set_mempolicy_home_node'),
    'dac_read_search': ('open_by_handle_at', 'name_to_handle_at'),
    'sys_tty_config': ('vhangup',),
    'syslog': ('syslog',),
}
# Checked by argument: clone and unshare fail with a namespace flag; personality only with harmless values.
NS_FLAGS = 0x7E020080   # CLONE_NEWTIME|NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xffffffff)  # PER_LINUX, UNAME26, PER_LINUX32(+UNAME26), query
ARG_CHECKED = ('clone', 'unshare', 'personality')

AUDIT_ARCH = {'x86_64': 0xC000003E, 'i386': 0x40000003, 'aarch64': 0xC00000B7}
ABIS = {'x86_64': ('x86_64', 'i386'), 'aarch64': ('aarch64',)}
X32_SYSCALL_BIT = 0x40000000

RET_ALLOW = 0x7fff0000
RET_LOG = 0x7ffc0000
RET_ERRNO = 0x00050000
EPERM = 1
ENOSYS = 38

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_JA = 0x05
_RET = 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16   # struct seccomp_data; arg0's low word (little-endian)


def machine():
    """The running architecture's name as the tables know it, or None where no table exists."""
    name = os.uname().machine
    return name if name in ABIS else None


_TABLES = {}


def _table(abi):
    """{name: number} of one ABI, parsed once per process."""
    if abi not in _TABLES:
        _TABLES[abi] = _syscalls.table(abi)
    return _TABLES[abi]


def _names(value, field):
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise VServerError('%s: expected a list of system call names (e.g. [keyctl])' % field, field)
    out = []
    for name in value:
        key = str(name).strip().lower()
        if key not in out:
            out.append(key)
    return sorted(out)


def validate(value: Any, field: str = 'seccomp', arch: str | None = None) -> dict | None:
    """Module/role input -> the canonical ``seccomp`` config (None for the default filter).

    Names are checked against the running architecture's table: an unknown one fails before anything changes."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise VServerError('%s: expected a mapping with mode (%s), allow and deny (lists of system call names)'
                           % (field, '/'.join(MODES)), field)
    unknown_keys = sorted(set(value) - {'mode', 'allow', 'deny'})
    if unknown_keys:
        raise VServerError('%s: unknown key(s) %s; accepted: mode, allow, deny' % (field, ', '.join(unknown_keys)),
                           field)
    mode = value.get('mode') or 'default'
    if mode not in MODES:
        raise VServerError('%s.mode: %r is not one of %s' % (field, mode, ', '.join(MODES)), field + '.mode')
    out = {}
    if mode != 'default':
        out['mode'] = mode
    arch = arch or machine()
    for key in ('allow', 'deny'):
        names = _names(value.get(key), '%s.%s' % (field, key))
        if names and arch is None:
            raise VServerError('%s.%s: this machine (%s) has no system call table; the filter covers x86_64 and '
                               'aarch64' % (field, key, os.uname().machine), '%s.%s' % (field, key))
        bad = [name for name in names if name not in _table(arch)]
        if bad:
            raise VServerError('%s.%s: unknown system call(s) %s for %s (names as in the kernel\'s syscall table, '
                               'e.g. keyctl, io_uring_setup)' % (field, key, ', '.join(bad), arch),
                               '%s.%s' % (field, key))
        if names:
            out[key] = names
    both = set(out.get('allow', [])) & set(out.get('deny', []))
    if both:
        raise VServerError('%s: allow and deny both name %s' % (field, ', '.join(sorted(both))), field + '.allow')
    return out or None


def denied(config, bcaps):
    """The names this filter denies outright (EPERM), before the argument checks and clone3."""
    config = config or {}
    names = set(ALWAYS_DENIED)
    for cap, calls in CAP_GATED.items():
        if cap not in bcaps:
            names.update(calls)
    names |= set(config.get('deny') or [])
    names -= set(config.get('allow') or [])
    return names


class _Asm:
    """A tiny classic-BPF assembler with labels (jt/jf are 8-bit offsets, ja takes 32 bits)."""

    def __init__(self):
        self.code = []
        self.labels = {}

    def label(self, name):
        self.labels[name] = len(self.code)

    def op(self, code, k=0, jt=0, jf=0):
        self.code.append((code, jt, jf, k))

    def assemble(self):
        out = []
        for pos, (code, jt, jf, k) in enumerate(self.code):
            if isinstance(k, str):
                k = self.labels[k] - pos - 1
            offsets = []
            for target in (jt, jf):
                offset = self.labels[target] - pos - 1 if isinstance(target, str) else target
                if not 0 <= offset <= 255:
                    raise VServerError('seccomp: filter jump out of range (%d)' % offset)
                offsets.append(offset)
            out.append(struct.pack('=HBBI', code, offsets[0], offsets[1], k & 0xffffffff))
        if len(out) > 4096:
            raise VServerError('seccomp: filter too long (%d instructions, at most 4096)' % len(out), 'seccomp.deny')
        return b''.join(out)


def _abi_block(asm, abi, config, bcaps, deny, enosys):
    table = _table(abi)
    allow = set((config or {}).get('allow') or [])
    extra = set((config or {}).get('deny') or [])
    asm.label(abi)
    asm.op(_LD_W_ABS, _OFF_NR)
    if abi == 'x86_64':  # x32: the whole range (kernels without x32 answer ENOSYS anyway)
        asm.op(_JGE, X32_SYSCALL_BIT, 0, 1)
        asm.op(_RET, deny)
    for nr in sorted(table[name] for name in denied(config, bcaps) if name in table):
        asm.op(_JEQ, nr, 0, 1)
        asm.op(_RET, deny)
    if 'clone3' in table and 'clone3' not in allow and 'clone3' not in extra:
        asm.op(_JEQ, table['clone3'], 0, 1)
        asm.op(_RET, enosys)
    for name, check in (('clone', 'ns_flags'), ('unshare', 'ns_flags'), ('personality', 'personality')):
        if name in table and name not in allow and name not in extra:
            asm.op(_JEQ, table[name], 0, 1)
            asm.op(_JA, check)
    asm.op(_RET, RET_ALLOW)


def program(config, bcaps, arch=None):
    """The filter (packed ``struct sock_filter`` array) for a guest's seccomp config and bounding set (names);
    None when the guest is unconfined. Raises VServerError where this machine has no table."""
    config = config or {}
    mode = config.get('mode') or 'default'
    if mode == 'unconfined':
        return None
    arch = arch or machine()
    if arch is None:
        raise VServerError('seccomp: no system call table for %s (x86_64 and aarch64 are covered); set the guest\'s '
                           'seccomp mode to unconfined to run it without a filter' % os.uname().machine,
                           'seccomp.mode')
    deny = RET_LOG if mode == 'log' else RET_ERRNO | EPERM
    enosys = RET_LOG if mode == 'log' else RET_ERRNO | ENOSYS
    asm = _Asm()
    asm.op(_LD_W_ABS, _OFF_ARCH)
    for abi in ABIS[arch]:
        asm.op(_JEQ, AUDIT_ARCH[abi], 0, 1)
        asm.op(_JA, abi)
    asm.op(_RET, deny)   # any other ABI value
    for abi in ABIS[arch]:
        _abi_block(asm, abi, config, bcaps, deny, enosys)
    asm.label('ns_flags')
    asm.op(_LD_W_ABS, _OFF_ARG0)
    asm.op(_JSET, NS_FLAGS, 'deny', 0)
    asm.op(_RET, RET_ALLOW)
    asm.label('personality')
    asm.op(_LD_W_ABS, _OFF_ARG0)
    for value in PERSONALITY_OK:
        asm.op(_JEQ, value, 'allow', 0)
    asm.label('deny')
    asm.op(_RET, deny)
    asm.label('allow')
    asm.op(_RET, RET_ALLOW)
    return asm.assemble()


_BUILT = {}


def for_guest(doc: dict, bcaps: list[str]) -> bytes | None:
    """The program for a guest's config document (cached per config: start builds it host-side, its forked init
    reuses it). ``bcaps``: the guest's bounding set, names."""
    config = ((doc.get('capabilities') or {}).get('seccomp')) or {}
    key = (repr(sorted(config.items())), tuple(sorted(bcaps)))
    if key not in _BUILT:
        _BUILT[key] = program(config, bcaps)
    return _BUILT[key]


def digest(prog: bytes | None) -> str:
    """A short fingerprint of a program ('unconfined' for none), recorded at start to tell a changed filter."""
    import hashlib  # here: ~4 ms to import, and only a start records a digest
    return 'unconfined' if prog is None else hashlib.sha256(prog).hexdigest()[:16]
