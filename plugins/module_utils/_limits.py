# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: guest resource limits (the ``limits`` config section), the concern's face (floor 3).

The concern is split in four files, each importing only the ones before it and the floors below:
  _limits_parse   ``validate(params, host, layout)`` user input -> canonical section; ``merge``; ``Host``
  _limits_plan    ``settings``/``diff_files``: section -> typed cgroup file records for the host's backend (v1, v2)
  _limits_apply   ``apply``/``restore``: write the planned files (undoable); rlimits (setrlimit, prlimit)
  _limits         this file: the option spec and defaults (one source for the module, guests and the CLI), the
                  start-time steps the runtime calls (``on_cgroup``, ``on_child``, ``on_absent``) and the names
                  other files used before the split.
Mechanisms below: _cgroup (backends), _devices (the device policy, bpf on v2), _disk (loop image, btrfs qgroup).
The manager of the ``limits`` module is _mgr_limits.
"""

from __future__ import annotations

import os
from typing import Optional

from ansible_collections.vserver.core.plugins.module_utils import (
    _devices, _disk, _limits_apply, _limits_parse, _limits_plan)

# --- the options: one source for the module's argument spec, the guests module and the CLI ------------------------

OPTIONS_SPEC = dict(
    memory=dict(type='raw'),
    memory_high=dict(type='raw'),
    swap=dict(type='raw'),
    nproc=dict(type='raw'),
    cpu=dict(type='dict', options=dict(
        fill_rate=dict(type='int'), interval=dict(type='int'), quota=dict(type='raw'),
        period=dict(type='int'), burst=dict(type='int'))),
    cpu_weight=dict(type='int'),
    cpuset=dict(type='str'),
    io=dict(type='dict', options=dict(weight=dict(type='int'), devices=dict(type='list', elements='dict'))),
    rlimits=dict(type='dict'),
    disk=dict(type='raw'),
    disk_backend=dict(type='str', default='auto', choices=list(_disk.DISK_BACKENDS)),
    disk_fstype=dict(type='str', default='ext4', choices=list(_disk.DISK_FSTYPES)),
)
# What the limits module passes to AnsibleModule, less the host path options (_ansible.argument_spec adds them).
ARGUMENT_SPEC = dict(name=dict(type='str', required=True), **OPTIONS_SPEC)
ARGUMENT_SPEC['restart'] = dict(type='bool', default=False)
# An option's value when a task leaves it out (None: keep what is stored, see ``merge``).
DEFAULTS = {key: spec.get('default') for key, spec in OPTIONS_SPEC.items()}
OPTION_KEYS = tuple(OPTIONS_SPEC)


# --- the start-time steps the runtime calls -----------------------------------------------------------------------

def on_cgroup(root: str, section: Optional[dict], group, host: Optional[_limits_parse.Host] = None) -> None:
    """At guest start, after its cgroup is created and before any process joins it: pending disk changes (the guest
    is stopped now), the disk image mounted on ``root``, the devices policy and every cgroup limit of ``section``."""
    section = section or {}
    disk = section.get('disk')
    if disk or os.path.exists(_disk.disk_image(root)):
        plan = _disk.disk_plan(root, disk, running=False)
        _disk.disk_execute(root, disk, plan)
        if disk:
            _disk.disk_ensure_mounted(root, disk)
    _devices.apply_devices(group)
    _limits_apply.apply(group, section, host)


def on_child(section: Optional[dict]) -> None:
    """In the guest's init, before capabilities are dropped: the rlimits (inherited by everything the guest runs)."""
    _limits_apply.set_rlimits(section or {})


def on_absent(root: Optional[str]) -> None:
    """When a guest is removed: its tree leaves the loop image (a plain directory again, kept or purged by the
    caller) and the image is deleted, so nothing stays mounted or orphaned."""
    if root and os.path.exists(_disk.disk_image(root)):
        _disk.loop_remove(root)


# parsing and validation
MAX = _limits_parse.MAX
KEYS = _limits_parse.KEYS
RLIMITS = _limits_parse.RLIMITS
CAP_SYS_RESOURCE = _limits_parse.CAP_SYS_RESOURCE
CPU_PERIOD_DEFAULT = _limits_parse.CPU_PERIOD_DEFAULT
Host = _limits_parse.Host
parse_size = _limits_parse.parse_size
parse_int = _limits_parse.parse_int
parse_cpulist = _limits_parse.parse_cpulist
format_cpulist = _limits_parse.format_cpulist
validate = _limits_parse.validate
validate_cpu = _limits_parse.validate_cpu
validate_io = _limits_parse.validate_io
validate_rlimits = _limits_parse.validate_rlimits
disk_validate = _limits_parse.disk_validate
merge = _limits_parse.merge
# planning and applying
Setting = _limits_plan.Setting
settings = _limits_plan.settings
check_supported = _limits_plan.check_supported
diff_files = _limits_plan.diff_files
current = _limits_plan.current
rlimits_differ = _limits_plan.rlimits_differ
_cpus_norm = _limits_plan._cpus_norm
_v1_mem = _limits_plan._v1_mem
_v2_max = _limits_plan._v2_max
_v2_parent_cpus = _limits_plan._v2_parent_cpus
apply = _limits_apply.apply
apply_undoable = _limits_apply.apply_undoable
restore = _limits_apply.restore
_ordered = _limits_apply._ordered
set_rlimits = _limits_apply.set_rlimits
rlimits_snapshot = _limits_apply.rlimits_snapshot
rlimits_restore = _limits_apply.rlimits_restore
apply_rlimits_live = _limits_apply.apply_rlimits_live
# devices and disk (mechanisms)
DEVICES = _devices.DEVICES
BPF_DEVCG_DEV_BLOCK = _devices.BPF_DEVCG_DEV_BLOCK
BPF_DEVCG_DEV_CHAR = _devices.BPF_DEVCG_DEV_CHAR
device_rules = _devices.device_rules
apply_devices = _devices.apply_devices
bpf_device_program = _devices.bpf_device_program
bpf_attach_devices = _devices.bpf_attach_devices
bpf_device_programs = _devices.bpf_device_programs
disk_image = _disk.disk_image
disk_resolve = _disk.disk_resolve
_btrfs_limit = _disk._btrfs_limit
