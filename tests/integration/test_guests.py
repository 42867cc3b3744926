"""vserver.core.guests manager (_mgr_guests): list validation, safe writes into guest trees, clone, check mode, and
the whole list converging then staying unchanged."""
import os
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _procfs, _runtime, _mgr_guests, _tree
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


@pytest.mark.parametrize('guests, field', [
    ('web', 'guests'),
    ([{'xid': 5}], 'guests[0]'),
    ([{'name': 'a', 'colour': 'red'}], 'guests[0]'),
    ([{'name': 'a'}, {'name': 'a'}], 'guests[1].name'),
    ([{'name': 'a', 'xid': 7}, {'name': 'b', 'xid': 7}], 'guests[1].xid'),
    ([{'name': 'a', 'state': 'running'}], 'guests[0].state'),
    ([{'name': 'a', 'template': 'debootstrap'}], 'guests[0].template'),
    ([{'name': 'a', 'template': 'clone'}], 'guests[0].clone_from'),
    ([{'name': 'a', 'files': {'etc/hosts': 'x'}}], 'guests[0].files'),
    ([{'name': 'a', 'files': {'/etc/../../x': 'x'}}], 'guests[0].files'),
    ([{'name': 'a', 'root_password_hash': 'a:b'}], 'guests[0].root_password_hash'),
    ([{'name': 'a', 'limits': ['512M']}], 'guests[0].limits'),
    ([{'name': 'Bad'}], 'guests[0].name'),
])
def test_bad_lists_fail_before_anything_is_written(host_paths, guests, field):
    with pytest.raises(VServerError) as exc:
        _mgr_guests.ensure(host_paths, {'guests': guests})
    assert exc.value.field == field
    assert not os.path.exists(host_paths.tree_dir)
    assert _config.names(host_paths) == []


def test_write_in_tree_never_follows_a_planted_symlink(tmp_path):
    root = tmp_path / 'tree'
    outside = tmp_path / 'outside'
    root.mkdir()
    outside.mkdir()
    (outside / 'hosts').write_text('host file\n')
    os.symlink(str(outside), str(root / 'etc'))  # the guest planted /etc -> a host directory
    with pytest.raises(VServerError):
        _tree.write_in_tree(str(root), '/etc/hosts', b'evil\n', 0o644)
    assert (outside / 'hosts').read_text() == 'host file\n'
    os.unlink(str(root / 'etc'))
    (root / 'etc').mkdir()
    os.symlink(str(outside / 'hosts'), str(root / 'etc' / 'hosts'))  # a symlinked file is replaced, not followed
    _tree.write_in_tree(str(root), '/etc/hosts', b'mine\n', 0o644)
    assert (outside / 'hosts').read_text() == 'host file\n'
    assert not os.path.islink(str(root / 'etc' / 'hosts'))
    assert (root / 'etc' / 'hosts').read_text() == 'mine\n'


def test_clone_hardlinks_only_unified_files(tmp_path, busybox_tree):
    src = tmp_path / 'src'
    subprocess.run(['cp', '-a', busybox_tree, str(src)], check=True)
    shared = src / 'bin' / 'busybox'
    os.link(str(shared), str(tmp_path / 'other-guest-copy'))  # unified: nlink > 1 and immutable
    subprocess.run(['chattr', '+i', str(shared)], check=True)
    try:
        counts = _tree.clone_tree(str(src), str(tmp_path / 'dst'), writers=_procfs.open_for_write)
        assert os.stat(str(tmp_path / 'dst' / 'bin' / 'busybox')).st_ino == shared.stat().st_ino
        assert os.stat(str(tmp_path / 'dst' / 'etc' / 'passwd')).st_ino != (src / 'etc' / 'passwd').stat().st_ino
        assert (tmp_path / 'dst' / 'etc' / 'passwd').read_text() == (src / 'etc' / 'passwd').read_text()
        assert os.readlink(str(tmp_path / 'dst' / 'bin' / 'sh')) == os.readlink(str(src / 'bin' / 'sh'))
        assert counts['linked'] == 1 and counts['copied'] >= 5
    finally:
        subprocess.run(['chattr', '-i', str(shared)], check=True)


@pytest.mark.cgroup
def test_list_converges_check_mode_first_then_idempotent(host_paths):
    guests = [
        {'name': 'lg-a', 'xid': 901, 'hostname': 'a.test', 'limits': {'nproc': 32}, 'autostart': True,
         'files': {'/etc/motd': {'content': 'hello\n', 'mode': '0600'}}, 'root_password_hash': '!'},
        {'name': 'lg-b', 'template': 'clone', 'clone_from': 'lg-a', 'state': 'stopped',
         'capabilities': {'ccaps': ['raw_icmp']}},
    ]
    try:
        check = _mgr_guests.ensure(host_paths, {'guests': guests}, check_mode=True)
        assert check['changed'] and 'lg-a: start' in check['actions']
        assert _config.names(host_paths) == [] and not os.path.exists(host_paths.tree_dir)
        first = _mgr_guests.ensure(host_paths, {'guests': guests})
        assert first['changed']
        doc = _config.load(host_paths, 'lg-a')
        assert _runtime.Runtime(host_paths, 'lg-a').state() == 'running'
        assert _runtime.Runtime(host_paths, 'lg-b').state() == 'stopped'
        assert oct(os.stat(os.path.join(doc['root'], 'etc/motd')).st_mode & 0o777) == '0o600'
        assert open(os.path.join(doc['root'], 'etc/shadow')).read().startswith('root:!:')
        assert os.path.exists(os.path.join(host_paths.config_dir, 'autostart', 'lg-a'))
        assert _config.load(host_paths, 'lg-b')['capabilities']['ccaps'] == ['raw_icmp']
        again = _mgr_guests.ensure(host_paths, {'guests': guests})
        assert not again['changed'], again['actions']
        pruned = _mgr_guests.ensure(host_paths, {'guests': guests[:1], 'prune': True, 'purge_pruned': True})
        assert pruned['actions'][-1].startswith('lg-b: ') and _config.names(host_paths) == ['lg-a']
        assert not os.path.exists(os.path.join(host_paths.tree_dir, 'lg-b'))
    finally:
        _mgr_guests.ensure(host_paths, {'guests': [], 'prune': True, 'purge_pruned': True})


def _bounding_set(pid):
    with open('/proc/%d/status' % pid) as handle:
        return int([line.split()[1] for line in handle if line.startswith('CapBnd:')][0], 16)


@pytest.mark.cgroup
def test_unlisted_guest_is_left_alone_and_a_restart_needs_consent(host_paths):
    """A guest missing from the list keeps running without prune; a change that needs a restart (the bounding set)
    is reported and not applied to the running init until allow_restart says so."""
    cap_sys_chroot = 1 << 18
    guests = [{'name': 'rc-a', 'xid': 911, 'stop_timeout': 2}, {'name': 'rc-b', 'xid': 912, 'stop_timeout': 2}]
    try:
        _mgr_guests.ensure(host_paths, {'guests': guests})
        pid_a = _runtime.Runtime(host_paths, 'rc-a').init_pid()
        pid_b = _runtime.Runtime(host_paths, 'rc-b').init_pid()
        assert pid_a and pid_b and _bounding_set(pid_a) & cap_sys_chroot
        # rc-b no longer listed, rc-a loses sys_chroot: rc-b untouched, rc-a reported, not restarted
        changed = [dict(guests[0], capabilities={'bcaps_drop': ['sys_chroot']})]
        res = _mgr_guests.ensure(host_paths, {'guests': changed})
        assert res['restart_required'] == ['rc-a'], res
        assert _runtime.Runtime(host_paths, 'rc-a').init_pid() == pid_a and _bounding_set(pid_a) & cap_sys_chroot
        assert _runtime.Runtime(host_paths, 'rc-b').init_pid() == pid_b and _config.load(host_paths, 'rc-b')
        again = _mgr_guests.ensure(host_paths, {'guests': changed})
        assert again['restart_required'] == ['rc-a']                    # still pending, still reported
        # with consent: restarted, the new init runs without the capability
        res = _mgr_guests.ensure(host_paths, {'guests': changed, 'allow_restart': True})
        assert res['changed'] and not res['restart_required']
        new_a = _runtime.Runtime(host_paths, 'rc-a').init_pid()
        assert new_a and new_a != pid_a and not _bounding_set(new_a) & cap_sys_chroot
        assert not _mgr_guests.ensure(host_paths, {'guests': changed, 'allow_restart': True})['changed']
        assert _runtime.Runtime(host_paths, 'rc-b').init_pid() == pid_b
    finally:
        _mgr_guests.ensure(host_paths, {'guests': [], 'prune': True, 'purge_pruned': True})
