"""The unify module and the update playbook through ansible-playbook: check mode with exact counts, diff of
counts, idempotence, bad input, and the de-unify / upgrade / re-unify workflow on a running guest."""
import os

import yaml

from ansible_collections.vserver.core.plugins.module_utils import _config, _kernel as K, _runtime
from ansible_helpers import path_vars, run_playbook, task_results
from helpers import TOP
from test_unify import clear_immutable, inode, populate, sha, unify

PATHS = {key: '{{ %s }}' % key for key in ('config_dir', 'run_dir', 'tree_dir', 'log_dir', 'cgroup_parent')}


def play(tasks):
    return [{'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}]


def test_module_check_diff_idempotence_and_bad_input(host_paths, make_guest, tmp_path):
    docs = [make_guest(name) for name in ('ma', 'mb')]
    try:
        for doc in docs:
            populate(doc['root'], doc['name'])
        unify = dict(PATHS, guests=['ma', 'mb'])
        book = tmp_path / 'unify.yml'
        book.write_text(yaml.safe_dump(play([
            {'name': 'dry', 'vserver.core.unify': unify, 'check_mode': True, 'diff': True},
            {'name': 'real', 'vserver.core.unify': unify, 'diff': True},
            {'name': 'again', 'vserver.core.unify': unify},
            {'name': 'bad', 'vserver.core.unify': dict(unify, exclude=['/usr/../etc']), 'ignore_errors': True},
            {'name': 'bad method', 'vserver.core.unify': dict(unify, method='copy'), 'ignore_errors': True},
        ])))
        rc, data = run_playbook(book, path_vars(host_paths))
        res = dict(task_results(data))
        dry, real, again = res['dry'], res['real'], res['again']
        assert dry['changed'] is True and real['changed'] is True and again['changed'] is False
        assert dry['linked'] == real['linked'] > 0 and dry['bytes_saved'] == real['bytes_saved'] > 0
        assert dry['skipped_by_reason'] == real['skipped_by_reason'] and not real.get('skipped')
        assert again['linked'] == 0 and again['hashed'] == 0
        assert dry['diff']['before']['shared_paths'] == 0
        assert dry['diff']['after']['shared_paths'] == real['diff']['after']['shared_paths'] == real['shared_paths']
        assert dry['diff']['after']['guests']['ma'] == {'state': 'present', 'method': 'hardlink', 'protect': True}
        assert 'files' not in str(dry['diff'])  # counts, not file lists
        assert res['bad']['failed'] and res['bad']['field'] == 'exclude' and 'rsync-like' in res['bad']['msg']
        assert res['bad method']['failed'] and 'method' in res['bad method']['msg']
        pa, pb = (os.path.join(d['root'], 'usr/share/vstest/dup03') for d in docs)
        assert inode(pa) == inode(pb)
    finally:
        clear_immutable(host_paths.tree_dir)


def test_update_playbook_deunifies_updates_and_reunifies(host_paths, make_guest):
    a, b = make_guest('ua'), make_guest('ub')
    try:
        for doc in (a, b):
            populate(doc['root'], doc['name'])
        unify(host_paths, {})
        app = 'usr/share/vstest/dup09'
        pa, pb = (os.path.join(d['root'], app) for d in (a, b))
        b_sha = sha(pb)
        assert inode(pa) == inode(pb) and K.path_flags(pb) & K.FS_IMMUTABLE_FL
        _runtime.start(host_paths, a)
        try:
            extra = {'vserver_hosts_pattern': 'localhost', 'unify_update_guest': 'ua', 'unify_update_allow': True,
                     'unify_update_command': 'echo v2 >> /%s' % app,
                     'unify_update_cli': os.path.join(TOP, 'bin', 'vserver'),
                     'unify_update_paths': path_vars(host_paths)}
            rc, data = run_playbook(os.path.join(TOP, 'playbooks', 'unify_update.yml'), extra)
            res = dict(task_results(data))
            assert rc == 0, data
            assert res['De-unify the guest']['deunified'] > 0
            assert res['Run the update command inside the guest']['rc'] == 0
            again = res['Unify the guest again']
            assert again['changed'] is True and again['linked'] > 0 and again['sources'] == ['ub']
        finally:
            _runtime.stop(host_paths, dict(a, stop_timeout=1))
        with open(pa, 'rb') as handle:
            assert handle.read().endswith(b'v2\n')
        assert sha(pb) == b_sha and inode(pa) != inode(pb)
        assert not K.path_flags(pb) & K.FS_IMMUTABLE_FL  # shared with nobody now: b may upgrade it
        # everything the update did not touch is shared (and protected) again
        other = 'usr/share/vstest/dup10'
        assert inode(os.path.join(a['root'], other)) == inode(os.path.join(b['root'], other))
        assert K.path_flags(os.path.join(b['root'], other)) & K.FS_IMMUTABLE_FL
        assert _config.load(host_paths, 'ua')['unify']['state'] == 'present'
        # without consent nothing happens
        rc, data = run_playbook(os.path.join(TOP, 'playbooks', 'unify_update.yml'),
                                dict(extra, unify_update_allow=False))
        assert rc != 0 and inode(os.path.join(a['root'], other)) == inode(os.path.join(b['root'], other))
    finally:
        clear_immutable(host_paths.tree_dir)
