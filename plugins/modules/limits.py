#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: limits
short_description: Resource limits of a Linux-VServer style guest (memory, processes, CPU, I/O, rlimits, disk)
version_added: 0.1.0
description:
  - Sets the resource limits of a guest, mapped to the host's cgroup backend, detected automatically - cgroup
    v1 (memory, pids, cpu, cpuset, blkio, devices controllers; hybrid hosts) or cgroup v2 (unified).
  - An option a task does not give is left as it is in the guest's C(limits) config section (as
    C(community.docker) and C(containers.podman) leave unspecified options alone), so a task setting only
    O(memory) keeps the CPU limit. Lifting a limit takes an explicit value, given under each option - C(max) (or
    C(unlimited)) for sizes, counts and O(cpu.quota); C(all) for O(cpuset); C(none) for O(disk); C({}) for O(io)
    and O(rlimits); C(100) (the default weight) for O(cpu_weight). M(vserver.core.guests) is different - a guest
    entry is the whole section, so a key removed there is lifted.
  - On a running guest every limit except O(disk) applies at once, without restart - the cgroup files are written
    and rlimits are set with prlimit(2) on every process of the guest - and the diff shows the section before and
    after. In check mode nothing is written. Values are compared with what the kernel reports, so a limit changed
    behind the module's back is put back.
  - A guest can only use the devices of its minimal C(/dev) (null, zero, full, random, urandom, tty, console, ptmx,
    pts) - the v1 devices controller, or an eBPF device program on cgroup v2.
  - Sizes are bytes (an integer) or a number with C(K), C(M), C(G), C(T) (binary units, C(512M)); C(max) or
    C(unlimited) mean no limit. Bad input (negative, zero where meaningless, memory_high above memory, unknown
    device, CPUs outside the online ones, an rlimit above what the host can grant) fails before anything is written.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux 5.6 or newer (time namespace; C(pidfd_open) 5.3), run as root
  - cgroup v1 (hybrid) or cgroup v2 mounted on the host (the controllers a limit needs - memory, pids, cpu, io or
    blkio, cpuset)
  - For O(disk) with O(disk_backend=loop) - util-linux (C(losetup), C(mount), C(blkid)) and loop devices; e2fsprogs
    (C(mkfs.ext4), C(e2fsck), C(resize2fs)) for O(disk_fstype=ext4), xfsprogs (C(mkfs.xfs), C(xfs_growfs)) for
    O(disk_fstype=xfs)
  - For O(disk) with O(disk_backend=btrfs) - btrfs-progs (C(btrfs)) and the tree on a btrfs filesystem (quotas are
    enabled on it)
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  name:
    description: The guest (created before with M(vserver.core.context)).
    type: str
    required: true
  memory:
    description:
      - Hard memory limit (VServer C(RSS) / C(VM) limits). Above it the guest's own processes are reclaimed and, if
        that fails, OOM-killed - inside the guest only. v2 C(memory.max), v1 C(memory.limit_in_bytes).
      - Unspecified - left as it is. To remove, give C(max) (or C(unlimited)).
    type: raw
  memory_high:
    description:
      - Throttling limit below O(memory) - v2 C(memory.high) (the guest is slowed and reclaimed, not killed). v1
        has no throttle - this maps to C(memory.soft_limit_in_bytes), reclaimed first when the host runs short.
      - Unspecified - left as it is. To remove, give C(max) (or C(unlimited)).
    type: raw
  swap:
    description:
      - Swap the guest may use (C(0) - none). v2 C(memory.swap.max); v1 C(memory.memsw.limit_in_bytes) =
        O(memory) + O(swap), which needs O(memory) and swap accounting.
      - Unspecified - left as it is. To remove, give C(max) (or C(unlimited)).
    type: raw
  nproc:
    description:
      - Maximum number of processes and threads in the guest (VServer C(NPROC)); a fork beyond it fails with
        EAGAIN inside the guest. C(pids.max) on both backends.
      - Unspecified - left as it is. To remove, give C(max) (or C(unlimited)).
    type: raw
  cpu:
    description:
      - CPU bandwidth as VServer's token bucket - O(cpu.fill_rate) tokens every O(cpu.interval) (a share of
        fill_rate/interval of one CPU) - or as O(cpu.quota) microseconds per O(cpu.period). Mapped to the
        CFS bandwidth controller - v2 C(cpu.max) (+ C(cpu.max.burst)), v1 C(cpu.cfs_quota_us)/C(cpu.cfs_period_us)
        (+ C(cpu.cfs_burst_us)).
      - Given, it replaces the whole stored CPU limit (a missing O(cpu.burst) is no burst). Unspecified - left as
        it is. To remove, give O(cpu.quota=max).
    type: dict
    suboptions:
      fill_rate:
        description: Tokens added per interval (VServer C(fill-rate)).
        type: int
      interval:
        description: Interval of the token bucket (VServer C(interval)); only the ratio fill_rate/interval counts.
        type: int
      quota:
        description: Microseconds of CPU time per period (at least 1000), or C(max).
        type: raw
      period:
        description: Period in microseconds, 1000 to 1000000. Default 100000.
        type: int
      burst:
        description: Microseconds of unused quota the guest may save up and spend at once (VServer C(tokens-max)
          beyond one fill); at most O(cpu.quota).
        type: int
  cpu_weight:
    description:
      - Relative CPU weight when CPUs are contended (VServer priority / shares), 1 to 10000, default 100.
        v2 C(cpu.weight), v1 C(cpu.shares) = weight * 1024 / 100.
      - Unspecified - left as it is. To go back to the default, give C(100).
    type: int
  cpuset:
    description:
      - CPUs the guest may run on, e.g. C(0-1) or C(0,2); each must be online.
      - Unspecified - left as it is. To remove the pinning (every online CPU), give C(all).
    type: str
  io:
    description:
      - Block I/O weight and per-device bandwidth limits.
      - Given, it replaces the whole stored I/O section (weight and every device). Unspecified - left as it is.
        To remove, give C({}).
    type: dict
    suboptions:
      weight:
        description:
          - Proportional I/O weight, 1 to 10000 (v2 C(io.weight)); v1 C(blkio.bfq.weight) (BFQ scheduler only,
            1 to 1000); refused where the host has neither.
        type: int
      devices:
        description:
          - Per-device limits (v2 C(io.max), v1 C(blkio.throttle.*)). Each item has C(device) (a whole disk,
            C(/dev/vda) or C(254:0)) and any of C(read_bps), C(write_bps) (sizes per second), C(read_iops),
            C(write_iops).
        type: list
        elements: dict
  rlimits:
    description:
      - Per-process rlimits of the guest's processes, by name (C(nofile), C(nproc), C(core), C(stack), C(memlock),
        C(as), C(fsize), C(cpu), C(data), C(locks), C(msgqueue), C(nice), C(rtprio), C(rttime), C(sigpending),
        C(rss)) - a value for both soft and hard, or C({soft, hard}); C(unlimited) allowed.
      - Set in the guest's init at start and with prlimit(2) on every process of a running guest.
      - Raising a hard limit above the host's own needs C(CAP_SYS_RESOURCE); where root lacks it (some
        containers and VMs) such a value is refused with the highest value allowed.
      - C(nproc) as an rlimit counts per user across the whole host and is never enforced for root; use O(nproc).
      - Given, the mapping replaces every stored rlimit. Unspecified - left as it is. To remove, give C({}); the
        processes of a running guest keep the rlimits they have until it restarts.
    type: dict
  disk:
    description:
      - Disk space of the guest's tree (VServer disk limit). With O(disk_backend=loop) the tree moves into a
        per-guest image file C(ROOT.disk.img) (ext4 or xfs) mounted on the root; with C(btrfs) the tree becomes a
        subvolume with a qgroup limit. C(auto) picks btrfs when the tree is on btrfs.
      - Creating or removing a loop image needs the guest stopped (RV(restart_required) on a running guest, or
        O(restart=true)); growing applies live; shrinking is refused. A btrfs limit applies live.
      - Unification hardlinks files across guests; a hardlink cannot leave a filesystem, so a guest on its own
        loop image takes no part in cross-guest unification (within one btrfs filesystem reflinks still work).
      - Unspecified - left as it is. To remove the disk limit (the tree moves out of its image), give C(none).
    type: raw
  disk_backend:
    description: How O(disk) is enforced.
    type: str
    choices: [auto, loop, btrfs]
    default: auto
  disk_fstype:
    description: Filesystem of the loop image (xfs needs at least 300M).
    type: str
    choices: [ext4, xfs]
    default: ext4
  restart:
    description: Restart a running guest when a O(disk) change needs it stopped.
    type: bool
    default: false
notes:
  - Run as root.
  - "Sizes (O(memory), O(memory_high), O(swap), O(disk), and C(read_bps)/C(write_bps) in O(io)) are bytes as an
    integer, or a whole number with a binary unit C(K), C(M), C(G) or C(T), optionally followed by C(B) or C(iB),
    in any case. C(64MB), C(64MiB), C(64M) and C(64 mb) all mean 67108864 bytes (units are powers of 1024, never
    of 1000). Fractions such as C(1.5G) are refused. C(max), C(unlimited) or C(infinity) lift a limit (not for
    O(disk)). The result's RV(limits) holds sizes in bytes."
seealso:
  - module: vserver.core.context
  - module: vserver.core.capabilities
'''

EXAMPLES = r'''
- name: A quarter of one CPU (VServer token bucket), 512M of memory, 64 processes
  vserver.core.limits:
    name: web
    memory: 512M
    memory_high: 400M
    nproc: 64
    cpu:
      fill_rate: 1
      interval: 4

- name: CPU as quota/period with a burst, pinned to CPU 1, read bandwidth capped, open files limited
  vserver.core.limits:
    name: db
    cpu: {quota: 50000, period: 100000, burst: 20000}
    cpuset: "1"
    io:
      devices:
        - {device: /dev/vda, read_bps: 20M, write_iops: 500}
    rlimits:
      nofile: {soft: 1024, hard: 4096}
      core: 0

- name: 2G of disk in a per-guest ext4 image (restarts the guest if it runs)
  vserver.core.limits:
    name: web
    memory: 512M
    disk: 2G
    disk_backend: loop
    restart: true
'''

RETURN = r'''
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: [write memory.limit_in_bytes, cpu.cfs_quota_us, prlimit 3 processes]
live:
  description: The cgroup files written to the running guest (would be written, in check mode).
  returned: always
  type: list
  elements: str
  sample: [memory.max, cpu.max, pids.max]
rlimit_pids:
  description: How many processes of the running guest got new rlimits.
  returned: always
  type: int
  sample: 3
limits:
  description: The canonical limits section (sizes in bytes, CPU as quota/period in microseconds).
  returned: always
  type: dict
  sample: {memory: 536870912, nproc: 64, cpu: {quota: 25000, period: 100000}}
backend:
  description: The cgroup backend in use (C(cgroup v1) or C(cgroup v2)).
  returned: always
  type: str
  sample: cgroup v2
running:
  description: Whether the guest runs (live changes were applied to it).
  returned: always
  type: bool
  sample: true
restart_required:
  description: A disk change waits for the guest to be stopped; it is applied at the next start.
  returned: always
  type: bool
  sample: false
restarted:
  description: The guest was restarted by this run.
  returned: always
  type: bool
  sample: false
diff:
  description: Before and after of the guest's C(limits) config section.
  returned: always
  type: dict
  sample: {before: {memory: 268435456}, after: {memory: 536870912}}
'''

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _limits, _mgr_limits


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(**copy.deepcopy(_limits.ARGUMENT_SPEC)),
        supports_check_mode=True,
    )
    params = {key: module.params[key] for key in _limits.OPTION_KEYS}
    _ansible.run(module, lambda: _mgr_limits.ensure(_ansible.paths_from(module), module.params['name'], params,
                                                    module.check_mode, restart=module.params['restart']))


if __name__ == '__main__':
    main()
