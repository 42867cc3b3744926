"""The managed-node Python floor (3.9): the runtime works on 3.9 through the command and a module; on 3.8 the
command, the supervisor and a module each print one clear message, exit non-zero and leave the guest untouched.
Uses pyenv's interpreters (this machine's); a test whose interpreter is missing is skipped, naming it."""
import json
import os
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime
from ansible_helpers import path_vars, run_playbook, task_results
from helpers import TOP, VSERVER, env_for, vserver


PYENV = os.path.expanduser('~/.pyenv/versions')
PY39 = os.path.join(PYENV, '3.9.18', 'bin', 'python')
PY38 = os.path.join(PYENV, '3.8.18', 'bin', 'python')
SUPERVISE = os.path.join(TOP, 'roles', 'host', 'files', 'vserver_supervise.py')

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: guest
      vserver.core.context:
        name: "{{ name }}"
        state: "{{ state }}"
        stop_signal: SIGKILL
        config_dir: "{{ config_dir }}"
        run_dir: "{{ run_dir }}"
        tree_dir: "{{ tree_dir }}"
        log_dir: "{{ log_dir }}"
        cgroup_parent: "{{ cgroup_parent }}"
"""


def _need(python):
    if not os.access(python, os.X_OK):
        pytest.skip('%s is not installed (pyenv)' % python)


def _run(python, argv, paths):
    return subprocess.run([python] + argv, env=env_for(paths), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def _module(tmp_path, paths, python, name, state):
    play = tmp_path / 'play.yml'
    play.write_text(PLAYBOOK)
    evars = dict(path_vars(paths), name=name, state=state, ansible_python_interpreter=python)
    rc, data = run_playbook(play, evars)
    return rc, task_results(data)[0][1]


def _untouched(paths, name):
    """Stopped, and no runtime state, cgroup or log written for it."""
    assert vserver(paths, name, 'status').returncode == 3
    assert not os.path.exists(os.path.join(paths.run_dir, name))
    assert not os.path.exists(os.path.join(paths.log_dir, name + '.log'))
    assert not _runtime.Runtime(paths, name).leftovers()


def test_runtime_on_python_39(host_paths, make_guest, tmp_path):
    _need(PY39)
    make_guest('py39', stop_signal='SIGKILL')
    rc, res = _module(tmp_path, host_paths, PY39, 'py39', 'started')
    assert rc == 0 and res['changed'], res
    assert vserver(host_paths, 'py39', 'status').returncode == 0
    out = _run(PY39, [VSERVER, 'py39', 'exec', 'sh', '-c', 'hostname; exit 7'], host_paths)
    assert out.returncode == 7 and out.stdout.split() == ['py39'], out.stderr
    out = _run(PY39, [VSERVER, 'py39', 'stop'], host_paths)
    assert out.returncode == 0, out.stderr
    out = _run(PY39, [VSERVER, 'py39', 'start'], host_paths)
    assert out.returncode == 0, out.stderr
    rc, res = _module(tmp_path, host_paths, PY39, 'py39', 'stopped')
    assert rc == 0 and res['changed'], res
    assert vserver(host_paths, 'py39', 'status').returncode == 3


def test_python_38_is_refused_clearly(host_paths, make_guest, tmp_path):
    _need(PY38)
    make_guest('py38', stop_signal='SIGKILL')
    for argv, prog in (([VSERVER, 'py38', 'start'], 'vserver'), ([VSERVER, 'py38', 'exec', 'true'], 'vserver'),
                       ([SUPERVISE, '--once'], 'vserver-supervise')):
        out = _run(PY38, argv, host_paths)
        assert out.returncode == 1 and out.stdout == '', (argv, out.stdout)
        assert out.stderr == '%s: needs Python 3.9 or newer; %s is Python 3.8.18\n' % (prog, PY38), out.stderr
        _untouched(host_paths, 'py38')
    os.makedirs(os.path.join(host_paths.config_dir, 'autostart'), exist_ok=True)
    open(os.path.join(host_paths.config_dir, 'autostart', 'py38'), 'w').close()
    out = _run(PY38, [SUPERVISE, '--once'], host_paths)   # a marked guest is not started either
    assert out.returncode == 1 and 'needs Python 3.9' in out.stderr
    _untouched(host_paths, 'py38')
    rc, res = _module(tmp_path, host_paths, PY38, 'py38', 'started')
    assert rc != 0 and res.get('failed'), res
    assert res['msg'].startswith('vserver.core needs Python 3.9 or newer on the managed node; %s is Python 3.8.18'
                                 % PY38), res
    assert 'Traceback' not in json.dumps(res)
    _untouched(host_paths, 'py38')
