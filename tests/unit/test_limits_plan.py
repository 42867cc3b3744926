"""The limits planner's decisions against fake cgroup trees: which cgroup file gets which value for each option on
cgroup v1 and v2, what removing the option writes back, and the start-time steps (devices, rlimits)."""
import resource

import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _devices, _limits, _limits_apply, _limits_parse, _limits_plan)

UNLIMITED_V1 = '9223372036854771712'
V2_FILES = {
    'memory.max': 'max', 'memory.high': 'max', 'memory.swap.max': 'max', 'pids.max': 'max',
    'cpu.max': 'max 100000', 'cpu.max.burst': '0', 'cpu.weight': '100', 'cpuset.cpus': '',
    'io.weight': 'default 100', 'io.max': '', 'cgroup.procs': '',
}
V1_FILES = {
    'memory/memory.limit_in_bytes': UNLIMITED_V1, 'memory/memory.memsw.limit_in_bytes': UNLIMITED_V1,
    'memory/memory.soft_limit_in_bytes': UNLIMITED_V1, 'pids/pids.max': 'max',
    'cpu/cpu.cfs_period_us': '100000', 'cpu/cpu.cfs_quota_us': '-1', 'cpu/cpu.cfs_burst_us': '0',
    'cpu/cpu.shares': '1024', 'cpuset/cpuset.cpus': '0-3', 'blkio/blkio.bfq.weight': '100',
    'blkio/blkio.throttle.read_bps_device': '', 'blkio/blkio.throttle.write_bps_device': '',
    'blkio/blkio.throttle.read_iops_device': '', 'blkio/blkio.throttle.write_iops_device': '',
}


class FakeHost(_limits_parse.Host):
    def __init__(self, tmp_path):
        sys_root = tmp_path / 'sys'
        (sys_root / 'devices/system/cpu').mkdir(parents=True)
        (sys_root / 'devices/system/cpu/online').write_text('0-3\n')
        (sys_root / 'dev/block/8:0').mkdir(parents=True)
        super().__init__(sys_root=str(sys_root))


class Tree:
    """A guest's cgroup in a fake v1 or v2 tree, every managed file at the kernel's default."""

    def __init__(self, tmp_path, version):
        self.base = tmp_path / 'cgroup'
        if version == 2:
            self.base.mkdir()
            (self.base / 'cgroup.controllers').write_text('cpuset cpu io memory pids\n')
            (self.base / 'cgroup.subtree_control').write_text('')
            self.layout = _cgroup.Layout(2, unified=str(self.base))
        else:
            mounts = {}
            for ctrl in ('memory', 'pids', 'cpu', 'cpuset', 'blkio'):
                (self.base / ctrl).mkdir(parents=True)
                mounts[ctrl] = str(self.base / ctrl)
            for name in ('memory.memsw.limit_in_bytes', 'blkio.bfq.weight', 'cpu.cfs_burst_us'):
                (self.base / name.split('.', maxsplit=1)[0] / name).write_text('0\n')
            (self.base / 'cpuset/cpuset.cpus').write_text('0-3\n')
            (self.base / 'cpuset/cpuset.mems').write_text('0\n')
            self.layout = _cgroup.Layout(1, v1=mounts)
        self.version = version
        self.group = self.layout.group('vservers', 'web')
        self.group.create()
        for key, value in (V2_FILES if version == 2 else V1_FILES).items():
            self.path(key).write_text(value + '\n')

    def path(self, key):
        if self.version == 2:
            return self.base / 'vservers/web' / key
        ctrl, name = key.split('/') if '/' in key else (key.split('.', maxsplit=1)[0], key)
        return self.base / ctrl / 'vservers/web' / name

    def read(self, key):
        return self.path(key).read_text().strip()


# option given -> {file: value the kernel file holds afterwards}; every other managed file stays at its default
CASES = [
    ({'memory': '512M'}, {'memory.max': str(512 << 20)}, {'memory.limit_in_bytes': str(512 << 20)}),
    ({'memory': '512M', 'memory_high': '256M'},
     {'memory.max': str(512 << 20), 'memory.high': str(256 << 20)},
     {'memory.limit_in_bytes': str(512 << 20), 'memory.soft_limit_in_bytes': str(256 << 20)}),
    ({'memory': '512M', 'swap': '64M'},
     {'memory.max': str(512 << 20), 'memory.swap.max': str(64 << 20)},
     {'memory.limit_in_bytes': str(512 << 20), 'memory.memsw.limit_in_bytes': str(576 << 20)}),   # memory + swap
    ({'nproc': 32}, {'pids.max': '32'}, {'pids.max': '32'}),
    ({'cpu': {'fill_rate': 1, 'interval': 4}}, {'cpu.max': '25000 100000'}, {'cpu.cfs_quota_us': '25000'}),
    ({'cpu': {'quota': 50000, 'period': 200000, 'burst': 10000}},
     {'cpu.max': '50000 200000', 'cpu.max.burst': '10000'},
     {'cpu.cfs_quota_us': '50000', 'cpu.cfs_period_us': '200000', 'cpu.cfs_burst_us': '10000'}),
    ({'cpu_weight': 50}, {'cpu.weight': '50'}, {'cpu.shares': '512'}),                # shares = weight * 1024 / 100
    ({'cpuset': '1-2'}, {'cpuset.cpus': '1-2'}, {'cpuset.cpus': '1-2'}),
    ({'io': {'weight': 500}}, {'io.weight': 'default 500'}, {'blkio.bfq.weight': '500'}),
    ({'io': {'devices': [{'device': '8:0', 'read_bps': '1M', 'write_iops': 9}]}},
     {'io.max': '8:0 rbps=1048576 riops=max wbps=max wiops=9'},
     {'blkio.throttle.read_bps_device': '8:0 1048576', 'blkio.throttle.write_iops_device': '8:0 9'}),
]
IDS = ['memory', 'memory_high', 'swap', 'nproc', 'cpu-bucket', 'cpu-quota-burst', 'cpu_weight', 'cpuset', 'io-weight',
       'io-devices']


@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('params,v2,v1', CASES, ids=IDS)
def test_option_writes_these_files(tmp_path, version, params, v2, v1):
    tree = Tree(tmp_path, version)
    host = FakeHost(tmp_path)
    section = _limits_parse.validate(params, host, tree.layout)
    expected = v2 if version == 2 else v1
    planned = _limits_plan.diff_files(tree.group, section, host)
    assert sorted(w.setting.key for w in planned) == sorted(expected)
    assert sorted(_limits_apply.apply(tree.group, section, host)) == sorted(expected)
    assert {key: tree.read(key) for key in expected} == expected
    defaults = V2_FILES if version == 2 else {k.split('/')[1]: v for k, v in V1_FILES.items()}
    untouched = {key: tree.read(key) for key in defaults if key not in expected}
    assert untouched == {key: defaults[key] for key in untouched}
    assert _limits_plan.diff_files(tree.group, section, host) == []                  # applied: nothing left to do


# removing every option: what the kernel file holds afterwards (the "no limit" spelling of each backend)
REMOVED_V2 = {'memory.max': 'max', 'memory.high': 'max', 'memory.swap.max': 'max', 'pids.max': 'max',
              'cpu.max': 'max 100000', 'cpu.max.burst': '0', 'cpu.weight': '100', 'cpuset.cpus': '',
              'io.weight': 'default 100', 'io.max': '8:0 rbps=max wbps=max riops=max wiops=max'}
REMOVED_V1 = {'memory.limit_in_bytes': '-1', 'memory.memsw.limit_in_bytes': '-1', 'memory.soft_limit_in_bytes': '-1',
              'pids.max': 'max', 'cpu.cfs_quota_us': '-1', 'cpu.cfs_period_us': '100000', 'cpu.cfs_burst_us': '0',
              'cpu.shares': '1024', 'cpuset.cpus': '0-3', 'blkio.bfq.weight': '100',
              'blkio.throttle.read_bps_device': '8:0 0', 'blkio.throttle.write_bps_device': '8:0 0',
              'blkio.throttle.read_iops_device': '8:0 0', 'blkio.throttle.write_iops_device': '8:0 0'}
EVERYTHING = {'memory': '512M', 'memory_high': '256M', 'swap': '64M', 'nproc': 32,
              'cpu': {'quota': 50000, 'period': 200000, 'burst': 10000}, 'cpu_weight': 50, 'cpuset': '1-2',
              'io': {'weight': 500, 'devices': [{'device': '8:0', 'read_bps': '1M', 'read_iops': 5,
                                                 'write_bps': '2M', 'write_iops': 9}]}}


@pytest.mark.parametrize('version', [1, 2])
def test_removing_options_writes_the_no_limit_values(tmp_path, version):
    tree = Tree(tmp_path, version)
    host = FakeHost(tmp_path)
    _limits_apply.apply(tree.group, _limits_parse.validate(EVERYTHING, host, tree.layout), host)
    _limits_apply.apply(tree.group, {}, host)
    removed = REMOVED_V2 if version == 2 else REMOVED_V1
    assert {key: tree.read(key) for key in removed} == removed
    if version == 1:   # v1 memory files read back as the huge number; -1 and that compare equal
        for key in ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.soft_limit_in_bytes'):
            tree.path(key).write_text(UNLIMITED_V1 + '\n')
        for _option, key in _limits_plan.V1_THROTTLE:   # a cleared throttle reads back empty
            tree.path(key).write_text('')
    else:
        tree.path('io.max').write_text('')
    assert _limits_plan.diff_files(tree.group, {}, host) == []


@pytest.mark.parametrize('version', [1, 2])
def test_restore_puts_back_what_apply_replaced(tmp_path, version):
    tree = Tree(tmp_path, version)
    host = FakeHost(tmp_path)
    before = {key: tree.read(key) for key in (V2_FILES if version == 2 else V1_FILES)}
    done = _limits_apply.apply_undoable(tree.group, _limits_parse.validate({'memory': '64M', 'nproc': 7, 'cpu_weight':
                                                                            300}, host, tree.layout), host)
    assert {w.setting.field for w in done} == {'memory', 'nproc', 'cpu_weight'}
    assert _limits_apply.restore(tree.group, done) == []
    after = {key: tree.read(key) for key in before}
    if version == 1:   # "no limit" is written back as -1, which reads back as the huge number on a real kernel
        after['memory/memory.limit_in_bytes'] = UNLIMITED_V1 if after['memory/memory.limit_in_bytes'] == '-1' else 0
    assert after == before


class Recorder:
    def __init__(self, layout):
        self.layout = layout
        self.path = '/sys/fs/cgroup/vservers/web'
        self.writes = []

    def write(self, key, value):
        self.writes.append((key, value))


def test_devices_v1_deny_all_then_allow_the_minimal_dev():
    group = Recorder(_cgroup.Layout(1, v1={'devices': '/x'}))
    assert _devices.apply_devices(group) == 'v1'
    assert group.writes[0] == ('devices.deny', 'a')
    assert [value for key, value in group.writes[1:]] == ['c 1:3 rwm', 'c 1:5 rwm', 'c 1:7 rwm', 'c 1:8 rwm',
                                                          'c 1:9 rwm', 'c 5:0 rwm', 'c 5:2 rwm', 'c 136:* rwm']
    assert {key for key, value in group.writes[1:]} == {'devices.allow'}


def test_devices_v2_attach_a_bpf_program_to_the_guest_cgroup(monkeypatch):
    attached = []
    monkeypatch.setattr(_devices, 'bpf_attach_devices', lambda path, rules: attached.append((path, rules)))
    group = Recorder(_cgroup.Layout(2, unified='/sys/fs/cgroup'))
    assert _devices.apply_devices(group) == 'bpf'
    assert attached == [(group.path, _devices.DEVICES)] and group.writes == []
    assert _devices.apply_devices(Recorder(_cgroup.Layout(1, v1={'memory': '/x'}))) is None   # no devices controller


@pytest.mark.parametrize('spec,expected', [
    ({'nofile': {'soft': 256, 'hard': 1024}}, [(resource.RLIMIT_NOFILE, 'nofile', 256, 1024)]),
    ({'core': 0, 'stack': 'unlimited'}, [(resource.RLIMIT_CORE, 'core', 0, 0),
                                         (resource.RLIMIT_STACK, 'stack', resource.RLIM_INFINITY,
                                          resource.RLIM_INFINITY)]),
])
def test_rlimits_planned_and_set_in_the_guest_init(tmp_path, monkeypatch, spec, expected):
    section = _limits_parse.validate({'rlimits': spec}, FakeHost(tmp_path), _cgroup.Layout(2, unified='/x'))
    assert _limits_plan.rlimit_pairs(section) == expected
    calls = []
    monkeypatch.setattr(resource, 'setrlimit', lambda res, limits: calls.append((res, limits)))
    _limits.on_child(section)
    assert calls == [(res, (soft, hard)) for res, _name, soft, hard in expected]


def test_on_cgroup_applies_devices_and_limits_without_a_disk(tmp_path, monkeypatch):
    tree = Tree(tmp_path, 2)
    host = FakeHost(tmp_path)
    monkeypatch.setattr(_devices, 'bpf_attach_devices', lambda path, rules: None)
    root = tmp_path / 'root'
    root.mkdir()
    _limits.on_cgroup(str(root), _limits_parse.validate({'nproc': 9}, host, tree.layout), tree.group, host)
    assert tree.read('pids.max') == '9'
    assert not (tmp_path / 'root.disk.img').exists()
    _limits.on_absent(str(root))                     # no image: nothing to do, the tree stays
    assert root.is_dir()


def test_option_spec_is_the_one_source():
    assert set(_limits.DEFAULTS) == set(_limits.OPTIONS_SPEC) == set(_limits.KEYS) | {'disk_backend', 'disk_fstype'}
    assert _limits.DEFAULTS['disk_backend'] == 'auto' and _limits.DEFAULTS['disk_fstype'] == 'ext4'
    assert {k for k, v in _limits.DEFAULTS.items() if v is not None} == {'disk_backend', 'disk_fstype'}
    assert set(_limits.ARGUMENT_SPEC) == set(_limits.OPTIONS_SPEC) | {'name', 'restart'}
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_guests
    assert _mgr_guests.LIMITS_DEFAULTS is _limits.DEFAULTS   # a guests entry means what a limits task means
