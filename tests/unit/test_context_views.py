"""Spectator view and status table, fed a fake /proc."""
import os

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _config, _runtime_views
from ansible_collections.vserver.core.plugins.module_utils._common import Paths


def fake_proc(root, pid, cgroup, nspid, comm='sh'):
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / 'cgroup').write_text(cgroup)
    (d / 'status').write_text('Name:\t%s\nNSpid:\t%s\nVmRSS:\t  1200 kB\n' % (comm, nspid))
    (d / 'stat').write_text('%d (%s) S 1 1 1 0 -1 0 0 0 0 0 50 50 0 0 20 0 1 0 100 0 0' % (pid, comm))


def test_processes_are_labelled_with_their_context(tmp_path):
    paths = Paths(config_dir=str(tmp_path / 'etc'), cgroup_parent='vservers')
    os.makedirs(paths.config_dir)
    _config.save(paths, {'name': 'web', 'xid': 101, 'root': '/x', 'init': ['/sbin/init']})
    proc = tmp_path / 'proc'
    fake_proc(proc, 1, '1:name=systemd:/\n0::/init.scope\n', '1', 'init')
    fake_proc(proc, 500, '5:memory:/vservers/web\n0::/vservers/web\n', '500\t1', 'init')
    fake_proc(proc, 501, '5:memory:/vservers/web/sub\n', '501\t7', 'httpd')
    fake_proc(proc, 600, '5:memory:/vservers/unknown\n', '600\t1', 'x')
    (proc / 'self').mkdir()
    rows = {row['pid']: row for row in _runtime_views.processes(paths, proc=str(proc))}
    assert rows[1]['xid'] == 0 and rows[1]['guest'] == ''
    assert rows[500]['xid'] == 101 and rows[500]['guest_pid'] == 1 and rows[500]['guest'] == 'web'
    assert rows[501]['xid'] == 101 and rows[501]['guest_pid'] == 7
    assert rows[600]['xid'] == 0  # not a configured guest: shown as host
    assert rows[500]['rss_kb'] == 1200


def test_parse_proc_cgroup_and_guest_of():
    cg = _cgroup.parse_proc_cgroup('12:pids:/vservers/db\n0::/vservers/db\n')
    assert cg == {'pids': '/vservers/db', '': '/vservers/db'}
    assert _cgroup.guest_of(cg, 'vservers') == 'db'
    assert _cgroup.guest_of(cg, 'other') is None
    assert _cgroup.guest_of({'': '/vservers'}, 'vservers') is None


def test_stat_table_and_formats():
    table = _runtime_views.stat_table([
        {'name': 'web', 'xid': 101, 'state': 'running', 'nproc': 3, 'memory_bytes': 3 * 1024 * 1024,
         'cpu_seconds': 75.5, 'uptime': 90061, 'addresses': ['198.18.0.2/24', 'fd00:5653::2/64'],
         'disk_limit': 2 << 30},
        {'name': 'db', 'xid': 100, 'state': 'stopped', 'nproc': 0, 'memory_bytes': None, 'cpu_seconds': None,
         'uptime': None, 'disk_limit': None},
        {'name': 'bad', 'xid': 102, 'state': 'broken', 'nproc': 0}])
    lines = table.splitlines()
    assert lines[0].split() == ['CTX', 'PROC', 'RSS', 'DISK', 'CPUTIME', 'UPTIME', 'STATE', 'NAME', 'ADDRESSES']
    assert lines[1].split() == ['100', '0', '-', 'none', '-', '-', 'stopped', 'db', '-']   # no disk limit: said
    assert lines[2].split() == ['101', '3', '3.0M', '2.0G', '00:01:15', '1d01h01', 'running', 'web',
                                '198.18.0.2/24,fd00:5653::2/64']
    assert lines[3].split()[3] == '-'     # a broken config: unknown
