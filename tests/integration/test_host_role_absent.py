"""The host role removes what it installed (host_state: absent), seen on the real host.

Everything is private to the test: config/run/tree/log directories and the env file under tmp, the command under
a tmp prefix with tmp bin/sbin directories, a cgroup parent vstest-..., a bridge vst-br-XXXX (198.18.91.0/24),
a vserver-supervise started by the role (PID 1 here is not systemd: host_service supervise). Only the systemd
units cannot be seen here (test_systemd_host.py does that in a systemd container).
"""
import json
import os
import secrets
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _common, _lxcfs, _runtime, _mgr_guests
from ansible_helpers import changed_count, run_playbook
from conftest import stop_guests
from helpers import wait_for

pytestmark = pytest.mark.slow

PLAY = """
- name: The host role
  hosts: localhost
  gather_facts: false
  roles:
    - role: vserver.core.host
"""


def link_exists(name):
    return subprocess.run(['ip', 'link', 'show', 'dev', name], capture_output=True, timeout=30,
                          check=False).returncode == 0


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def supervisor_pid(paths):
    try:
        with open(os.path.join(paths.run_dir, '.supervise.pid')) as handle:
            return int(handle.read())
    except OSError:
        return None


def cgroup_dirs(top):
    """The test's cgroup parent (top level) in every mounted hierarchy."""
    layout = _cgroup.host_layout()
    roots = set(layout.v1.values()) | ({layout.unified} if layout.unified else set())
    return [os.path.join(root, top) for root in sorted(roots) if os.path.isdir(os.path.join(root, top))]


@pytest.fixture
def host(tmp_path):
    tag = secrets.token_hex(3)
    base = str(tmp_path)
    top = 'vstest-hr-' + tag
    evars = {
        'host_config_dir': base + '/etc', 'host_run_dir': base + '/run', 'host_tree_dir': base + '/trees',
        'host_log_dir': base + '/log', 'host_cgroup_parent': top + '/guests', 'host_env_file': base + '/vserver.env',
        'host_install_packages': False, 'host_cli_prefix': base + '/prefix', 'host_cli_bindir': base + '/bin',
        'host_cli_sbindir': base + '/sbin', 'host_bridge': 'vst-br-' + tag,
        'host_bridge_addresses': ['198.18.91.1/24'], 'host_service': 'supervise', 'host_supervise_start': True,
        'host_supervise_interval': 2,
        'host_lxcfs_dir': base + '/lxcfs',   # the supervisor's own LXCFS (--lxcfs), never the host's mount point
    }
    os.makedirs(base + '/bin')
    os.makedirs(base + '/sbin')
    paths = _common.Paths(config_dir=evars['host_config_dir'], run_dir=evars['host_run_dir'],
                          tree_dir=evars['host_tree_dir'], log_dir=evars['host_log_dir'],
                          cgroup_parent=evars['host_cgroup_parent'])
    playbook = tmp_path / 'host.yml'
    playbook.write_text(PLAY)
    box = {'vars': evars, 'paths': paths, 'play': playbook, 'top': top, 'dummy': 'vst-dm-' + tag}
    try:
        yield box
    finally:
        pid = supervisor_pid(paths)
        if pid and alive(pid):
            os.kill(pid, 15)
        stop_guests(paths)
        pid = lxcfs_pid(paths)
        if pid and alive(pid):
            os.kill(pid, 9)
        if _lxcfs.mount_id(evars['host_lxcfs_dir']) is not None:
            subprocess.run(['umount', '-l', evars['host_lxcfs_dir']], check=False, timeout=30)
        if os.path.isdir(paths.config_dir):
            _mgr_guests.ensure(paths, {'guests': [], 'prune': True, 'purge_pruned': True})
        for name in (box['dummy'], evars['host_bridge']):
            if link_exists(name):
                subprocess.run(['ip', 'link', 'del', 'dev', name], check=False, timeout=30)
        for path in cgroup_dirs(top):
            for sub in ('guests', ''):
                try:
                    os.rmdir(os.path.join(path, sub))
                except OSError:
                    pass


def lxcfs_pid(paths):
    try:
        with open(os.path.join(paths.run_dir, '.lxcfs.pid')) as handle:
            pid = int(handle.read().strip() or 0)
        with open('/proc/%d/comm' % pid) as handle:
            return pid if handle.read().strip() == 'lxcfs' else None
    except (OSError, ValueError):
        return None


def run(box, check=False, **extra):
    rc, data = run_playbook(box['play'], dict(box['vars'], **extra), check=check)
    failed = [(name, res.get('msg'), res.get('stderr', '')[-1500:])
              for name, res in task_results_of(data) if res.get('failed')]
    return rc, data, failed


def snapshot(box):
    """What the role installed, as seen on the host (files, links, bridge, supervisor, guests, cgroups)."""
    v, paths = box['vars'], box['paths']
    return {
        'links': sorted(n for d in (v['host_cli_bindir'], v['host_cli_sbindir']) for n in os.listdir(d)),
        'prefix': os.path.isdir(v['host_cli_prefix']),
        'env': os.path.isfile(v['host_env_file']),
        'bridge': link_exists(v['host_bridge']),
        'supervisor': bool(supervisor_pid(paths) and alive(supervisor_pid(paths))),
        'dirs': [d for d in (paths.config_dir, paths.tree_dir, paths.log_dir, paths.run_dir) if os.path.isdir(d)],
        'guests': sorted(n for n in os.listdir(paths.config_dir) if n.endswith('.json'))
        if os.path.isdir(paths.config_dir) else [],
        'running': sorted(n for n in ('hr-one', 'hr-two') if _runtime.Runtime(paths, n).state() == 'running'),
        'cgroups': cgroup_dirs(box['top']),
    }


def present_with_a_guest(box):
    rc, data, failed = run(box)
    assert rc == 0, failed
    paths = box['paths']
    _mgr_guests.ensure(paths, {'guests': [{'name': 'hr-one', 'xid': 951, 'template': 'busybox', 'stop_timeout': 2,
                                           'autostart': True, 'addresses': ['198.18.91.11/24'],
                                           'network': {'bridge': box['vars']['host_bridge']}}]})
    before = snapshot(box)
    assert before['links'] == ['vserver', 'vserver-supervise'] and before['prefix'] and before['env']
    assert before['bridge'] and before['supervisor'] and before['running'] == ['hr-one']
    assert before['guests'] == ['hr-one.json'] and len(before['dirs']) == 4 and before['cgroups']
    return before


def test_absent_refuses_guests_then_removes_them_and_everything_else(host):
    before = present_with_a_guest(host)
    paths = host['paths']
    supervisor = supervisor_pid(paths)
    lxcfs = wait_for(lambda: lxcfs_pid(paths), 15)   # vserver-supervise --lxcfs runs it (host_lxcfs, the default)
    assert lxcfs and _lxcfs.mount_id(host['vars']['host_lxcfs_dir']) is not None

    # guests configured and no consent: fails naming them, nothing touched
    rc, data, failed = run(host, host_state='absent')
    assert rc != 0 and any('hr-one' in (msg or '') and 'host_remove_guests' in (msg or '') for _t, msg, _e in failed)
    assert snapshot(host) == before

    # check mode: reports changes, touches nothing
    rc, data, failed = run(host, check=True, host_state='absent', host_remove_guests=True)
    assert rc == 0, failed
    assert changed_count(data) > 0
    assert snapshot(host) == before

    rc, data, failed = run(host, host_state='absent', host_remove_guests=True)
    assert rc == 0, failed
    after = snapshot(host)
    assert not alive(supervisor) and not os.path.exists(os.path.join(paths.run_dir, '.supervise.pid'))
    assert not alive(lxcfs) and _lxcfs.mount_id(host['vars']['host_lxcfs_dir']) is None   # its LXCFS ended too
    assert after['running'] == [] and after['guests'] == [] and not _mgr_guests.autostart_dir(paths) in after['dirs']
    assert after['links'] == [] and not after['prefix'] and not after['env'] and not after['bridge']
    assert after['cgroups'] == []
    # the guest's tree and log were not purged (no host_purge_guest_trees): their directories stay, the others go
    assert sorted(after['dirs']) == sorted([paths.tree_dir, paths.log_dir])
    # (the supervisor's own log and the log watchers' lock files stay with the guest logs they speak of)
    assert os.listdir(paths.tree_dir) == ['hr-one']
    assert sorted(os.listdir(paths.log_dir)) == ['.cap.lock', '.watch.lock', 'hr-one.log', 'supervise.log']
    kept = [res['msg'] for task_name, res in task_results_of(data) if task_name.endswith('Show what was kept')]
    assert kept and any(paths.tree_dir in line for line in kept[0]), kept

    # again: nothing to do
    rc, data, failed = run(host, host_state='absent', host_remove_guests=True)
    assert rc == 0 and changed_count(data) == 0, failed


def test_check_mode_without_guests_reports_what_the_run_does(host):
    """No guests: check mode's changed count is the real run's (also the command's prefix, emptied by the run)."""
    rc, data, failed = run(host)
    assert rc == 0, failed
    rc, checked, failed = run(host, check=True, host_state='absent')
    assert rc == 0, failed
    assert snapshot(host)['prefix'] and snapshot(host)['bridge'] and snapshot(host)['supervisor']
    rc, data, failed = run(host, host_state='absent')
    assert rc == 0, failed
    assert changed_count(checked) == changed_count(data) > 0

    def actions(result):
        return [res['actions'] for name, res in task_results_of(result) if 'kept' in res]  # the _host_remove tasks
    assert actions(checked) == actions(data) and any(a[-1].endswith('/prefix') for a in actions(data) if a)
    after = snapshot(host)
    assert not after['prefix'] and not after['bridge'] and not after['supervisor'] and after['dirs'] == []


def test_absent_purges_trees_on_request_and_keeps_a_bridge_in_use(host):
    present_with_a_guest(host)
    bridge, dummy = host['vars']['host_bridge'], host['dummy']
    # a link that is not a guest's (one end of a veth pair) attached to the bridge: the bridge must stay
    subprocess.run(['ip', 'link', 'add', dummy, 'type', 'veth', 'peer', 'name', dummy.replace('-dm-', '-dp-')],
                   check=True, timeout=30)
    subprocess.run(['ip', 'link', 'set', dummy, 'master', bridge], check=True, timeout=30)

    rc, data, failed = run(host, host_state='absent', host_remove_guests=True, host_purge_guest_trees=True)
    assert rc == 0, failed
    after = snapshot(host)
    assert after['guests'] == [] and after['dirs'] == [] and after['cgroups'] == []  # trees and logs purged
    assert after['bridge'] and link_exists(dummy)
    ports = json.loads(subprocess.run(['ip', '-j', 'link', 'show', 'master', bridge], capture_output=True, text=True,
                                      timeout=30, check=True).stdout)
    assert [p['ifname'] for p in ports] == [dummy]

    subprocess.run(['ip', 'link', 'del', 'dev', dummy], check=True, timeout=30)
    rc, data, failed = run(host, check=True, host_state='absent')
    assert rc == 0 and changed_count(data) == 1 and link_exists(bridge), failed
    rc, data, failed = run(host, host_state='absent')
    assert rc == 0 and changed_count(data) == 1, failed  # only the bridge, now free
    assert not link_exists(bridge)
    rc, data, failed = run(host, host_state='absent')
    assert rc == 0 and changed_count(data) == 0, failed


def task_results_of(data):
    return [(task['task']['name'], res) for play in data['plays'] for task in play['tasks']
            for res in task['hosts'].values()]
