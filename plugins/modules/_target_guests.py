#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: _target_guests
short_description: What a cold migration's target already holds (private to the migrate role)
version_added: 0.1.0
description:
  - Private to the C(vserver.core.migrate) role, which runs it on the target; its options may change without notice.
  - Lists the target's guests with their xid and addresses (configs that cannot be read are skipped), the free space
    for trees and which names already have a tree, so the role can refuse a migration that would collide. Changes
    nothing.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.INFO_MODULE
options:
  config_dir:
    description: The target's guest config directory.
    type: path
    required: true
  tree_dir:
    description: The target's guest trees directory.
    type: path
    required: true
'''

EXAMPLES = r'''
- name: Read the target's guests
  vserver.core._target_guests:
    config_dir: /etc/vservers
    tree_dir: /var/lib/vservers
  delegate_to: vs2
  register: target
'''

RETURN = r'''
guests:
  description: The target's guests, by name, with C(xid) and C(addresses).
  returned: always
  type: dict
  sample: {web: {xid: 101, addresses: [198.18.20.11/24]}}
free_bytes:
  description: Bytes available to an unprivileged writer in O(tree_dir) (or its nearest existing parent).
  returned: always
  type: int
  sample: 10737418240
root_exists:
  description: Names of the entries of O(tree_dir), each mapped to true.
  returned: always
  type: dict
  sample: {web: true}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _host


def main():
    module = AnsibleModule(
        argument_spec=dict(config_dir=dict(type='path', required=True), tree_dir=dict(type='path', required=True)),
        supports_check_mode=True,
    )
    module.exit_json(**_host.target_guests(module.params['config_dir'], module.params['tree_dir']))


if __name__ == '__main__':
    main()
