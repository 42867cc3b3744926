#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: util_vserver_import
short_description: Import util-vserver guests (C(/etc/vservers/NAME/)) as vserver.core guests, in place
version_added: 0.1.0
description:
  - Reads util-vserver's per-guest configuration directories (C(context), C(uts/*), C(interfaces/*),
    C(bcapabilities), C(ccapabilities), C(flags), C(rlimits/*), C(sched/*), C(cpuset/*), C(cgroup/*), C(dlimits/*),
    C(apps/init/*), C(apps/vunify/exclude), C(personality), the C(vdir) link) and writes the equivalent guest -
    context (xid, host and domain name, init), capabilities, limits, addresses and autostart mark, through the same
    managers as the M(vserver.core.guests) module. The guest keeps its xid, its name and its tree where it is.
  - A guest without a C(context) file had a dynamic context; it gets a free xid, kept by later runs.
  - Everything is read and checked before anything is written. A file that cannot be used (garbage in a limit, an
    interface without C(ip), an xid given to two guests or taken on this host, a bad netmask) fails the task with a
    message naming the file; nothing is written then.
  - The result lists every setting read with what it became (RV(guests)), and every setting with no mainline
    equivalent with the reason (for example C(dlimits) on a guest that stays unified). The full table is
    C(docs/import.md).
  - A directory name this collection refuses as a guest name (upper case, other characters) is mapped to one it
    accepts and reported (C(renamed_from)).
  - Guests util-vserver unified (those with C(apps/vunify)) are unified by M(vserver.core.unify) with their own
    exclude list; the files C(vhashify) already linked stay linked and immutable and enter this host's index.
  - util-vserver keeps its configuration in C(/etc/vservers), this collection's default O(config_dir). The module
    refuses to write its store into util-vserver's directory unless O(move_legacy) moves util-vserver's tree
    aside first. Choose another O(config_dir) (the host role's C(host_config_dir)) to keep both.
  - Warns when util-vserver's own C(vserver) command is installed (C(/usr/sbin/vserver)).
  - A guest that fails half-way is removed again, with the guests this run created before it (their trees,
    util-vserver's, are kept).
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Linux, run as root
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  guests:
    description:
      - util-vserver guest directory names to import, or C(all).
    type: list
    elements: str
    default: [all]
  legacy_dir:
    description:
      - util-vserver's configuration directory.
    type: path
    default: /etc/vservers
  state:
    description:
      - C(present) writes the guests' configs, C(started) also starts them (in C(apps/init/depends) order),
        C(stopped) stops them.
    type: str
    choices: [present, started, stopped]
    default: present
  bridge:
    description:
      - The host bridge the guests' veths join (created when missing). Default the address module's bridge.
    type: str
  unify:
    description:
      - Unify the guests util-vserver unified (C(apps/vunify)) with their exclude list.
    type: bool
    default: true
  move_legacy:
    description:
      - When O(config_dir) is O(legacy_dir), move util-vserver's tree to O(legacy_dir)C(.util-vserver) first
        (after every guest was read and checked) and import from there.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Show what importing every util-vserver guest would do
  vserver.core.util_vserver_import:
    config_dir: /etc/vserver.core
  check_mode: true
  register: plan

- name: Import web and dns, start them on bridge br0
  vserver.core.util_vserver_import:
    config_dir: /etc/vserver.core
    guests: [web, dns]
    bridge: br0
    state: started
'''

RETURN = r'''
actions:
  description: What was done (or would be), per guest (C(NAME) then the action).
  returned: always
  type: list
  elements: str
  sample: ['web: create config', 'web: limits: update config', 'web: start']
guests:
  description:
    - Per guest (by its new name), the legacy directory, its xid, its root, whether it changed, its actions,
      C(restart_required), C(mapped) (each setting read - C(file), C(value), C(to)) and C(unmapped) (each setting with no mainline
      equivalent - C(file), C(value), C(reason)), and C(renamed_from) (the directory name, when it was mapped).
  returned: always
  type: dict
  sample: {web: {legacy: /etc/vservers/web, xid: 101, root: /vservers/web, changed: true,
           actions: [create config, start], renamed_from: null,
           mapped: [{file: context, value: 101, to: xid}],
           unmapped: [{file: dlimits/0, value: {space_total: 1048576}, reason: the guest stays unified ...}]}}
restart_required:
  description: A re-import changed a running guest's setting that applies at its next start (see RV(guests)).
  returned: always
  type: bool
  sample: false
legacy_dir:
  description: Where util-vserver's configuration was read.
  returned: always
  type: str
  sample: /etc/vservers
moved_to:
  description: Where util-vserver's tree was moved (O(move_legacy)), or null.
  returned: always
  type: str
  sample: /etc/vservers.util-vserver
legacy_command:
  description: util-vserver's own C(vserver) command when it is installed, or null.
  returned: always
  type: str
  sample: /usr/sbin/vserver
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _mgr_import


def main():
    module = AnsibleModule(argument_spec=_ansible.argument_spec(**_mgr_import.ARGUMENT_SPEC),
                           supports_check_mode=True)
    params = {key: module.params[key] for key in _mgr_import.ARGUMENT_SPEC}
    _ansible.run(module, lambda: _mgr_import.ensure(_ansible.paths_from(module), None, params, module.check_mode))


if __name__ == '__main__':
    main()
