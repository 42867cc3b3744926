"""Faults lose nothing: a full disk, a SIGKILL at exact points of a template build or a purge, leftover temp
files. Real faults only: a small tmpfs filled to the byte, `strace -e inject=SYSCALL:signal=KILL:when=N` on
the interpreter (the Nth such syscall of the run is never made: the process dies on entering it)."""
import contextlib
import errno
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _mgr_guests, _limits, _mgr_context, _mgr_limits
from ansible_collections.vserver.core.plugins.module_utils._common import CONFIG_TMP_RE, VServerError
from ansible_helpers import path_vars, run_playbook, task_results
from helpers import TOP, guest_sh

PAGE = 4096
RUN = """
import sys
sys.path.insert(0, %r)
from ansible_collections.vserver.core.plugins.module_utils import _common, _mgr_guests, _mgr_context
_%s.%s(_common.Paths(**%r), %r)
"""


@contextlib.contextmanager
def small_tmpfs(path, size='512k'):
    os.makedirs(path, exist_ok=True)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0755' % size, 'vstest-tmpfs', path], check=True,
                   timeout=30)
    try:
        yield path
    finally:
        subprocess.run(['umount', path], check=True, timeout=30)


def fill(directory, leave=PAGE):
    """Fill the filesystem of ``directory`` to the byte, then free exactly ``leave`` bytes."""
    filler = os.path.join(directory, '.filler')
    with open(filler, 'wb', buffering=0) as handle:
        with pytest.raises(OSError) as exc:
            while True:
                handle.write(b'\xff' * 65536)
    assert exc.value.errno == errno.ENOSPC
    os.truncate(filler, os.path.getsize(filler) - leave)
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize == leave


def killed_run(paths, params, syscall, when, call=('mgr_context', 'ensure_context')):
    """Run ensure_context(params) (or another manager CALL) in a child interpreter killed on entering its
    WHEN-th SYSCALL."""
    script = RUN % ((os.path.join(TOP, '.build', 'collections'),) + call + (paths.as_dict(), params))
    proc = subprocess.run(['strace', '-f', '-o', '/dev/null', '-e', 'trace=' + syscall,
                           '-e', 'inject=%s:signal=KILL:when=%d' % (syscall, when), sys.executable, '-c', script],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode in (-9, 137), 'the run was not killed at %s #%d: %s' % (syscall, when, proc.stderr)


def temps(paths):
    return sorted(e for e in os.listdir(paths.config_dir) if CONFIG_TMP_RE.match(e))


def builds(paths, name):
    return sorted(e for e in os.listdir(paths.tree_dir) if e.startswith('.%s.build-' % name))


def assert_complete_tree(root):
    assert os.readlink(os.path.join(root, 'bin/sh')) == '/bin/busybox'
    assert os.path.getsize(os.path.join(root, 'bin/busybox')) == os.path.getsize(os.path.realpath('/bin/busybox'))
    assert os.path.lexists(os.path.join(root, 'sbin/init'))
    assert open(os.path.join(root, 'etc/inittab')).read().startswith('::sysinit:')
    assert open(os.path.join(root, 'etc/profile')).read().startswith('export PATH=')


# --- a nearly full disk -------------------------------------------------------------------------------------

def test_full_disk_keeps_the_old_config_and_the_module_fails_naming_it(host_paths, make_guest, tmp_path):
    """The context module rewriting a 6 KiB config with 4 KiB free: the task fails naming the file, the old
    config is intact byte for byte, no temp file is left."""
    os.makedirs(host_paths.config_dir, exist_ok=True)
    with small_tmpfs(host_paths.config_dir):
        doc = make_guest('ef', hostname='old.test')
        doc['network'] = {'addresses': ['198.18.%d.%d/24' % (i // 200, i % 200 + 1) for i in range(240)]}
        _config.save(host_paths, doc)
        config = host_paths.config_file('ef')
        before = open(config, 'rb').read()
        assert len(before) > 6000
        fill(host_paths.config_dir)
        playbook = tmp_path / 'play.yml'
        playbook.write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - name: rename
      vserver.core.context: {name: ef, state: present, hostname: new.test, config_dir: "{{ config_dir }}",
                             run_dir: "{{ run_dir }}", tree_dir: "{{ tree_dir }}", log_dir: "{{ log_dir }}",
                             cgroup_parent: "{{ cgroup_parent }}"}
""")
        rc, data = run_playbook(playbook, path_vars(host_paths))
        result = task_results(data)[0][1]
        assert rc != 0 and result.get('failed')
        assert result['msg'] == 'cannot write %s: No space left on device' % config
        assert open(config, 'rb').read() == before
        assert sorted(os.listdir(host_paths.config_dir)) == ['.filler', '.lock', 'ef.json']


def test_full_disk_keeps_the_old_guest_file(host_paths, busybox_tree, tmp_path):
    """guests writing a 6,000-byte file into a tree with 4 KiB free: that guest fails naming the file, the old
    file is intact, no temp file is left."""
    mnt = str(tmp_path / 'small')
    with small_tmpfs(mnt, size='4m'):
        root = os.path.join(mnt, 'eg')
        subprocess.run(['cp', '-a', busybox_tree, root], check=True, timeout=60)
        with open(os.path.join(root, 'etc/motd'), 'w') as handle:
            handle.write('the old motd\n')
        fill(mnt)
        spec = {'name': 'eg', 'template': 'none', 'root': root, 'state': 'present',
                'files': {'/etc/motd': 'x' * 6000}}
        result = _mgr_guests.ensure(host_paths, {'guests': [spec]})
        assert result['failed'] is True
        assert result['guests']['eg']['failed'] is True
        assert result['guests']['eg']['msg'] == 'cannot write %s/etc/motd: No space left on device' % root
        assert result['guests']['eg']['actions'] == ['create config']  # done before the failure, and so reported
        assert open(os.path.join(root, 'etc/motd')).read() == 'the old motd\n'
        assert not [e for e in os.listdir(os.path.join(root, 'etc')) if '.vserver-' in e]


# --- killed runs ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_template_build_never_leaves_a_half_tree(host_paths):
    """SIGKILL inside the busybox build (first and 150th applet symlink, on the rename onto root) and on the
    rename of the new config: root is never a half tree, and the next run converges (complete tree, config,
    no build sibling, no temp file)."""
    root = host_paths.default_root('kb')
    params = {'name': 'kb', 'state': 'present'}
    for syscall, when in (('symlink', 1), ('symlink', 150), ('rename', 1), ('rename', 2)):
        killed_run(host_paths, params, syscall, when)
        if os.path.lexists(root):
            assert_complete_tree(root)
        if (syscall, when) == ('rename', 2):  # killed on renaming the new config: its temp file is left
            assert not os.path.exists(host_paths.config_file('kb')) and len(temps(host_paths)) == 1
        else:
            assert builds(host_paths, 'kb'), 'a killed build leaves its sibling (and nothing at root)'
            assert not os.path.lexists(root)
        res = _mgr_context.ensure_context(host_paths, params)
        assert res['changed'] is True
        assert_complete_tree(root)
        assert _config.load(host_paths, 'kb')['root'] == root
        assert builds(host_paths, 'kb') == [] and temps(host_paths) == []
        assert _mgr_context.ensure_context(host_paths, params)['changed'] is False
        if when != 2:
            _mgr_context.ensure_context(host_paths, {'name': 'kb', 'state': 'absent', 'purge': True})
    _mgr_context.ensure_context(host_paths, {'name': 'kb', 'state': 'started'})
    try:
        out = guest_sh(host_paths, 'kb', 'echo shell-ok')
        assert out.stdout.strip() == 'shell-ok', out.stderr
    finally:
        _mgr_context.ensure_context(host_paths, {'name': 'kb', 'state': 'absent', 'purge': True})


def test_killed_clone_never_leaves_a_half_tree(host_paths, tmp_path):
    """guests cloning a tree with a unified (immutable, hardlinked) file, killed at the 100th symlink of the copy
    and on the rename onto the root: no half tree at the clone's root; the re-run removes the unfinished copy
    (the shared inode stays immutable) and clones completely."""
    _mgr_context.ensure_context(host_paths, {'name': 'cs', 'state': 'present'})
    shared = os.path.join(host_paths.default_root('cs'), 'bin', 'busybox')
    os.link(shared, str(tmp_path / 'other-guest-copy'))  # unified with another guest: nlink > 1 and immutable
    subprocess.run(['chattr', '+i', shared], check=True, timeout=30)
    params = {'guests': [{'name': 'cs', 'state': 'present'},
                         {'name': 'cc', 'template': 'clone', 'clone_from': 'cs', 'state': 'present'}]}
    root = host_paths.default_root('cc')
    try:
        for syscall, when in (('symlinkat', 100), ('rename', 1)):  # the copy works by directory fd
            killed_run(host_paths, params, syscall, when, call=('mgr_guests', 'ensure'))
            assert not os.path.lexists(root) and len(builds(host_paths, 'cc')) == 1
            assert _config.load(host_paths, 'cc') is None
            res = _mgr_guests.ensure(host_paths, params)
            assert 'failed' not in res and res['guests']['cc']['actions'][0] == 'clone tree from cs'
            assert_complete_tree(root)
            assert builds(host_paths, 'cc') == [] and _mgr_guests.ensure(host_paths, params)['changed'] is False
            assert os.stat(os.path.join(root, 'bin', 'busybox')).st_ino == os.stat(shared).st_ino
            assert os.stat(shared).st_nlink == 3
            assert 'i' in subprocess.run(['lsattr', '-d', shared], capture_output=True, text=True, check=True,
                                         timeout=30).stdout.split()[0]
            _mgr_guests.ensure(host_paths, {'guests': [params['guests'][0]], 'prune': True, 'purge_pruned': False})
            subprocess.run(['chattr', '-i', os.path.join(root, 'bin', 'busybox')], check=True, timeout=30)
            os.unlink(os.path.join(root, 'bin', 'busybox'))
            subprocess.run(['chattr', '+i', shared], check=True, timeout=30)
            subprocess.run(['rm', '-rf', root], check=True, timeout=30)
    finally:
        subprocess.run(['chattr', '-i', shared], check=False, timeout=30)


@pytest.mark.slow
def test_killed_purge_converges_and_the_name_can_be_created_again(host_paths):
    """SIGKILL at several points of state=absent purge=true on a running guest: while its config is gone
    nothing of it is left; a present run on a half-purged guest is refused; the re-run purges what is left
    (changed), the next reports nothing to do, and the name can be created again."""
    name = 'kp'
    root = host_paths.default_root(name)
    purge = {'name': name, 'state': 'absent', 'purge': True}
    for syscall, when in (('rename', 1), ('rename', 2), ('unlinkat', 1), ('unlinkat', 120), ('unlink', 1)):
        _mgr_context.ensure_context(host_paths, {'name': name, 'state': 'started'})
        killed_run(host_paths, purge, syscall, when)
        doc = _config.load(host_paths, name)
        if doc is None:
            assert not os.path.lexists(root)
        elif doc.get('purging') and os.path.isdir(root):
            with pytest.raises(VServerError) as exc:
                _mgr_context.ensure_context(host_paths, {'name': name, 'state': 'started'})
            assert exc.value.field == 'state' and 'being purged' in str(exc.value)
        check = _mgr_context.ensure_context(host_paths, purge, check_mode=True)
        res = _mgr_context.ensure_context(host_paths, purge)
        assert res['changed'] is True and res['actions'] == check['actions']
        assert not os.path.lexists(root) and _config.load(host_paths, name) is None
        assert not os.path.exists(host_paths.runtime(name)) and temps(host_paths) == []
        assert _mgr_context.ensure_context(host_paths, purge)['changed'] is False
        _mgr_context.ensure_context(host_paths, {'name': name, 'state': 'present'})
        assert_complete_tree(root)
    _mgr_context.ensure_context(host_paths, purge)


def test_purge_refuses_a_mount_point_below_the_tree(host_paths, make_guest, tmp_path):
    """Host data bind-mounted into a tree is never deleted by a purge: the purge fails naming the mount and
    touches nothing."""
    doc = make_guest('km')
    data = tmp_path / 'hostdata'
    data.mkdir()
    (data / 'precious').write_text('keep me\n')
    mnt = os.path.join(doc['root'], 'mnt', 'data')
    os.makedirs(mnt)
    subprocess.run(['mount', '--bind', str(data), mnt], check=True, timeout=30)
    try:
        with pytest.raises(VServerError) as exc:
            _mgr_context.ensure_context(host_paths, {'name': 'km', 'state': 'absent', 'purge': True})
        assert exc.value.field == 'purge' and os.path.realpath(mnt) in str(exc.value)
        assert (data / 'precious').read_text() == 'keep me\n'
        assert _config.load(host_paths, 'km') == doc
        assert_complete_tree(doc['root'])
    finally:
        subprocess.run(['umount', mnt], check=True, timeout=30)
    assert _mgr_context.ensure_context(host_paths, {'name': 'km', 'state': 'absent', 'purge': True})['changed']
    assert not os.path.lexists(doc['root']) and (data / 'precious').read_text() == 'keep me\n'


# --- leftovers and the rest of a list ---------------------------------------------------------------------------

def test_stale_config_temp_files_are_removed_under_the_lock(host_paths, make_guest):
    """Temp files of killed config writers (.NAME.json.XXXXXXXX) go at the next run; nothing else does."""
    make_guest('ta')
    stale = ['.ta.json.k2x9_q0a', '.other.json.abcdefgh']
    kept = ['.ta.json.keep', 'ta.json.abcdefgh', '.ta.json.abcdefghi', '.unify-index']
    for entry in stale + kept:
        with open(os.path.join(host_paths.config_dir, entry), 'w') as handle:
            handle.write('{"name": "ta", "xid":')
    res = _mgr_context.ensure_context(host_paths, {'name': 'ta', 'state': 'stopped'})
    assert res['changed'] is False
    left = os.listdir(host_paths.config_dir)
    assert not set(stale) & set(left)
    assert set(kept) <= set(left)
    assert json.load(open(host_paths.config_file('ta')))['name'] == 'ta'


def test_one_broken_guest_does_not_stop_the_list(host_paths, tmp_path):
    """The guests module with a broken guest in the middle: the others converge, the task fails naming it."""
    playbook = tmp_path / 'play.yml'
    playbook.write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - name: guests
      vserver.core.guests:
        guests: "{{ guests }}"
        config_dir: "{{ config_dir }}"
        run_dir: "{{ run_dir }}"
        tree_dir: "{{ tree_dir }}"
        log_dir: "{{ log_dir }}"
        cgroup_parent: "{{ cgroup_parent }}"
""")
    missing = str(tmp_path / 'no-such-tree')
    guests = [{'name': 'la', 'state': 'present', 'files': {'/etc/motd': 'a\n'}},
              {'name': 'lb', 'state': 'present', 'template': 'none', 'root': missing},
              {'name': 'lc', 'state': 'present', 'files': {'/etc/motd': 'c\n'}}]
    rc, data = run_playbook(playbook, dict(path_vars(host_paths), guests=guests))
    result = task_results(data)[0][1]
    assert rc != 0 and result['failed'] is True
    assert result['msg'].startswith('1 of 3 guests failed') and 'lb: root %s does not exist' % missing in result['msg']
    assert result['guests']['lb']['failed'] is True and result['guests']['lb']['changed'] is False
    for name in ('la', 'lc'):
        assert result['guests'][name]['changed'] is True and 'failed' not in result['guests'][name]
        assert _config.load(host_paths, name) is not None
        assert open(os.path.join(host_paths.default_root(name), 'etc/motd')).read() == name[1] + '\n'
    assert _config.load(host_paths, 'lb') is None and not os.path.exists(missing)
    again = _mgr_guests.ensure(host_paths, {'guests': [guests[0], guests[2]]})
    assert again['changed'] is False and 'failed' not in again


def test_purge_of_a_guest_on_its_own_disk_image(host_paths, make_guest):
    """A root that is the guest's own loop disk image is a mount point only until the absent hook takes the
    tree out of it: the purge goes through and leaves no tree, image, mount or config."""
    doc = make_guest('kd')
    root = doc['root']
    try:
        _mgr_limits.ensure_dict(host_paths, 'kd', {'disk': '32M', 'disk_backend': 'loop', 'disk_fstype': 'ext4'})
        assert os.path.ismount(root)
        res = _mgr_context.ensure_context(host_paths, {'name': 'kd', 'state': 'absent', 'purge': True})
        assert res['actions'] == ['purge tree %s' % root, 'remove config']
        assert not os.path.lexists(root) and not os.path.exists(_limits.disk_image(root))
        assert _config.load(host_paths, 'kd') is None
    finally:
        while os.path.ismount(root):
            subprocess.run(['umount', '-l', root], check=False, timeout=30)
