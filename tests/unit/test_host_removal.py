"""The host role's removal decisions and the migrate role's look at its target (module_utils _host) without root: what
counts as a directory holding nothing of a guest, which cgroup hierarchies are looked at, check mode changes nothing."""
import os

from ansible_collections.vserver.core.plugins.module_utils import _host

MOUNTINFO = r"""22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
40 22 0:50 / /srv/with\040space rw - tmpfs tmpfs rw
"""


def test_cgroup_roots_from_mountinfo(tmp_path):
    path = tmp_path / 'mountinfo'
    path.write_text(MOUNTINFO)
    assert _host.cgroup_roots(str(path)) == ['/sys/fs/cgroup/unified', '/sys/fs/cgroup/pids',
                                             '/sys/fs/cgroup/cpu,cpuacct']


def test_dirs_removes_only_bookkeeping_and_check_mode_changes_nothing(tmp_path):
    etc = tmp_path / 'etc'
    (etc / 'autostart').mkdir(parents=True)
    (etc / '.lock').write_text('')
    (etc / '.unify-index').write_text('')
    trees = tmp_path / 'trees'
    (trees / 'web').mkdir(parents=True)  # a guest's tree: kept
    marks = tmp_path / 'marks'
    (marks / 'autostart').mkdir(parents=True)
    (marks / 'autostart' / 'web').write_text('')  # a boot mark: kept
    req = {'dirs': [str(etc), str(trees), str(marks), str(tmp_path / 'missing')]}
    check = _host.Removal(req, check=True).run('dirs')
    assert check['changed'] and check['actions'] == ['remove directory %s' % etc]
    assert check['kept'] == ['%s kept: it holds web' % trees, '%s kept: it holds autostart' % marks]
    assert etc.is_dir()
    done = _host.Removal(req, check=False).run('dirs')
    assert done['actions'] == check['actions'] and not etc.exists() and (trees / 'web').is_dir()


def test_empty_prefix_dirs_innermost_first_and_what_the_run_removes(tmp_path):
    prefix = tmp_path / 'lib' / 'vserver-core'
    root = prefix / 'root'
    root.mkdir(parents=True)
    (prefix / 'vserver-core-cli.tar').write_text('')
    req = {'dirs': [], 'removed': [str(root), str(prefix / 'vserver-core-cli.tar')], 'empty_dirs': [str(prefix)]}
    assert _host.Removal(req, check=True).run('dirs')['actions'] == ['remove directory %s' % prefix]
    assert _host.Removal(req, check=False).run('dirs')['actions'] == []  # not empty yet: a real run keeps it
    os.rmdir(str(root))
    os.unlink(str(prefix / 'vserver-core-cli.tar'))
    assert _host.Removal(req, check=False).run('dirs')['changed'] and not prefix.exists()


def test_probe_lists_configured_and_running_guests(tmp_path):
    config, run = tmp_path / 'etc', tmp_path / 'run'
    config.mkdir()
    (run / 'gone').mkdir(parents=True)
    (run / '.supervise.pid').write_text('999999999')
    for name in ('web.json', 'db.json', '.web.json.abcd1234', 'notes.txt'):
        (config / name).write_text('{}')
    link = tmp_path / 'vserver'
    link.symlink_to('/opt/vserver')
    out = _host.Removal({'config_dir': str(config), 'run_dir': str(run),
                         'links': [{'src': '/opt/vserver', 'dest': str(link)},
                                   {'src': '/opt/other', 'dest': str(tmp_path / 'nothing')}]}, check=True).run('probe')
    assert out['guests'] == ['db', 'web'] and out['running'] == ['gone']
    assert out['links_ours'] == [str(link)] and out['supervisor'] is None and not out['changed']


def test_target_guests(tmp_path):
    config, trees = tmp_path / 'etc', tmp_path / 'trees'
    config.mkdir()
    (config / 'web.json').write_text('{"name": "web", "xid": 101, "network": {"addresses": ["198.18.0.2/24"]}}')
    (config / 'db.json').write_text('{"name": "db", "xid": 102}')
    (config / 'bad.json').write_text('{not json')
    out = _host.target_guests(str(config), str(trees / 'not' / 'yet'))
    assert out['guests'] == {'web': {'xid': 101, 'addresses': ['198.18.0.2/24']}, 'db': {'xid': 102, 'addresses': []}}
    assert out['root_exists'] == {} and out['free_bytes'] > 0
    (trees / 'web').mkdir(parents=True)
    assert _host.target_guests(str(config), str(trees))['root_exists'] == {'web': True}
