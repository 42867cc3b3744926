"""The guest role fails the play when the guests module fails for one guest, after converging the others.

The role registers the module's result with ``failed_when: false`` (to report tree build failures together with
the module's), which sets the registered ``failed`` to false: the role must still see the failure."""
import os
import subprocess

import pytest
import yaml

from ansible_collections.vserver.core.plugins.module_utils import _runtime, _mgr_guests
from ansible_helpers import VENV_BIN, ansible_env, path_vars

pytestmark = pytest.mark.slow


def test_a_guest_the_module_refuses_fails_the_role(host_paths, tmp_path):
    role_vars = {'vserver_%s' % key: value for key, value in path_vars(host_paths).items()}
    role_vars['vserver_guests'] = [
        {'name': 'rf-good', 'xid': 951, 'stop_timeout': 2},
        {'name': 'rf-bad', 'xid': 952, 'init': ['/nonexistent/init'], 'stop_timeout': 2},
    ]
    book = tmp_path / 'play.yml'
    book.write_text(yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'vars': role_vars,
                                     'roles': [{'role': 'vserver.core.guest'}]}]))
    env = dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK='default')
    del env['ANSIBLE_CALLBACK_PLUGINS']
    try:
        proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local',
                               str(book)], env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert 'rf-bad' in out and 'init /nonexistent/init does not exist' in out, out[-3000:]
        assert _runtime.Runtime(host_paths, 'rf-good').state() == 'running'   # the other guest was converged
    finally:
        _mgr_guests.ensure(host_paths, {'guests': [], 'prune': True, 'purge_pruned': True})
