"""status.yml on localhost with private host roots: the fleet table carries the figures `vserver metrics` exposes
(context_info's metrics). Driven by ansible-playbook, so not in the cgroup v2 VM's fast selection (*playbook*)."""
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _limits
from ansible_helpers import run_playbook
from helpers import TOP
from test_metrics import LAYOUT

pytestmark = pytest.mark.cgroup


def _guest(make_guest, name, xid, limits=None, **extra):
    section = _limits.validate(limits or {}, layout=LAYOUT)
    return make_guest(name, xid=xid, start=True, limits=section, stop_timeout=1, stop_signal='SIGKILL', **extra)


def test_the_status_playbook_prints_the_figures(host_paths, make_guest, tmp_path):
    _guest(make_guest, 'vs18m-tab', 1807, {'memory': '64M'})
    make_guest('vs18m-off', xid=1808)
    table = tmp_path / 'status.txt'
    rc, data = run_playbook(os.path.join(TOP, 'playbooks', 'status.yml'), {
        'vserver_hosts_pattern': 'localhost', 'vserver_status_file': str(table), 'vserver_config_dir': host_paths.config_dir,
        'vserver_run_dir': host_paths.run_dir, 'vserver_tree_dir': host_paths.tree_dir, 'vserver_log_dir': host_paths.log_dir,
        'vserver_cgroup_parent': host_paths.cgroup_parent})
    assert rc == 0, data
    rows = [line.split() for line in table.read_text().splitlines()]
    assert rows[0] == ['HOST', 'NAME', 'XID', 'STATE', 'ADDRESSES', 'MEMORY', 'PROC', 'LIMIT', 'CPU', 'THROTTLED', 'OOM',
                       'UPTIME', 'NET_RX', 'NET_TX']
    table = {r[1]: r for r in rows[1:]}
    assert set(table) == {'vs18m-tab', 'vs18m-off'}
    running = table['vs18m-tab']
    assert running[2:4] == ['1807', 'running'] and running[7] == '64.0M' and running[10] == '0', running
    assert running[8].endswith('s') and running[11].startswith('0m') and running[12:] == ['0B', '0B'], running
    assert table['vs18m-off'][3] == 'stopped' and table['vs18m-off'][7:] == ['-'] * 7
