"""A root password hash given to the guests module or the guest role never shows in results, output or logs."""
import os
import secrets
import subprocess

import pytest
import yaml

from ansible_collections.vserver.core.plugins.module_utils import _mgr_guests
from ansible_helpers import VENV_BIN, ansible_env, path_vars

pytestmark = pytest.mark.slow


def _run(tmp_path, play):
    book = tmp_path / 'play.yml'
    book.write_text(yaml.safe_dump([play]))
    log = tmp_path / 'ansible.log'
    env = dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK='default', ANSIBLE_LOG_PATH=str(log))
    del env['ANSIBLE_CALLBACK_PLUGINS']
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', '-vvv',
                           '--diff', str(book)], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    return proc, proc.stdout + proc.stderr + (log.read_text() if log.exists() else '')


def _shadow(paths, name):
    with open(os.path.join(paths.tree_dir, name, 'etc', 'shadow')) as handle:
        return handle.read()


def test_root_password_hash_is_never_shown(host_paths, tmp_path):
    hashes = {name: '$6$%s$%s' % (secrets.token_hex(4), secrets.token_hex(20)) for name in ('sec-mod', 'sec-role')}
    module_play = {'hosts': 'localhost', 'gather_facts': False, 'tasks': [{
        'name': 'guests module', 'vserver.core.guests': dict(
            path_vars(host_paths), guests=[{'name': 'sec-mod', 'xid': 941, 'state': 'stopped',
                                            'root_password_hash': hashes['sec-mod']}])}]}
    role_vars = {'vserver_%s' % key: value for key, value in path_vars(host_paths).items()}
    role_vars['vserver_guests'] = [{'name': 'sec-role', 'xid': 942, 'state': 'stopped',
                                    'root_password_hash': hashes['sec-role']}]
    role_play = {'hosts': 'localhost', 'gather_facts': False, 'vars': role_vars,
                 'roles': [{'role': 'vserver.core.guest'}]}
    try:
        for play, name in ((module_play, 'sec-mod'), (role_play, 'sec-role')):
            proc, seen = _run(tmp_path, play)
            assert proc.returncode == 0, seen[-4000:]
            assert 'root:%s:' % hashes[name] in _shadow(host_paths, name)    # it was applied...
            assert hashes[name] not in seen                                  # ...and never shown
            assert hashes[name][-20:] not in seen
    finally:
        _mgr_guests.ensure(host_paths, {'guests': [], 'prune': True, 'purge_pruned': True})
