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
author:
  - vserver.core contributors (@vserver-core)
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
    xid: {description: Context id., type: int, returned: always}
    state: {description: "C(running), C(frozen) or C(stopped).", type: str, returned: always}
    init_pid: {description: "Host pid of the guest's init, or null.", type: int, returned: always}
    uptime: {description: "Seconds since the guest started, or null.", type: float, returned: always}
    nproc: {description: Processes in the guest's cgroup., type: int, returned: always}
    memory_bytes: {description: Memory charged to the guest's cgroup., type: int, returned: always}
    cpu_seconds: {description: CPU time used by the guest's cgroup., type: float, returned: always}
processes:
  description: Every process on the host, labelled with its context (spectator view).
  returned: when O(processes=true)
  type: list
  elements: dict
  sample: [{pid: 4242, xid: 101, guest: web, guest_pid: 1, comm: init, state: S, rss_kb: 1024, cpu_seconds: 0.01}]
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
