# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection.

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r'''
options:
  config_dir:
    description:
      - Directory holding one JSON config document per guest (C(NAME.json)) and the host lock (C(.lock)).
      - Defaults to E(VSERVER_CONFIG_DIR) if set, else that variable in C(/etc/default/vserver) (the host role writes it), else C(/etc/vservers).
    type: path
  run_dir:
    description:
      - Directory for runtime state (C(NAME/state.json), the network namespace handle C(NAME/netns)).
      - Defaults to E(VSERVER_RUN_DIR) if set, else that variable in C(/etc/default/vserver) (the host role writes it), else C(/run/vservers).
    type: path
  tree_dir:
    description:
      - Directory under which guest trees are created when a guest has no explicit root.
      - Keep it mode C(0700), because a guest's root can plant setuid files in its tree, which an unprivileged host
        user must not be able to reach.
      - Defaults to E(VSERVER_TREE_DIR) if set, else that variable in C(/etc/default/vserver) (the host role writes it), else C(/var/lib/vservers).
    type: path
  log_dir:
    description:
      - Directory for the guests' init logs (C(NAME.log)).
      - Defaults to E(VSERVER_LOG_DIR) if set, else that variable in C(/etc/default/vserver) (the host role writes it), else C(/var/log/vservers).
    type: path
  cgroup_parent:
    description:
      - Cgroup (relative to each hierarchy's root) under which every guest gets its own cgroup.
      - Hosts sharing one kernel (test fleets) must use different parents.
      - Defaults to E(VSERVER_CGROUP_PARENT) if set, else that variable in C(/etc/default/vserver) (the host role writes it), else C(vservers).
    type: str
'''
