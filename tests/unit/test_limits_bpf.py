"""The cgroup v2 device program, run through a small interpreter of the few eBPF instructions it uses."""
import struct

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _limits

MKNOD, READ, WRITE = 1, 2, 4


def run(program, dev_type, major, minor, access=READ | WRITE):
    """Interpret ldxw / and64 imm / jne imm / mov64 imm / exit, as the kernel's verifier-checked VM would."""
    ctx = struct.pack('<III', (access << 16) | dev_type, major, minor)
    regs = [0] * 11
    pc = 0
    steps = 0
    while True:
        steps += 1
        assert steps < 10000
        code, regs_byte, off, imm = struct.unpack_from('<BBhi', program, pc * 8)
        dst, src = regs_byte & 0xf, regs_byte >> 4
        pc += 1
        if code == 0x61:                                   # BPF_LDX | BPF_W | BPF_MEM
            assert src == 1 and off in (0, 4, 8)
            regs[dst] = struct.unpack_from('<I', ctx, off)[0]
        elif code == 0x57:                                 # BPF_ALU64 | BPF_AND | BPF_K
            regs[dst] &= imm
        elif code == 0x55:                                 # BPF_JMP | BPF_JNE | BPF_K
            if regs[dst] != imm:
                pc += off
        elif code == 0xb7:                                 # BPF_ALU64 | BPF_MOV | BPF_K
            regs[dst] = imm
        elif code == 0x95:                                 # BPF_EXIT
            return regs[0]
        else:
            raise AssertionError('unexpected opcode %#x' % code)
        assert 0 <= pc < len(program) // 8


PROGRAM = _limits.bpf_device_program(_limits.DEVICES)
C, B = _limits.BPF_DEVCG_DEV_CHAR, _limits.BPF_DEVCG_DEV_BLOCK


@pytest.mark.parametrize('dev_type,major,minor,allowed', [
    (C, 1, 3, 1), (C, 1, 5, 1), (C, 1, 7, 1), (C, 1, 8, 1), (C, 1, 9, 1), (C, 5, 0, 1), (C, 5, 2, 1),
    (C, 136, 0, 1), (C, 136, 4711, 1),                    # any pts
    (C, 1, 1, 0), (C, 1, 2, 0), (C, 1, 4, 0),            # mem, kmem, port
    (C, 4, 1, 0), (C, 5, 1, 0), (C, 10, 237, 0), (C, 10, 200, 0),   # tty1, the host console, loop-control, tun
    (B, 1, 3, 0), (B, 254, 0, 0), (B, 7, 0, 0), (B, 8, 0, 0),        # a block device numbered like null; disks
    (C, 137, 0, 0), (C, 0, 0, 0),
])
def test_allow_list(dev_type, major, minor, allowed):
    for access in (MKNOD, READ, WRITE, READ | WRITE | MKNOD):
        assert run(PROGRAM, dev_type, major, minor, access) == allowed


def test_program_shape():
    assert len(PROGRAM) % 8 == 0
    # 4 loads + 5 instructions per exact rule + 4 per wildcard rule + the final deny
    exact = sum(1 for rule in _limits.DEVICES if rule[2] is not None)
    wild = len(_limits.DEVICES) - exact
    assert len(PROGRAM) // 8 == 4 + 5 * exact + 4 * wild + 2
    assert run(_limits.bpf_device_program([]), C, 1, 3) == 0   # an empty allow list denies everything
