# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the device policy of a guest's cgroup (floor 2, a mechanism).

A guest may use only the devices of its minimal /dev: the v1 devices controller (devices.deny/devices.allow), or
on cgroup v2, which has no devices.allow file, an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to
the cgroup (runc, systemd and LXC do the same). The program is a dozen instructions assembled here and loaded
with bpf(2) (_kernel): no compiler, no libbpf. Once attached, the cgroup holds the only reference to it, so it
lives exactly as long as the guest's cgroup.
"""

from __future__ import annotations

import os
import struct
from typing import Iterable, List, Optional, Tuple

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

# The minimal /dev of a guest (see _runtime_child._setup_root): (type, major, minor or None for '*').
DEVICES = (('c', 1, 3), ('c', 1, 5), ('c', 1, 7), ('c', 1, 8), ('c', 1, 9),  # null zero full random urandom
           ('c', 5, 0), ('c', 5, 2), ('c', 136, None))                      # tty, ptmx, pts/*
# (/dev/console is a null device, 1:3, in a guest: the host's console is never reachable.)

BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
Rule = Tuple[str, int, Optional[int]]


def device_rules(rules: Iterable[Rule] = DEVICES) -> List[str]:
    """The v1 devices.allow lines of ``rules``."""
    return ['%s %d:%s rwm' % (kind, major, '*' if minor is None else minor) for kind, major, minor in rules]


def apply_devices(group) -> Optional[str]:
    """Allow only the guest's minimal /dev (v1 devices controller, v2 an eBPF device program). Returns 'v1',
    'bpf', or None (a v1 host without the devices controller)."""
    layout = group.layout
    if layout.version == 1 and 'devices' in layout.v1:
        group.write('devices.deny', 'a')
        for rule in device_rules():
            group.write('devices.allow', rule)
        return 'v1'
    if layout.version == 2:
        bpf_attach_devices(group.path, DEVICES)
        return 'bpf'
    return None


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack('<BBhi', code, (src << 4) | dst, off, imm)


def bpf_device_program(rules: Iterable[Rule]) -> bytes:
    """Assemble an allow-list program: return 1 (allow) for a matching (type, major, minor|None), else 0."""
    ldx_w, and_k, jne_k, mov_k, exit_ = 0x61, 0x57, 0x55, 0xb7, 0x95
    code = [
        _insn(ldx_w, dst=2, src=1, off=0),      # r2 = ctx->access_type
        _insn(and_k, dst=2, imm=0xffff),        # r2 &= 0xffff   (device type; access bits are the upper half)
        _insn(ldx_w, dst=4, src=1, off=4),      # r4 = ctx->major
        _insn(ldx_w, dst=5, src=1, off=8),      # r5 = ctx->minor
    ]
    for kind, major, minor in rules:
        dev_type = BPF_DEVCG_DEV_CHAR if kind == 'c' else BPF_DEVCG_DEV_BLOCK
        size = 5 if minor is not None else 4
        code.append(_insn(jne_k, dst=2, off=size - 1, imm=dev_type))
        code.append(_insn(jne_k, dst=4, off=size - 2, imm=major))
        if minor is not None:
            code.append(_insn(jne_k, dst=5, off=size - 3, imm=minor))
        code.append(_insn(mov_k, dst=0, imm=1))
        code.append(_insn(exit_))
    code.append(_insn(mov_k, dst=0, imm=0))
    code.append(_insn(exit_))
    return b''.join(code)


def _load(program):
    """Load the program; a refusal is reported with the verifier's log (a second load at log level 1)."""
    try:
        return K.bpf_prog_load(K.BPF_PROG_TYPE_CGROUP_DEVICE, K.BPF_CGROUP_DEVICE, program, b'vserver_dev')
    except OSError as exc:
        try:
            os.close(K.bpf_prog_load(K.BPF_PROG_TYPE_CGROUP_DEVICE, K.BPF_CGROUP_DEVICE, program, b'vserver_dev', 65536))
            detail = ''  # accepted the second time: nothing to add
        except OSError as logged:
            detail = logged.strerror
        raise VServerError('devices: the kernel refused the cgroup device program: %s %s' % (exc, detail))


def bpf_attach_devices(cgroup_dir: str, rules: Iterable[Rule] = DEVICES) -> None:
    """Load the allow-list program and attach it to a cgroup v2 directory (replacing an earlier one)."""
    prog_fd = _load(bpf_device_program(rules))
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            K.bpf_prog_attach(cg_fd, prog_fd, K.BPF_CGROUP_DEVICE)
        finally:
            os.close(cg_fd)
    finally:
        os.close(prog_fd)


def bpf_device_programs(cgroup_dir: str) -> int:
    """How many device programs are attached to a cgroup v2 directory (BPF_PROG_QUERY)."""
    cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return K.bpf_prog_query_count(cg_fd, K.BPF_CGROUP_DEVICE)
    finally:
        os.close(cg_fd)
