# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A host root (config, runtime, trees, logs, cgroup parent, env file) or its built-in default, from the one place
the collection declares them (module_utils _common.DEFAULTS), so the roles and playbooks do not repeat them."""

from __future__ import annotations

DOCUMENTATION = r"""
name: host_path
short_description: A vserver.core host root, or its built-in default
version_added: 0.1.0
author: vserver.core contributors
description:
  - Returns the input when it is set (not null and not empty), else the built-in default of the host root named by
    O(key), the same default the modules and the C(vserver) command use.
  - The roles' path variables (C(host_config_dir), C(guest_tree_dir) and the like) default through it.
positional: _input, key
options:
  _input:
    description: The configured value; null or empty for the built-in default.
    type: raw
    required: true
  key:
    description:
      - Which root. C(env_file) is the host's defaults file the host role writes (C(/etc/default/vserver)).
    type: str
    required: true
    choices: [config_dir, run_dir, tree_dir, log_dir, cgroup_parent, env_file]
"""

EXAMPLES = r"""
- name: Where the guests' configs are, unless the inventory says otherwise
  ansible.builtin.set_fact:
    config_dir: "{{ vserver_config_dir | default(none) | vserver.core.host_path('config_dir') }}"
# vserver_config_dir undefined: /etc/vservers; vserver_config_dir=/srv/vservers/etc: /srv/vservers/etc
"""

RETURN = r"""
_value:
  description: The input when set, else the built-in default of O(key).
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.vserver.core.plugins.module_utils._common import DEFAULTS, DEFAULTS_FILE

BUILT_IN = dict(DEFAULTS, env_file=DEFAULTS_FILE)


def host_path(value, key):
    """See DOCUMENTATION."""
    if key not in BUILT_IN:
        raise AnsibleFilterError('host_path: key must be one of %s (got %r)' % (', '.join(BUILT_IN), key))
    if value is None or value == '':
        return BUILT_IN[key]
    return value


class FilterModule:
    """vserver.core filters."""

    def filters(self):
        return {'host_path': host_path}
