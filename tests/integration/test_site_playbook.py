"""playbooks/site.yml: a host that fails stops the rollout, so no later batch is touched.

Three inventory hosts, all this machine over connection local, each with its own state directories, cgroup
parent and env file (nothing of the real host's). Host 2 carries a broken guest list: host 1 is converged,
host 2 fails in validation, host 3 never starts.
"""
import json
import os
import secrets
import subprocess

import pytest
import yaml

from ansible_collections.vserver.core.plugins.module_utils import _common, _runtime, _mgr_guests
from ansible_helpers import VENV_BIN, ansible_env
from helpers import TOP

pytestmark = pytest.mark.slow


def host_vars(base, name, guests):
    root = os.path.join(base, name)
    return {
        'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3', 'ansible_become': False,
        'vserver_config_dir': root + '/etc', 'vserver_run_dir': root + '/run', 'vserver_tree_dir': root + '/trees',
        'vserver_log_dir': root + '/log', 'vserver_cgroup_parent': 'vstest-site-%s-%s' % (name, secrets.token_hex(3)),
        'host_env_file': root + '/vserver.env', 'host_install_packages': False, 'host_cli_install': False,
        'host_service': 'none', 'vserver_guests': guests,
    }


def test_a_failed_host_stops_the_rollout(tmp_path):
    base = str(tmp_path)
    inventory = {'vserver_hosts': {'hosts': {
        'site1': host_vars(base, 'site1', [{'name': 'st-one', 'xid': 921, 'stop_timeout': 2}]),
        'site2': host_vars(base, 'site2', [{'name': 'st-two', 'xid': 922}, {'name': 'Bad/Name'}]),
        'site3': host_vars(base, 'site3', [{'name': 'st-three', 'xid': 923, 'stop_timeout': 2}]),
    }}}
    inv = tmp_path / 'inventory.yml'
    inv.write_text(yaml.safe_dump(inventory))
    hosts = inventory['vserver_hosts']['hosts']
    paths = {name: _common.Paths(config_dir=v['vserver_config_dir'], run_dir=v['vserver_run_dir'],
                                 tree_dir=v['vserver_tree_dir'], log_dir=v['vserver_log_dir'],
                                 cgroup_parent=v['vserver_cgroup_parent']) for name, v in hosts.items()}
    try:
        proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-playbook'), '-i', str(inv),
                               os.path.join(TOP, 'playbooks', 'site.yml')],
                              env=ansible_env(), capture_output=True, text=True, timeout=300, check=False,
                              stdin=subprocess.DEVNULL)
        data = json.loads(proc.stdout)
        assert proc.returncode != 0
        stats = data['stats']
        # host 1 converged, host 2 failed, host 3 was never reached
        assert stats['site1']['failures'] == 0 and stats['site1']['changed'] > 0
        assert stats['site2']['failures'] == 1
        assert 'site3' not in stats
        assert _runtime.Runtime(paths['site1'], 'st-one').state() == 'running'
        failed = [res.get('msg', '') for play in data['plays'] for task in play['tasks']
                  for host, res in task['hosts'].items() if host == 'site2' and res.get('failed')]
        assert any('Bad/Name' in msg for msg in failed), failed
        # nothing was written for the failed host's guests, nor anything at all for host 3
        assert not os.path.exists(paths['site2'].config_file('st-two'))
        assert not os.path.exists(os.path.join(base, 'site3'))
    finally:
        for name in hosts:
            _mgr_guests.ensure(paths[name], {'guests': [], 'prune': True, 'purge_pruned': True})


@pytest.mark.parametrize('given, missing', [
    ({'migrate_guest': 'mg-web', 'migrate_target': 'mig2'}, ['migrate_source']),
    ({'migrate_guest': 'mg-web', 'migrate_source': 'mig1', 'migrate_target': ''}, ['migrate_target']),
    ({'migrate_source': 'mig1', 'migrate_target': 'mig2'}, ['migrate_guest']),
    # the names before the rename (from/to are Python keywords) are no longer read: all three are missing
    ({'guest': 'mg-web', 'from': 'mig1', 'to': 'mig2'}, ['migrate_guest', 'migrate_source', 'migrate_target']),
])
def test_migrate_names_the_missing_variable(tmp_path, given, missing):
    """migrate.yml stops in its first play, naming the variable the request lacks; no host is touched."""
    base = str(tmp_path)
    inventory = {'vserver_hosts': {'hosts': {name: host_vars(base, name, []) for name in ('mig1', 'mig2')}}}
    inv = tmp_path / 'inventory.yml'
    inv.write_text(yaml.safe_dump(inventory))
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-playbook'), '-i', str(inv),
                           os.path.join(TOP, 'playbooks', 'migrate.yml'), '-e', json.dumps(given)],
                          env=ansible_env(), capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc.stdout[-3000:]
    data = json.loads(proc.stdout)
    # only the check play ran, and only on localhost
    assert [play['play']['name'] for play in data['plays']] == ['Check the migration request']
    assert set(data['stats']) == {'localhost'} and data['stats']['localhost']['failures'] == 1, data['stats']
    failed = [res for task in data['plays'][0]['tasks'] for res in task['hosts'].values() if res.get('failed')]
    msgs = [item.get('msg', '') for res in failed for item in res.get('results', [res]) if item.get('failed')]
    assert len(msgs) == len(missing), msgs
    for msg, name in zip(msgs, missing):
        assert msg.startswith('migrate.yml needs -e %s=NAME' % name) and msg.endswith('%s is missing or empty' % name)
    assert not os.path.exists(os.path.join(base, 'mig1')) and not os.path.exists(os.path.join(base, 'mig2'))
