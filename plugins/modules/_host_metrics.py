#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: _host_metrics
short_description: The guests' metrics writer of a host without systemd (private to the role)
version_added: 0.1.0
description:
  - Private to the C(vserver.core.host) role, which calls it on hosts where systemd is not PID 1 (a systemd timer
    does the job elsewhere); its options may change without notice.
  - With O(state=present), one detached C(vserver metrics --textfile DIR --every S) runs on the host with exactly
    these settings, its pid in C(RUN_DIR/.metrics.pid) and its messages appended to C(LOG_DIR/metrics.log). A
    writer with other settings is stopped (by that pid, after checking its command line; never by name) and
    started afresh. The textfile directory must exist.
  - With O(state=absent), no writer runs, and C(vserver.prom) is removed from O(textfile_dir) and from the
    directory of the writer that was stopped (node_exporter would serve stale figures forever).
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node, run as root; the C(vserver) command installed
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
  state:
    description: Whether the writer runs.
    type: str
    choices: [present, absent]
    default: present
  textfile_dir:
    description: node_exporter's textfile-collector directory (C(--collector.textfile.directory)).
    type: path
  interval:
    description: Seconds between two writes.
    type: int
    default: 15
  command:
    description: The installed C(vserver) command (a Python script).
    type: path
  python:
    description: The Python that runs it.
    type: path
  config_dir:
    description: The guests' config directory.
    type: path
  run_dir:
    description: The guests' runtime directory (the writer's pid file goes there).
    type: path
    required: true
  tree_dir:
    description: The guests' trees.
    type: path
  log_dir:
    description: The guests' log directory (the writer's log goes there).
    type: path
  cgroup_parent:
    description: The guests' parent cgroup.
    type: str
'''

EXAMPLES = r'''
- name: Write the guests' metrics every 15 s
  vserver.core._host_metrics:
    textfile_dir: /var/lib/prometheus/node-exporter
    interval: 15
    command: /usr/local/lib/vserver-core/ansible_collections/vserver/core/bin/vserver
    python: /usr/bin/python3
    config_dir: /etc/vservers
    run_dir: /run/vservers
    tree_dir: /var/lib/vservers
    log_dir: /var/log/vservers
    cgroup_parent: vservers
'''

RETURN = r'''
actions:
  description: What was done (or would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["start the metrics writer: /usr/local/lib/vserver-core/.../bin/vserver ... metrics --textfile /var/lib/prometheus/node-exporter --every 15"]
pid:
  description: The writer's pid (null in check mode when it would be started).
  returned: with O(state=present)
  type: int
  sample: 4242
'''

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _host
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='present', choices=['present', 'absent']),
            textfile_dir=dict(type='path'),
            interval=dict(type='int', default=15),
            command=dict(type='path'),
            python=dict(type='path'),
            config_dir=dict(type='path'),
            run_dir=dict(type='path', required=True),
            tree_dir=dict(type='path'),
            log_dir=dict(type='path'),
            cgroup_parent=dict(type='str'),
        ),
        required_if=[('state', 'present', ['textfile_dir', 'command', 'python', 'config_dir', 'tree_dir',
                                           'log_dir', 'cgroup_parent'])],
        supports_check_mode=True,
    )
    try:
        out = _host.metrics_writer(module.params, module.check_mode)
    except VServerError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    module.exit_json(**out)


if __name__ == '__main__':
    main()
