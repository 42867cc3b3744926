"""The context and context_info modules through ansible-playbook: idempotence, check mode, diff, bad input."""
import os

import pytest
import yaml

from ansible_collections.vserver.core.plugins.module_utils import _runtime
from helpers import guest_sh
from ansible_helpers import changed_count, path_vars, run_playbook, task_results

pytestmark = pytest.mark.cgroup

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/vserver.core.all: {}
  tasks:
    - name: guests
      vserver.core.context:
        name: "{{ item.name }}"
        xid: "{{ item.xid | default(omit) }}"
        hostname: "{{ item.hostname | default(omit) }}"
        state: "{{ item.state | default('started') }}"
        stop_signal: SIGKILL
        config_dir: "{{ config_dir }}"
        run_dir: "{{ run_dir }}"
        tree_dir: "{{ tree_dir }}"
        log_dir: "{{ log_dir }}"
        cgroup_parent: "{{ cgroup_parent }}"
      loop: "{{ guests }}"
    - name: info
      vserver.core.context_info:
        config_dir: "{{ config_dir }}"
        run_dir: "{{ run_dir }}"
        cgroup_parent: "{{ cgroup_parent }}"
      register: info
"""


@pytest.fixture
def playbook(tmp_path):
    path = tmp_path / 'play.yml'
    path.write_text(PLAYBOOK.replace('  module_defaults:\n    group/vserver.core.all: {}\n', ''))
    return path


def test_run_twice_and_check_mode(host_paths, playbook):
    guests = [{'name': 'pb-one', 'xid': 300, 'hostname': 'one.test'}, {'name': 'pb-two'},
              {'name': 'pb-three', 'state': 'present'}]
    evars = dict(path_vars(host_paths), guests=guests)

    # check mode first: reports the changes, makes none
    rc, data = run_playbook(playbook, evars, check=True, diff=True)
    assert rc == 0
    results = task_results(data)
    assert [r['changed'] for name, r in results if name == 'guests'] == [True, True, True]
    assert 'start' in results[0][1]['actions'] and 'create config' in results[0][1]['actions']
    assert results[0][1]['diff']['after']['state'] == 'started'
    assert not os.path.exists(host_paths.config_dir) or not os.listdir(host_paths.config_dir) or \
        os.listdir(host_paths.config_dir) == ['.lock']
    assert not os.path.exists(host_paths.tree_dir)

    rc, data = run_playbook(playbook, evars, diff=True)
    assert rc == 0, data
    results = dict((r['item']['name'], r) for name, r in task_results(data) if name == 'guests')
    assert all(r['changed'] for r in results.values())
    assert results['pb-one']['guest']['xid'] == 300 and results['pb-one']['guest']['state'] == 'running'
    assert results['pb-two']['guest']['xid'] == 2        # lowest free id
    assert results['pb-three']['guest']['state'] == 'stopped'
    assert results['pb-one']['diff']['before'] == {'state': 'absent'}
    info = [r for name, r in task_results(data) if name == 'info'][0]
    states = {g['name']: g['state'] for g in info['guests']}
    assert states == {'pb-one': 'running', 'pb-two': 'running', 'pb-three': 'stopped'}
    pid = _runtime.Runtime(host_paths, 'pb-one').init_pid()
    assert any(p['pid'] == pid and p['xid'] == 300 for p in info['processes'])

    rc, data = run_playbook(playbook, evars)
    assert rc == 0 and changed_count(data) == 0
    assert _runtime.Runtime(host_paths, 'pb-one').init_pid() == pid      # not restarted

    # a live change: the host name of a running guest, no restart
    guests[0]['hostname'] = 'renamed.test'
    rc, data = run_playbook(playbook, dict(evars, guests=guests))
    assert rc == 0
    assert _runtime.Runtime(host_paths, 'pb-one').init_pid() == pid
    assert guest_sh(host_paths, 'pb-one', 'hostname').stdout.strip() == 'renamed.test'
    results = dict((r['item']['name'], r) for name, r in task_results(data) if name == 'guests')
    assert results['pb-one']['actions'] == ['update config', 'set hostname']

    # stop then absent with purge: nothing left
    for g in guests:
        g['state'] = 'absent'
    rc, data = run_playbook(playbook, dict(evars, guests=guests))
    assert rc == 0
    assert [f for f in os.listdir(host_paths.config_dir) if f.endswith('.json')] == []


BAD = [
    ({'name': 'a/b'}, 'name'),
    ({'name': '..'}, 'name'),
    ({'name': 'Upper'}, 'name'),
    ({'name': 'with space'}, 'name'),
    ({'name': 'x' * 64}, 'name'),
    ({'name': 'ok-xid0', 'xid': 0}, 'xid'),
    ({'name': 'ok-xid1', 'xid': 1}, 'xid'),
    ({'name': 'ok-xidbig', 'xid': 49152}, 'xid'),
    ({'name': 'ok-taken', 'xid': 'TAKEN'}, 'xid'),
    ({'name': 'ok-notree', 'template': 'none', 'root': '/nonexistent/tree'}, 'root'),
]


@pytest.mark.parametrize('params,field', BAD, ids=[str(p) for p, dummy in BAD])
def test_bad_input_leaves_nothing(host_paths, make_guest, tmp_path, params, field):
    if params.get('xid') == 'TAKEN':
        make_guest('holder', xid=777)
        params = dict(params, xid=777)
    before_cfg = sorted(os.listdir(host_paths.config_dir)) if os.path.isdir(host_paths.config_dir) else []
    before_trees = sorted(os.listdir(host_paths.tree_dir)) if os.path.isdir(host_paths.tree_dir) else []
    task = dict(params, state='started', **path_vars(host_paths))
    play = tmp_path / 'bad.yml'
    play.write_text(yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False,
                                     'tasks': [{'name': 'bad', 'vserver.core.context': task}]}]))
    rc, data = run_playbook(play)
    assert rc != 0
    res = task_results(data)[0][1]
    assert res.get('failed')
    assert field in res['msg'] and res.get('field') == field, res['msg']
    after_cfg = sorted(os.listdir(host_paths.config_dir)) if os.path.isdir(host_paths.config_dir) else []
    assert [f for f in after_cfg if f != '.lock'] == [f for f in before_cfg if f != '.lock']
    after_trees = sorted(os.listdir(host_paths.tree_dir)) if os.path.isdir(host_paths.tree_dir) else []
    assert after_trees == before_trees
    group = _runtime.Runtime(host_paths, params['name'] if '/' not in params['name'] else 'x').group
    assert not group.exists()


def test_unknown_state_is_refused(host_paths, tmp_path):
    play = tmp_path / 'bad.yml'
    play.write_text(yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'name': 'bad', 'vserver.core.context': dict(name='ok', state='running', **path_vars(host_paths))}]}]))
    rc, data = run_playbook(play)
    res = task_results(data)[0][1]
    assert rc != 0 and 'state' in res['msg'] and 'started' in res['msg']
    assert not os.path.exists(host_paths.config_file('ok'))
