#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: _host_remove
short_description: The parts of the host role's removal that no builtin module does (private to the role)
version_added: 0.1.0
description:
  - Private to the C(vserver.core.host) role (C(host_state=absent)), which calls it; its options may change without
    notice.
  - One O(phase) per call. C(probe) only reads the configured guests, their runtime state, the guests' enabled boot
    units, the running C(vserver-supervise) and which command links are ours. C(supervisor) stops the
    C(vserver-supervise) that C(--daemon) started, by the pid in its pid file, never by name. C(bridge) deletes
    O(bridge) only while no link is attached to it. C(cgroup) removes O(cgroup_parent) in every mounted hierarchy,
    each level only when empty. C(dirs) removes the O(dirs) that hold nothing but the runtime's bookkeeping, then
    the O(empty_dirs) that are empty.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node, run as root; iproute2 (C(ip)) for the C(bridge) phase
extends_documentation_fragment:
  - vserver.core._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    platforms: linux
options:
  phase:
    description: What to do.
    type: str
    required: true
    choices: [probe, supervisor, bridge, cgroup, dirs]
  config_dir:
    description: The guests' config directory (phase C(probe)).
    type: path
  run_dir:
    description: The guests' runtime directory (phases C(probe) and C(supervisor)).
    type: path
  links:
    description: The command's links, each a dict with C(src) and C(dest) (phase C(probe)).
    type: list
    elements: dict
    default: []
  bridge:
    description: The guest bridge (phase C(bridge)).
    type: str
    default: ''
  cgroup_parent:
    description: The guests' parent cgroup, a relative path (phase C(cgroup)).
    type: str
  dirs:
    description: State directories to remove when they hold nothing of a guest (phase C(dirs)).
    type: list
    elements: path
    default: []
  removed:
    description: Paths an earlier task of the same run removes (phase C(dirs) in check mode).
    type: list
    elements: path
    default: []
  empty_dirs:
    description: Directories to remove when empty, innermost first (phase C(dirs)).
    type: list
    elements: path
    default: []
'''

EXAMPLES = r'''
- name: Remove the guests' cgroup parent (each level only when empty)
  vserver.core._host_remove:
    phase: cgroup
    cgroup_parent: vservers
'''

RETURN = r'''
actions:
  description: What was done (or would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [remove cgroup /sys/fs/cgroup/vservers]
kept:
  description: What was left in place, and why.
  returned: always
  type: list
  elements: str
  sample: ["bridge vsbr0 kept: links attached (vs-web)"]
guests:
  description: Names of the configured guests.
  returned: with phase probe
  type: list
  elements: str
  sample: [web]
running:
  description: Names with runtime state in O(run_dir).
  returned: with phase probe
  type: list
  elements: str
  sample: [web]
systemd:
  description: The host runs systemd.
  returned: with phase probe
  type: bool
  sample: true
links_ours:
  description: C(dest) of the O(links) that link to their C(src).
  returned: with phase probe
  type: list
  elements: str
  sample: [/usr/local/sbin/vserver]
supervisor:
  description: The pid of the running C(vserver-supervise --daemon), or null.
  returned: with phase probe
  type: int
  sample: 4242
guest_units:
  description: Enabled C(vserver@NAME) units.
  returned: with phase probe
  type: list
  elements: str
  sample: [vserver@web.service]
'''

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _host
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            phase=dict(type='str', required=True, choices=list(_host.PHASES)),
            config_dir=dict(type='path'),
            run_dir=dict(type='path'),
            links=dict(type='list', elements='dict', default=[]),
            bridge=dict(type='str', default=''),
            cgroup_parent=dict(type='str'),
            dirs=dict(type='list', elements='path', default=[]),
            removed=dict(type='list', elements='path', default=[]),
            empty_dirs=dict(type='list', elements='path', default=[]),
        ),
        required_if=[('phase', 'probe', ['config_dir', 'run_dir']), ('phase', 'supervisor', ['run_dir']),
                     ('phase', 'cgroup', ['cgroup_parent'])],
        supports_check_mode=True,
    )
    try:
        out = _host.Removal(module.params, module.check_mode).run(module.params['phase'])
    except VServerError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    module.exit_json(**out)


if __name__ == '__main__':
    main()
