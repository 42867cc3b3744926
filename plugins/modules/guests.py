#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: guests
short_description: Bring many guests of a host to their desired state in one task
version_added: 0.1.0
description:
  - Takes a list of guests and, for each one, does what M(vserver.core.context), M(vserver.core.capabilities),
    M(vserver.core.limits) and M(vserver.core.address) would do, in that order, then sets its run state and its
    autostart mark. It calls the very same managers as those modules, in one process, so a host with many guests
    converges in one task instead of one task per option per guest.
  - Used by the C(vserver.core.guest) role.
  - Unlike the single-purpose modules, a guest entry is the guest's whole desired state. Its C(capabilities) and
    C(limits) mappings are whole sections - a key removed from them is lifted (the limit goes back to the
    kernel default, the capability setting to the default) - and C(addresses) is the guest's whole address list.
    A guest entry without C(capabilities) or C(limits) at all leaves that section as it is; give an empty
    mapping to lift everything in it.
  - A guest whose capabilities or other start-time settings changed while it runs is reported in
    RV(restart_required); it is restarted only with O(allow_restart=true).
  - Guests configured on the host but missing from O(guests) are left alone unless O(prune=true).
  - A guest that fails does not stop the others. Every guest of the list (and every pruned guest) is tried; a
    failed one is reported in RV(guests) with C(failed) and C(msg) and the actions done before the failure, and
    the task fails at the end with a message naming each failed guest. A bad list (unknown key, bad value) still
    fails before anything is touched.
  - Files are written into trees completely or not at all; clones are made in a sibling C(.NAME.build-XXXXXXXX)
    of the root and renamed onto it when complete.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux 5.6 or newer (time namespace; C(pidfd_open) 5.3), run as root
  - cgroup v1 (hybrid) or cgroup v2 mounted on the host
  - util-linux (C(mount), C(nsenter); C(losetup), C(blkid) for loop disk limits)
  - iproute2 (C(ip)) for guests with addresses
  - busybox-static for the C(busybox) template
  - e2fsprogs, xfsprogs or btrfs-progs for disk limits (see M(vserver.core.limits))
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  guests:
    description:
      - The guests. Each item is a dict with C(name) (required) and any of C(xid), C(root), C(template)
        (C(busybox), C(none) for an existing tree, C(clone) with C(clone_from)), C(hostname), C(domainname),
        C(init), C(stop_signal), C(stop_timeout), C(lxcfs), C(state) (C(started) default, C(stopped), C(present), C(frozen),
        C(absent)), C(purge) (with C(state=absent), remove the tree, log and boot mark), C(autostart) (bool, the
        boot mark C(CONFIG_DIR/autostart/NAME)), C(capabilities) (options of M(vserver.core.capabilities)), C(limits)
        (options of M(vserver.core.limits)), C(addresses) (a list of CIDRs) and C(network) (further options of
        M(vserver.core.address)), C(files) (guest path to content, or to a dict with C(content) and C(mode),
        written atomically into the tree without following any symlink), C(root_password_hash) (the root entry of
        the guest's C(/etc/shadow); C(!) locks it) and C(root_authorized_keys) (a list, written to
        C(/root/.ssh/authorized_keys)), and C(config) (a whole config document brought from another host, used by
        cold migration).
      - C(clone) copies the source guest's tree, hardlinking its unified (immutable, shared) files as
        util-vserver's clone did; everything else is copied. The source is read by file descriptor without
        following any symlink; a running source is frozen for the copy; the shared files are linked while every
        guest is frozen for an instant (see docs/security.md).
      - A managed file is read only when it is a regular file (never waiting on a FIFO) of at most 4 MiB; a
        symlink at a directory of its path (for example C(/root/.ssh)) fails that guest only.
    type: list
    elements: dict
    required: true
  allow_restart:
    description:
      - Restart a running guest when a change needs it. Without it such guests are only reported.
    type: bool
    default: false
  prune:
    description:
      - Remove (stop, drop config and runtime state) every guest configured on the host that is not in O(guests).
    type: bool
    default: false
  purge_pruned:
    description:
      - With O(prune=true), also delete the pruned guests' trees.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Deploy the host's guests
  vserver.core.guests:
    guests:
      - name: web
        xid: 101
        hostname: www.example.org
        capabilities: {ccaps: [raw_icmp]}
        limits: {memory: 512M, nproc: 256}
        addresses: [198.18.20.11/24]
        autostart: true
      - name: web2
        template: clone
        clone_from: web
        state: stopped
'''

RETURN = r'''
guests:
  description:
    - Per guest, whether it changed, what was done and whether it waits for a restart.
    - A guest that failed also has C(failed=true) and C(msg); its C(actions) are those done before the failure.
  returned: always
  type: dict
  sample: {web: {changed: true, actions: [create config, start], restart_required: false},
           db: {changed: false, actions: [], restart_required: false, failed: true, msg: "root /srv/db does not exist"}}
actions:
  description: Every action, prefixed with the guest name.
  returned: always
  type: list
  elements: str
  sample: ["web: create config", "web: start"]
restart_required:
  description: Names of running guests whose changes take effect only after a restart.
  returned: always
  type: list
  elements: str
  sample: [db]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _mgr_guests


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(
            guests=dict(type='list', elements='dict', required=True),
            allow_restart=dict(type='bool', default=False),
            prune=dict(type='bool', default=False),
            purge_pruned=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    _ansible.hide_nested(module, 'guests', 'root_password_hash')
    _ansible.run(module, lambda: _mgr_guests.ensure(_ansible.paths_from(module), module.params, module.check_mode))


if __name__ == '__main__':
    main()
