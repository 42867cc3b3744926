"""The limits manager's decisions without root: what a change plans (actions, live writes, restart_required) on a
stopped and a running guest, replace versus merge, and what ``ensure`` returns and saves."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _config, _disk, _limits, _limits_parse, _mgr_limits)
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError

NONE = dict.fromkeys(_limits.OPTION_KEYS)          # a module task: every option it leaves out is None


class FakeHost(_limits_parse.Host):
    def __init__(self, tmp_path):
        sys_root = tmp_path / 'sys'
        (sys_root / 'devices/system/cpu').mkdir(parents=True, exist_ok=True)
        (sys_root / 'devices/system/cpu/online').write_text('0-3\n')
        super().__init__(sys_root=str(sys_root))


def v2(tmp_path):
    base = tmp_path / 'cgroup'
    base.mkdir(exist_ok=True)
    (base / 'cgroup.controllers').write_text('cpuset cpu io memory pids\n')
    (base / 'cgroup.subtree_control').write_text('')
    return _cgroup.Layout(2, unified=str(base))


class FakeRuntime:
    """A guest that runs (its cgroup a fake directory at the kernel defaults) or not."""

    def __init__(self, layout, running):
        self.layout = layout
        self.running = running
        self.group = layout.group('vservers', 'web')
        self.group.create()
        files = {'memory.max': 'max', 'memory.high': 'max', 'memory.swap.max': 'max', 'pids.max': 'max',
                 'cpu.max': 'max 100000', 'cpu.max.burst': '0', 'cpu.weight': '100', 'cpuset.cpus': '',
                 'io.weight': 'default 100', 'io.max': '', 'cgroup.procs': ''}
        for key, value in files.items():
            with open(self.group.file(key), 'w') as handle:
                handle.write(value + '\n')

    def init_pid(self):
        return 1 if self.running else None


def plan(tmp_path, params, stored=None, running=False, replace=False, restart=False):
    layout = v2(tmp_path)
    root = tmp_path / 'root'
    root.mkdir(exist_ok=True)
    doc = {'name': 'web', 'root': str(root), 'limits': stored or {}}
    return _mgr_limits.plan_change(doc, dict(NONE, **params), FakeRuntime(layout, running), FakeHost(tmp_path),
                                   layout, replace, restart)


def test_stopped_guest_only_the_config_changes(tmp_path):
    p = plan(tmp_path, {'memory': '64M'})
    assert p.changed and p.after == {'memory': 64 << 20} and p.before == {}
    assert p.actions() == ['update config'] and p.pending == [] and not p.disk_waits


def test_running_guest_gets_the_files_written_live(tmp_path):
    p = plan(tmp_path, {'memory': '64M', 'nproc': 10}, running=True)
    assert [w.setting.key for w in p.pending] == ['memory.max', 'pids.max']
    assert p.actions() == ['update config', 'write memory.max, pids.max'] and not p.disk_waits


def test_kernel_changed_behind_the_config_is_put_back(tmp_path):
    stored = {'memory': 64 << 20}
    p = plan(tmp_path, {}, stored=stored, running=True)      # the fake kernel says max: not what the config holds
    assert not p.config_changed and p.changed and p.actions() == ['write memory.max']
    p = plan(tmp_path, {}, stored=stored, running=False)
    assert not p.changed and p.actions() == []


@pytest.mark.parametrize('running,restart,waits,now', [
    (False, False, False, True),     # a stopped guest: the image is made now
    (True, False, True, False),      # running, no consent: at the next start, restart_required
    (True, True, False, True),       # running with restart: stopped, changed, started again
])
def test_disk_change_needs_the_guest_stopped(tmp_path, running, restart, waits, now):
    p = plan(tmp_path, {'disk': '64M', 'disk_backend': 'loop'}, running=running, restart=restart)
    assert p.disk.steps == ('loop_create',) and p.disk.needs_stop is running
    assert p.disk_waits is waits and p.disk_now is now and p.changed
    create = 'create a 64M ext4 image %s.disk.img and move the tree into it' % (tmp_path / 'root')
    assert p.actions() == ['update config', ('at the next start: ' if waits else '') + create]


def test_disk_refusals_come_before_anything_is_written(tmp_path):
    with pytest.raises(VServerError, match='too small'):
        plan(tmp_path, {'disk': '1M', 'disk_backend': 'loop'})
    with pytest.raises(VServerError, match='btrfs filesystem'):
        plan(tmp_path, {'disk': '64M', 'disk_backend': 'btrfs'})


@pytest.mark.parametrize('replace,after', [
    (False, {'memory': 128 << 20, 'nproc': 10, 'cpuset': '1'}),    # merge: options left out keep their value
    (True, {'memory': 128 << 20}),                                 # replace: the params are the whole section
])
def test_replace_lifts_what_the_params_leave_out(tmp_path, replace, after):
    stored = {'memory': 64 << 20, 'nproc': 10, 'cpuset': '1'}
    p = plan(tmp_path, {'memory': '128M'}, stored=stored, replace=replace)
    assert p.after == after and p.before == stored


@pytest.mark.parametrize('given,after', [
    ({'cpuset': 'all'}, {'memory': 64 << 20}),
    ({'memory': 'max'}, {'memory': 'max', 'cpuset': '1'}),
    ({'rlimits': {}}, {'memory': 64 << 20, 'cpuset': '1'}),
])
def test_removal_spellings(tmp_path, given, after):
    stored = {'memory': 64 << 20, 'cpuset': '1', 'rlimits': {'core': {'soft': 0, 'hard': 0}}}
    if 'rlimits' not in given:
        after = dict(after, rlimits=stored['rlimits'])
    assert plan(tmp_path, given, stored=stored).after == after


def paths_for(tmp_path):
    return Paths(config_dir=str(tmp_path / 'etc'), run_dir=str(tmp_path / 'run'), tree_dir=str(tmp_path / 'trees'),
                 log_dir=str(tmp_path / 'log'), cgroup_parent='vstest-unit', defaults_file=None)


def test_ensure_returns_the_module_result_and_saves(tmp_path):
    paths = paths_for(tmp_path)
    root = tmp_path / 'trees' / 'web'
    root.mkdir(parents=True)
    _config.save(paths, {'name': 'web', 'xid': 1234, 'root': str(root), 'init': ['/sbin/init']})
    layout, host = v2(tmp_path), FakeHost(tmp_path)
    check = _mgr_limits.ensure(paths, 'web', dict(NONE, nproc=12), True, host=host, layout=layout)
    assert check.changed and _config.load(paths, 'web').get('limits') is None          # check mode saved nothing
    out = _mgr_limits.ensure(paths, 'web', dict(NONE, nproc=12), host=host, layout=layout).to_dict()
    assert out == {'changed': True, 'actions': ['update config'], 'restart_required': False,
                   'diff': {'before': {}, 'after': {'nproc': 12}}, 'restarted': False, 'running': False, 'live': [],
                   'rlimit_pids': 0, 'limits': {'nproc': 12}, 'backend': 'cgroup v2'}
    assert _config.load(paths, 'web')['limits'] == {'nproc': 12}
    again = _mgr_limits.ensure_dict(paths, 'web', dict(NONE, nproc=12), host=host, layout=layout)   # the old name: a dict
    assert again['changed'] is False and again['actions'] == []
    with pytest.raises(VServerError, match='no config'):
        _mgr_limits.ensure(paths, 'nosuch', dict(NONE), host=host, layout=layout)


def test_disk_plan_types(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    assert _disk.disk_plan(str(root), None, running=True) == _disk.DiskPlan()   # no limit, no image: nothing
