#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: context_info
short_description: Facts about the guests on a host, and the spectator view of every process
version_added: 0.1.0
description:
  - For all or the named guests, reads from the kernel the state, init pid, uptime, number of processes and the
    memory and CPU usage of each guest's cgroup.
  - The spectator view (VServer's context 1) lists every process on the host labelled with its context, 0 for the
    host and the guest's xid otherwise.
  - A guest whose config file is unusable (not a JSON object, empty or truncated, an unknown key, a value of the
    wrong type or out of range, another guest's name) is listed with RV(guests[].state=broken) and the problem in
    RV(guests[].error); it never hides the other guests and never fails the task. Its processes are still
    labelled with its name.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux 5.6 or newer, run as root (reads C(/proc) and the cgroup filesystem)
  - cgroup v1 (hybrid) or cgroup v2 mounted on the host
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.INFO_MODULE
  - vserver.core._paths
options:
  names:
    description: Guests to report on. Default is every guest configured on the host.
    type: list
    elements: str
  processes:
    description: Include the spectator view RV(processes).
    type: bool
    default: true
  metrics:
    description:
      - Include each guest's figures for monitoring RV(guests[].metrics), what C(vserver metrics) exposes to
        Prometheus (see the monitoring guide, C(docs/monitoring.md)).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Every guest of this host
  vserver.core.context_info:
  register: vs

- name: One guest, without the process list
  vserver.core.context_info:
    names: [web]
    processes: false

- name: Every guest's CPU, memory, network and disk figures (playbooks/status.yml prints them as a table)
  vserver.core.context_info:
    processes: false
    metrics: true
  register: vs
'''

RETURN = r'''
guests:
  description: One entry per guest, sorted by name.
  returned: always
  type: list
  elements: dict
  sample: [{name: web, xid: 101, state: running, root: /var/lib/vservers/web, hostname: web, init_pid: 4242,
            uptime: 3600.5, nproc: 3, memory_bytes: 7340032, cpu_seconds: 1.25, addresses: [10.8.0.2/24],
            cgroup: {unified: /sys/fs/cgroup/vservers/web}, disk_limit: null}]
  contains:
    name: {description: Guest name., type: str, returned: always, sample: web}
    xid:
      description: Context id; null for a broken config that holds no readable xid.
      type: int
      returned: always
      sample: 101
    state:
      description:
        - C(running), C(frozen) or C(stopped).
        - C(broken) when the guest's config file cannot be used; see RV(guests[].error).
        - C(broken) also when processes are in the guest's cgroup but no init is tracked (a start or stop was killed
          half-way); RV(guests[].message) then says so.
      type: str
      returned: always
      sample: running
    message:
      description: Why a guest with a usable config reads as C(broken), and what fixes it.
      type: str
      returned: when processes are in the guest's cgroup but no init is tracked
      sample: processes in the guest's cgroup but no tracked init (a start or stop was killed half-way); ...
    error:
      description: The config file and what is wrong with it.
      type: str
      returned: when the guest's config file cannot be used
      sample: "/etc/vservers/web.json: xid must be stored as the number 101 (got the string '101')"
    config:
      description: Path of the broken config file.
      type: str
      returned: when the guest's config file cannot be used
      sample: /etc/vservers/web.json
    runtime_state:
      description: What the kernel says about a guest with a broken config, C(running), C(frozen) or C(stopped).
      type: str
      returned: when the guest's config file cannot be used
      sample: running
    root:
      description: The guest's root directory (its tree); null for a broken config.
      type: str
      returned: always
      sample: /var/lib/vservers/web
    hostname:
      description: The guest's host name (its name unless the config sets one).
      type: str
      returned: always
      sample: web.example.org
    addresses:
      description: The addresses (CIDR) of the guest's config; empty when it has no network section.
      type: list
      elements: str
      returned: always
      sample: [10.8.0.2/24, fd00:8::2/64]
    init_pid: {description: "Host pid of the guest's init, or null.", type: int, returned: always, sample: 4242}
    uptime: {description: "Seconds since the guest started, or null.", type: float, returned: always, sample: 3600.5}
    nproc: {description: Processes in the guest's cgroup., type: int, returned: always, sample: 3}
    memory_bytes:
      description: Memory charged to the guest's cgroup; null when stopped.
      type: int
      returned: always
      sample: 7340032
    cpu_seconds:
      description: CPU time used by the guest's cgroup; null when stopped.
      type: float
      returned: always
      sample: 1.25
    cgroup:
      description: The guest's cgroup directories, per hierarchy (C(unified) on cgroup v2, one per controller on v1).
      type: dict
      returned: unless the guest is stopped
      sample: {unified: /sys/fs/cgroup/vservers/web}
    namespaces:
      description:
        - The namespaces of the guest's init, per kind, as recorded at its start (the C(/proc/PID/ns) link text;
          null for a kind the kernel lacks).
      type: dict
      returned: when the guest runs
      sample: {mnt: "mnt:[4026532301]", uts: "uts:[4026532302]", ipc: "ipc:[4026532303]", net: "net:[4026532305]",
               pid: "pid:[4026532304]", cgroup: "cgroup:[4026532306]", time: "time:[4026532307]"}
    disk_limit:
      description:
        - The guest's disk limit in bytes (vserver.core.limits O(vserver.core.limits#module:disk)).
        - Null when it has none; its tree can then fill the host filesystem it lives on.
      type: int
      returned: when the guest's config is usable
      sample: 2147483648
    network:
      description:
        - The guest's network config section (C(mode), C(bridge), C(parent), C(vlan), C(mtu), C(interface),
          C(addresses), C(gateway), as set), plus C(live_addresses) - the addresses on its interface as the kernel
          shows them, when it runs (null when they cannot be read).
        - C(netns_error) instead of C(live_addresses) when the guest's network namespace handle is lost.
      type: dict
      returned: when the guest's config has a network section
      sample: {mode: bridge, bridge: vsbr0, interface: eth0, addresses: [10.8.0.2/24], gateway: [10.8.0.1],
               live_addresses: [10.8.0.2/24]}
    metrics:
      description:
        - The guest's figures for monitoring, read from its cgroup (v1 or v2), its init's C(/proc/PID/net/dev) and
          its disk image; the same figures C(vserver metrics) exposes (metric names in C(docs/monitoring.md)).
        - C(uptime_seconds), C(cpu_user_seconds), C(cpu_system_seconds), C(cpu_periods), C(cpu_throttled_periods),
          C(cpu_throttled_seconds), C(memory_usage_bytes), C(memory_limit_bytes) (null when unlimited),
          C(memory_cache_bytes), C(memory_swap_bytes), C(oom_kills), C(processes), C(tasks), C(tasks_limit) (null
          when unlimited), C(net) (per interface of its network namespace, at most 32, C(receive_bytes),
          C(receive_packets), C(transmit_bytes), C(transmit_packets)), and with a disk limit C(disk_limit_bytes)
          and C(disk_used_bytes). A key is null (or missing) where the host's cgroup layout does not provide it.
        - Empty for a stopped guest.
      type: dict
      returned: when O(metrics=true)
      sample: {uptime_seconds: 3600.5, cpu_user_seconds: 12.5, cpu_system_seconds: 3.25, cpu_periods: 5000,
               cpu_throttled_periods: 12, cpu_throttled_seconds: 0.8, memory_usage_bytes: 7340032,
               memory_limit_bytes: 268435456, memory_cache_bytes: 2097152, memory_swap_bytes: 0, oom_kills: 0,
               processes: 3, tasks: 3, tasks_limit: 512,
               net: {eth0: {receive_bytes: 1200, receive_packets: 10, transmit_bytes: 800, transmit_packets: 8}}}
processes:
  description: Every process on the host, labelled with its context (spectator view).
  returned: when O(processes=true)
  type: list
  elements: dict
  sample: [{pid: 4242, xid: 101, guest: web, guest_pid: 1, comm: init, state: S, rss_kb: 1024, cpu_seconds: 0.01}]
  contains:
    pid: {description: Host pid., type: int, returned: always, sample: 4242}
    xid:
      description: The guest's context id, 0 for the host; null for a guest whose broken config holds no readable xid.
      type: int
      returned: always
      sample: 101
    guest:
      description: The guest's name (also for a guest whose config is broken), empty for the host.
      type: str
      returned: always
      sample: web
    guest_pid: {description: The pid inside the guest's pid namespace (the host pid for host processes)., type: int,
                returned: always, sample: 1}
    comm: {description: The process name (C(/proc/PID/status) Name)., type: str, returned: always, sample: init}
    state:
      description: The process state letter (C(R), C(S), C(D), C(Z), ...).
      type: str
      returned: always
      sample: S
    rss_kb: {description: Resident memory in KiB., type: int, returned: always, sample: 1024}
    cpu_seconds: {description: CPU time used (user and system)., type: float, returned: always, sample: 0.01}
'''

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _mgr_context


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(**copy.deepcopy(_mgr_context.INFO_ARGUMENT_SPEC)),
        supports_check_mode=True,
    )
    _ansible.run(module, lambda: _mgr_context.info(_ansible.paths_from(module), module.params['names'],
                                                   module.params['processes'], module.params['metrics']))


if __name__ == '__main__':
    main()
