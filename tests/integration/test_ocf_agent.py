"""The Pacemaker resource agent ocf:vserver-core:guest (roles/host/files/ocf-guest) against a busybox guest on
this host: resource-agents' own ocf-tester passes, and each action is checked against the guest's real state
(its init in the kernel, not the agent's word). No cluster runs here: the actions are what Pacemaker calls."""
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime

from helpers import TOP

AGENT = os.path.join(TOP, 'roles', 'host', 'files', 'ocf-guest')
OCF_TESTER = shutil.which('ocf-tester') or '/usr/sbin/ocf-tester'
OCF_ROOT = '/usr/lib/ocf'

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(OCF_ROOT, 'lib', 'heartbeat', 'ocf-shellfuncs')),
                                reason='resource-agents is not installed (make apt)')


@pytest.fixture
def agent_dir():
    """The agent and a vserver wrapper (this checkout's bin/vserver) where ocf-tester's `su nobody` can read the
    agent (pytest's tmp_path is root-only)."""
    path = tempfile.mkdtemp(prefix='vs19-ocf-', dir='/tmp')
    os.chmod(path, 0o755)
    shutil.copy(AGENT, os.path.join(path, 'guest'))
    wrapper = os.path.join(path, 'vserver')
    with open(wrapper, 'w') as handle:
        handle.write('#!/bin/sh\nexec %s %s "$@"\n' % (sys.executable, os.path.join(TOP, 'bin', 'vserver')))
    for name in ('guest', 'vserver'):
        os.chmod(os.path.join(path, name), 0o755)
    yield path
    shutil.rmtree(path)


def _params(paths, name, agent_dir):
    return {'name': name, 'config_dir': paths.config_dir, 'run_dir': paths.run_dir, 'log_dir': paths.log_dir,
            'cgroup_parent': paths.cgroup_parent, 'vserver': os.path.join(agent_dir, 'vserver')}


def _action(agent_dir, action, params, **meta):
    env = {k: v for k, v in os.environ.items() if not k.startswith('VSERVER_')}
    env.update({'OCF_ROOT': OCF_ROOT, 'OCF_RESOURCE_INSTANCE': params['name'], '__OCF_ACTION': action})
    env.update(('OCF_RESKEY_' + k, v) for k, v in params.items())
    env.update(('OCF_RESKEY_CRM_meta_' + k, v) for k, v in meta.items())
    return subprocess.run([os.path.join(agent_dir, 'guest'), action], env=env, capture_output=True, text=True,
                          timeout=90, check=False)


@pytest.mark.slow
def test_ocf_tester_passes(host_paths, make_guest, agent_dir):
    make_guest('vs19-ocf', xid=1960, stop_signal='SIGKILL', stop_timeout=2)
    argv = [OCF_TESTER, '-n', 'vs19-ocf']
    for key, value in _params(host_paths, 'vs19-ocf', agent_dir).items():
        argv += ['-o', '%s=%s' % (key, value)]
    env = dict(os.environ, OCF_ROOT=OCF_ROOT)
    res = subprocess.run(argv + [os.path.join(agent_dir, 'guest')], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'passed all tests' in res.stdout, res.stdout
    assert 'does not support the migrate' not in res.stdout
    assert _runtime.Runtime(host_paths, 'vs19-ocf').state() == 'running'   # ocf-tester ends with migrate_from


def test_actions_against_the_kernel(host_paths, make_guest, agent_dir):
    make_guest('vs19-ocf2', xid=1961, stop_signal='SIGKILL', stop_timeout=2)
    params = _params(host_paths, 'vs19-ocf2', agent_dir)

    def state():  # a fresh Runtime each time: it reads the guest's runtime record once
        return _runtime.Runtime(host_paths, 'vs19-ocf2').state()
    assert _action(agent_dir, 'monitor', params).returncode == 7
    assert _action(agent_dir, 'migrate_from', params, migrate_source='node1').returncode == 0
    assert state() == 'running' and _action(agent_dir, 'monitor', params).returncode == 0
    assert _action(agent_dir, 'migrate_to', params, migrate_target='node2').returncode == 0
    assert state() == 'stopped'
    # a node without the shared storage mounted: the guest is unknown there, a probe says not running, a stop
    # succeeds (nothing to stop), a start fails naming the guest
    empty = dict(params, config_dir=os.path.join(os.path.dirname(host_paths.config_dir), 'unmounted'))
    assert _action(agent_dir, 'monitor', empty).returncode == 7
    assert _action(agent_dir, 'stop', empty).returncode == 0
    start = _action(agent_dir, 'start', empty)
    assert start.returncode == 1 and 'no such guest' in start.stderr + start.stdout
    # bad configuration: refused by validate-all and every action
    bad = _action(agent_dir, 'validate-all', dict(params, name='../etc'))
    assert bad.returncode == 6
    missing = _action(agent_dir, 'start', dict(params, vserver='/nonexistent/vserver'))
    assert missing.returncode == 5 and state() == 'stopped'


def test_agent_is_installed_mode_755():
    assert stat.S_IMODE(os.stat(AGENT).st_mode) == 0o755
