#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: _guest_bootstrap
short_description: Build the Debian and tarball trees of the guest role (private to the role)
version_added: 0.1.0
description:
  - Private to the C(vserver.core.guest) role, which calls it; its options may change without notice.
  - O(mode=plan) checks every request of O(guests) (names, tool, suite, variant, components, packages, mirror,
    root, timeout), fills in the mirror of those without one from the host's apt sources (one-line and deb822
    files) and says which trees need a build. It writes nothing; a bad request fails the task naming the role
    variable it came from.
  - O(mode=build) makes the root of one request O(guest) a C(debootstrap) or C(mmdebstrap) tree unless it has one;
    O(mode=unpack) unpacks a tarball there. The tree is made in a temporary sibling C(PARENT/.BASE.bootstrap) and
    renamed onto the root only when the tool succeeded; on failure or timeout the tool's processes are killed,
    what is still mounted below the temporary directory is unmounted and the directory removed. A root that is
    neither absent, empty nor a tree with C(/etc) is refused. Two runs never build the same tree at once.
  - A build or unpack that fails does not fail the task; it returns RV(error), so the role converges the other
    guests first and fails at the end naming the trees that could not be made.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node, run as root
  - C(mmdebstrap) or C(debootstrap) for the Debian trees, C(tar) for tarballs
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
  mode:
    description:
      - C(plan) checks O(guests); C(build) and C(unpack) make the tree of O(guest).
    type: str
    required: true
    choices: [plan, build, unpack]
  guests:
    description:
      - With O(mode=plan), the bootstrap requests; each a dict with C(name), C(tool) (C(mmdebstrap) or
        C(debootstrap)), C(suite), C(variant), C(mirror) (empty for the host's), C(components), C(packages),
        C(root), C(timeout) (seconds) and C(fields) (key to the role variable the value came from, for messages).
    type: list
    elements: dict
  guest:
    description:
      - With O(mode=build), one request as returned by O(mode=plan).
      - With O(mode=unpack), a dict with C(name), C(root), C(tarball) (absolute paths) and optionally C(fields).
    type: dict
'''

EXAMPLES = r'''
- name: Check the Debian tree builds and find the mirror
  vserver.core._guest_bootstrap:
    mode: plan
    guests:
      - {name: web, tool: mmdebstrap, suite: bookworm, variant: minbase, mirror: '', components: [main],
         packages: [], root: /var/lib/vservers/web, timeout: 1800}
  register: plan

- name: Bootstrap the trees that need it
  vserver.core._guest_bootstrap:
    mode: build
    guest: "{{ item }}"
  loop: "{{ plan.guests | selectattr('build') | list }}"
'''

RETURN = r'''
guests:
  description: With O(mode=plan), the checked requests, each with C(build) (the tree needs a build) and, for a root
    that must not be written into, C(refused) (the message).
  returned: with mode plan
  type: list
  elements: dict
  sample: [{name: web, tool: mmdebstrap, mirror: "http://mirror.example.org/debian/", root: /var/lib/vservers/web,
            build: true}]
root:
  description: The guest's root.
  returned: with mode build or unpack, unless refused
  type: str
  sample: /var/lib/vservers/web
seconds:
  description: How long the tool ran.
  returned: with mode build or unpack, unless refused
  type: float
  sample: 95.2
error:
  description: Why the tree could not be made (the tool's last lines of output included); the tree is untouched.
  returned: when the build or unpack failed
  type: str
  sample: "guest web: mmdebstrap bookworm minbase from http://mirror.example.org/debian/ failed (exit status 1) after 3 s"
'''

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _bootstrap


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type='str', required=True, choices=['plan', 'build', 'unpack']),
            guests=dict(type='list', elements='dict'),
            guest=dict(type='dict'),
        ),
        required_if=[('mode', 'plan', ['guests']), ('mode', 'build', ['guest']), ('mode', 'unpack', ['guest'])],
        supports_check_mode=True,
    )
    mode = module.params['mode']
    if mode == 'plan':
        try:
            module.exit_json(**_bootstrap.plan(module.params['guests']))
        except _bootstrap.Refused as exc:
            module.fail_json(msg=str(exc))
    _bootstrap.stop_on_signals()
    try:
        if mode == 'build':
            out = _bootstrap.build(_bootstrap.check_request(module.params['guest']), module.check_mode)
        else:
            out = _bootstrap.unpack(module.params['guest'], module.check_mode)
    except (_bootstrap.Refused, _bootstrap.BuildFailed) as exc:
        out = {'changed': False, 'error': str(exc)}
    except Exception as exc:  # pylint: disable=broad-except  # one guest's tree: the role goes on with the others
        out = {'changed': False, 'error': 'guest_bootstrap: %s: %s\n%s'
               % (type(exc).__name__, exc, traceback.format_exc()[-2000:])}
    module.exit_json(**out)


if __name__ == '__main__':
    main()
