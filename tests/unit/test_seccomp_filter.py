"""The guest syscall filter program, run through a classic-BPF interpreter for every ABI; option validation."""
import struct

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _seccomp, _syscalls
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

ALLOW, LOG = _seccomp.RET_ALLOW, _seccomp.RET_LOG
EPERM, ENOSYS = _seccomp.RET_ERRNO | 1, _seccomp.RET_ERRNO | 38
X86_64, I386, AARCH64 = 0xC000003E, 0x40000003, 0xC00000B7


def run(program, arch, nr, arg0=0):
    """Evaluate a packed classic BPF seccomp program on one struct seccomp_data."""
    data = struct.pack('=iIQ6Q', nr, arch, 0, arg0 & 0xffffffffffffffff, 0, 0, 0, 0, 0)
    insns = [struct.unpack('=HBBI', program[i:i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    for _step in range(len(insns) + 1):
        code, jt, jf, k = insns[pc]
        if code == 0x20:                       # ld [k]
            acc = struct.unpack_from('=I', data, k)[0]
            pc += 1
        elif code == 0x06:                     # ret k
            return k
        elif code == 0x05:                     # ja k
            pc += 1 + k
        elif code in (0x15, 0x35, 0x45):       # jeq, jge, jset
            hit = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        else:
            raise AssertionError('unexpected opcode %#x' % code)
    raise AssertionError('program does not terminate')


@pytest.fixture(scope='module')
def default():
    return _seccomp.program(None, _caps.DEFAULT_BCAPS, arch='x86_64')


@pytest.mark.parametrize('abi,arch', [('x86_64', X86_64), ('i386', I386)])
def test_default_denies_on_every_x86_abi(default, abi, arch):
    table = _syscalls.table(abi)
    for name in ('keyctl', 'add_key', 'request_key', 'setns', 'mount', 'umount2', 'pivot_root', 'bpf',
                 'perf_event_open', 'userfaultfd', 'io_uring_setup', 'kexec_load', 'swapon', 'open_by_handle_at',
                 'init_module', 'finit_module', 'acct', 'fsopen', 'move_mount', 'open_tree', 'mount_setattr',
                 'open_tree_attr'):
        if name in table:
            assert run(default, arch, table[name]) == EPERM, (abi, name)
    assert run(default, arch, table['clone3']) == ENOSYS
    for name in ('read', 'write', 'openat', 'execve', 'getpid', 'ptrace', 'chown', 'socket' if abi == 'x86_64'
                 else 'socketcall'):
        assert run(default, arch, table[name]) == ALLOW, (abi, name)
    # namespace flags in clone/unshare, harmless ones allowed; personality by value
    for name in ('clone', 'unshare'):
        assert run(default, arch, table[name], 0x10000000) == EPERM          # CLONE_NEWUSER
        assert run(default, arch, table[name], 0x02000000) == EPERM          # CLONE_NEWCGROUP
        assert run(default, arch, table[name], 0x00000080) == EPERM          # CLONE_NEWTIME
    assert run(default, arch, table['clone'], 0x003d0f00 | 17) == ALLOW    # glibc pthread_create's flags
    assert run(default, arch, table['unshare'], 0x400) == ALLOW             # CLONE_FILES
    assert run(default, arch, table['personality'], 0xffffffff) == ALLOW
    assert run(default, arch, table['personality'], 0x0040000) == EPERM     # ADDR_NO_RANDOMIZE


def test_i386_numbers_are_not_x86_64_numbers(default):
    # i386 unshare is 310 (x86_64: 310 is process_vm_readv, allowed); x86_64 unshare is 272 (i386: 272 fadvise64_64)
    assert run(default, I386, 310, 0x10000000) == EPERM
    assert run(default, X86_64, 310) == ALLOW
    assert run(default, X86_64, 272, 0x10000000) == EPERM
    assert run(default, I386, 272) == ALLOW


def test_x32_range_and_unknown_abis_are_denied(default):
    assert run(default, X86_64, 0x40000000 | 39) == EPERM                  # x32 getpid
    assert run(default, X86_64, 0x40000000 | 272, 0x10000000) == EPERM
    assert run(default, 0x40000028, 20) == EPERM                           # 32-bit ARM on an x86 host
    aarch64 = _seccomp.program(None, _caps.DEFAULT_BCAPS, arch='aarch64')
    table = _syscalls.table('aarch64')
    assert run(aarch64, AARCH64, table['mount']) == EPERM and run(aarch64, AARCH64, table['read']) == ALLOW
    assert run(aarch64, AARCH64, table['clone3']) == ENOSYS
    assert run(aarch64, X86_64, 0) == EPERM and run(aarch64, 0x40000028, 3) == EPERM


def test_capability_gated_calls_follow_the_bounding_set():
    table = _syscalls.table('x86_64')
    plain = _seccomp.program(None, [c for c in _caps.DEFAULT_BCAPS if c != 'sys_boot'], arch='x86_64')
    boot = _seccomp.program(None, _caps.DEFAULT_BCAPS + ['sys_time'], arch='x86_64')
    assert run(plain, X86_64, table['reboot']) == EPERM and run(boot, X86_64, table['reboot']) == ALLOW
    for call in ('kexec_load', 'kexec_file_load'):   # sys_boot never reopens kexec (it checks the host's caps)
        assert run(boot, X86_64, table[call]) == EPERM
    assert run(plain, X86_64, table['clock_settime']) == EPERM and run(boot, X86_64, table['clock_settime']) == ALLOW
    admin = _seccomp.program(None, _caps.DEFAULT_BCAPS + ['sys_admin'], arch='x86_64')
    assert run(admin, X86_64, table['mount']) == EPERM                     # sys_admin does not reopen mounts
    assert run(admin, X86_64, table['unshare'], 0x10000000) == EPERM


def test_allow_deny_and_log():
    table, i386 = _syscalls.table('x86_64'), _syscalls.table('i386')
    prog = _seccomp.program({'allow': ['keyctl', 'unshare', 'clone3'], 'deny': ['ptrace']}, _caps.DEFAULT_BCAPS,
                            arch='x86_64')
    assert run(prog, X86_64, table['keyctl']) == ALLOW and run(prog, I386, i386['keyctl']) == ALLOW
    assert run(prog, X86_64, table['unshare'], 0x10000000) == ALLOW
    assert run(prog, X86_64, table['clone'], 0x10000000) == EPERM          # clone still checked
    assert run(prog, X86_64, table['clone3']) == ALLOW
    assert run(prog, X86_64, table['ptrace']) == EPERM and run(prog, I386, i386['ptrace']) == EPERM
    assert run(prog, X86_64, table['add_key']) == EPERM
    log = _seccomp.program({'mode': 'log'}, _caps.DEFAULT_BCAPS, arch='x86_64')
    assert run(log, X86_64, table['keyctl']) == LOG and run(log, X86_64, table['clone3']) == LOG
    assert run(log, X86_64, table['read']) == ALLOW
    assert _seccomp.program({'mode': 'unconfined'}, _caps.DEFAULT_BCAPS, arch='x86_64') is None


def test_a_long_deny_list_still_assembles():
    table = _syscalls.table('x86_64')
    names = sorted(n for n in table if n not in ('read', 'write', 'exit', 'exit_group', 'rt_sigreturn'))
    prog = _seccomp.program({'deny': names}, _caps.DEFAULT_BCAPS, arch='x86_64')
    assert run(prog, X86_64, table['openat']) == EPERM and run(prog, X86_64, table['read']) == ALLOW
    assert run(prog, I386, _syscalls.table('i386')['openat']) == EPERM


@pytest.mark.parametrize('value,field,text', [
    ({'allow': ['keyctl', 'no_such_call']}, 'seccomp.allow', 'no_such_call'),
    ({'deny': 'keyctl'}, 'seccomp.deny', 'list'),
    ({'mode': 'strict'}, 'seccomp.mode', 'default, log, unconfined'),
    ({'allow': ['keyctl'], 'deny': ['keyctl']}, 'seccomp.allow', 'both'),
    ({'allow': ['iopl']}, 'seccomp.allow', 'iopl'),          # x86 only: unknown on aarch64
    ({'alow': ['keyctl']}, 'seccomp', 'alow'),
])
def test_validate_refuses_bad_input(value, field, text):
    arch = 'aarch64' if value == {'allow': ['iopl']} else 'x86_64'
    with pytest.raises(VServerError) as err:
        _seccomp.validate(value, arch=arch)
    assert err.value.field == field and text in str(err.value)


def test_validate_canonical_form():
    assert _seccomp.validate(None) is None
    assert _seccomp.validate({'mode': 'default'}, arch='x86_64') is None
    assert _seccomp.validate({'mode': 'log', 'allow': ['KEYCTL', 'add_key', 'keyctl']}, arch='x86_64') == \
        {'mode': 'log', 'allow': ['add_key', 'keyctl']}
    assert _caps.validate({'seccomp': {'mode': 'unconfined'}}) == {'seccomp': {'mode': 'unconfined'}}
