#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: _host_probe
short_description: One read-only look at what the host role manages (private to the role)
version_added: 0.1.0
description:
  - Private to the C(vserver.core.host) role, which calls it; its options may change without notice.
  - Says which packages are missing, which directories are not as wanted, what the env file holds, the checksum of
    the installed command bundle, which links are not the command's, and the state of the guest bridge, so an
    idempotent run of the role costs one task instead of one per item. Changes nothing.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node; C(dpkg-query); iproute2 (C(ip)) when O(bridge) is given
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.INFO_MODULE
options:
  packages:
    description: Packages that must be installed.
    type: list
    elements: str
    default: []
  dirs:
    description: Directories, each a dict with C(path) and C(mode) (octal string), owned by root.
    type: list
    elements: dict
    default: []
  env_file:
    description: The host's defaults file.
    type: path
    required: true
  bundle:
    description: The installed command bundle (a tar file).
    type: path
    required: true
  installed:
    description: Files that exist once the command is installed.
    type: list
    elements: path
    default: []
  links:
    description: Links into the PATH, each a dict with C(src) and C(dest).
    type: list
    elements: dict
    default: []
  bridge:
    description: The guest bridge (empty for none).
    type: str
    default: ''
'''

EXAMPLES = r'''
- name: Look at the host
  vserver.core._host_probe:
    packages: [busybox-static, iproute2]
    dirs: [{path: /etc/vservers, mode: '0755'}]
    env_file: /etc/default/vserver
    bundle: /usr/local/lib/vserver-core/vserver-core-cli.tar
  register: probe
'''

RETURN = r'''
systemd:
  description: The host runs systemd.
  returned: always
  type: bool
  sample: true
missing_packages:
  description: O(packages) not installed.
  returned: always
  type: list
  elements: str
  sample: [busybox-static]
dirs_bad:
  description: Paths of O(dirs) that are missing, not directories, of another mode or not owned by root.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/vservers]
env_content:
  description: The content of O(env_file), null when it cannot be read.
  returned: always
  type: str
  sample: "VSERVER_CONFIG_DIR=/etc/vservers\n"
bundle_sha1:
  description: The SHA-1 of O(bundle), null when it cannot be read.
  returned: always
  type: str
  sample: 0b1c7ae1c3d54a6f0e4f8f4a5ad3c26c8bb4e2b1
installed_ok:
  description: Every file of O(installed) exists.
  returned: always
  type: bool
  sample: true
links_bad:
  description: C(dest) of the O(links) that are not links to their C(src).
  returned: always
  type: list
  elements: str
  sample: [/usr/local/sbin/vserver]
bridge:
  description: Whether O(bridge) exists, is up, and its addresses.
  returned: always
  type: dict
  sample: {exists: true, up: true, addrs: [198.18.0.1/24]}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _host


def main():
    module = AnsibleModule(
        argument_spec=dict(
            packages=dict(type='list', elements='str', default=[]),
            dirs=dict(type='list', elements='dict', default=[]),
            env_file=dict(type='path', required=True),
            bundle=dict(type='path', required=True),
            installed=dict(type='list', elements='path', default=[]),
            links=dict(type='list', elements='dict', default=[]),
            bridge=dict(type='str', default=''),
        ),
        supports_check_mode=True,
    )
    module.exit_json(**_host.probe(module.params))


if __name__ == '__main__':
    main()
