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
'''

EXAMPLES = r'''
- name: Every guest of this host
  vserver.core.context_info:
  register: vs

- name: One guest, without the process list
  vserver.core.context_info:
    names: [web]
    processes: false
'''

RETURN = r'''
guests:
  description: One entry per guest, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Guest name., type: str, returned: always}
    xid: {description: "Context id; null for a broken config that holds no readable xid.", type: int, returned: always}
    state:
      description:
        - C(running), C(frozen) or C(stopped).
        - C(broken) when the guest's config file cannot be used; see RV(guests[].error).
      type: str
      returned: always
      sample: running
    error:
      description: The config file and what is wrong with it.
      type: str
      returned: when RV(guests[].state=broken)
      sample: "/etc/vservers/web.json: xid must be stored as the number 101 (got the string '101')"
    config:
      description: Path of the broken config file.
      type: str
      returned: when RV(guests[].state=broken)
      sample: /etc/vservers/web.json
    runtime_state:
      description: What the kernel says about a guest with a broken config, C(running), C(frozen) or C(stopped).
      type: str
      returned: when RV(guests[].state=broken)
      sample: running
    init_pid: {description: "Host pid of the guest's init, or null.", type: int, returned: always}
    uptime: {description: "Seconds since the guest started, or null.", type: float, returned: always}
    nproc: {description: Processes in the guest's cgroup., type: int, returned: always}
    memory_bytes: {description: Memory charged to the guest's cgroup., type: int, returned: always}
    cpu_seconds: {description: CPU time used by the guest's cgroup., type: float, returned: always}
    disk_limit:
      description:
        - The guest's disk limit in bytes (vserver.core.limits O(vserver.core.limits#module:disk)).
        - Null when it has none; its tree can then fill the host filesystem it lives on.
      type: int
      returned: when the guest's config is usable
      sample: 2147483648
processes:
  description: Every process on the host, labelled with its context (spectator view).
  returned: when O(processes=true)
  type: list
  elements: dict
  sample: [{pid: 4242, xid: 101, guest: web, guest_pid: 1, comm: init, state: S, rss_kb: 1024, cpu_seconds: 0.01}]
  contains:
    xid:
      description: The guest's context id, 0 for the host; null for a guest whose broken config holds no readable xid.
      type: int
      returned: always
    guest:
      description: The guest's name (also for a guest whose config is broken), empty for the host.
      type: str
      returned: always
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _manager


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(
            names=dict(type='list', elements='str'),
            processes=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    _ansible.run(module, lambda: _manager.info(_ansible.paths_from(module), module.params['names'],
                                               module.params['processes']))


if __name__ == '__main__':
    main()
