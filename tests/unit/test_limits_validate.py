"""limits: parsing and validation (pure logic, against a fake /sys and /proc)."""
import resource

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _limits
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

V1 = _cgroup.Layout(1, v1={'memory': '/nonexistent/memory', 'pids': '/x', 'cpu': '/x', 'cpuset': '/x'})
V2 = _cgroup.Layout(2, unified='/nonexistent')


class FakeHost(_limits.Host):
    def __init__(self, tmp_path, cpus='0-3', cap_sys_resource=False, own_hard=20000, nr_open=1048576):
        sys_root = tmp_path / 'sys'
        (sys_root / 'devices/system/cpu').mkdir(parents=True)
        (sys_root / 'devices/system/cpu/online').write_text(cpus + '\n')
        (sys_root / 'dev/block/8:0').mkdir(parents=True)
        (sys_root / 'dev/block/8:1').mkdir(parents=True)
        (sys_root / 'dev/block/8:1/partition').write_text('1\n')
        proc = tmp_path / 'proc'
        (proc / 'self').mkdir(parents=True)
        (proc / 'sys/fs').mkdir(parents=True)
        (proc / 'sys/fs/nr_open').write_text('%d\n' % nr_open)
        eff = 0x1fffeffffff | ((1 << 24) if cap_sys_resource else 0)
        (proc / 'self/status').write_text('Name:\tx\nCapEff:\t%016x\n' % eff)
        super().__init__(sys_root=str(sys_root), proc_root=str(proc), dev_root='/dev')
        self.own_hard = own_hard

    def own_rlimit(self, resource_id):
        if resource_id == resource.RLIMIT_NOFILE:
            return (1024, self.own_hard)
        return (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


@pytest.mark.parametrize('value,expected', [
    (1024, 1024), ('1024', 1024), ('512M', 512 << 20), ('512m', 512 << 20), ('2G', 2 << 30), ('1T', 1 << 40),
    ('4K', 4096), ('64MiB', 64 << 20), ('10 M', 10 << 20), ('max', 'max'), ('unlimited', 'max'), ('MAX', 'max'),
])
def test_parse_size(value, expected):
    assert _limits.parse_size(value, 'memory') == expected


@pytest.mark.parametrize('value', [-1, '-5M', 0, '0', '12Q', '1.5G', '', None, True, 'lots', '5 GB extra'])
def test_parse_size_refuses(value):
    with pytest.raises(VServerError) as err:
        _limits.parse_size(value, 'memory')
    assert err.value.field == 'memory'
    assert 'memory' in str(err.value)


def test_swap_zero_allowed_memory_zero_not(tmp_path):
    host = FakeHost(tmp_path)
    assert _limits.validate({'memory': '64M', 'swap': 0}, host, V2) == {'memory': 64 << 20, 'swap': 0}
    with pytest.raises(VServerError):
        _limits.validate({'memory': 0}, host, V2)


def test_full_section_canonical(tmp_path):
    host = FakeHost(tmp_path)
    section = _limits.validate({
        'memory': '512M', 'memory_high': '400M', 'swap': '1G', 'nproc': 64,
        'cpu': {'fill_rate': 1, 'interval': 4, 'burst': 5000}, 'cpu_weight': 50, 'cpuset': '3,0-1',
        'io': {'weight': 200, 'devices': [{'device': '8:0', 'read_bps': '10M', 'write_iops': 'max'}]},
        'rlimits': {'NOFILE': {'soft': 512, 'hard': 1024}, 'RLIMIT_CORE': 0, 'stack': 'unlimited'},
    }, host, V2)
    assert section == {
        'memory': 512 << 20, 'memory_high': 400 << 20, 'swap': 1 << 30, 'nproc': 64,
        'cpu': {'quota': 25000, 'period': 100000, 'burst': 5000}, 'cpu_weight': 50, 'cpuset': '0-1,3',
        'io': {'weight': 200, 'devices': [{'device': '8:0', 'read_bps': 10 << 20, 'write_iops': 'max'}]},
        'rlimits': {'core': {'soft': 0, 'hard': 0}, 'nofile': {'soft': 512, 'hard': 1024},
                    'stack': {'soft': 'unlimited', 'hard': 'unlimited'}},
    }
    # the same input twice gives the same section (idempotent module runs)
    assert _limits.validate({'memory': '512M'}, host, V2) == _limits.validate({'memory': 536870912}, host, V2)


@pytest.mark.parametrize('cpu,expected', [
    ({'fill_rate': 1, 'interval': 4}, {'quota': 25000, 'period': 100000}),
    ({'fill_rate': 3, 'interval': 2}, {'quota': 150000, 'period': 100000}),
    ({'fill_rate': 1, 'interval': 10, 'period': 50000}, {'quota': 5000, 'period': 50000}),
    ({'quota': 20000, 'period': 100000, 'burst': 10000}, {'quota': 20000, 'period': 100000, 'burst': 10000}),
    ({'quota': 'max'}, None),
])
def test_cpu_token_bucket(tmp_path, cpu, expected):
    section = _limits.validate({'cpu': cpu}, FakeHost(tmp_path), V2)
    assert section.get('cpu') == expected


BAD = [
    ({'memory': '64M', 'memory_high': '65M'}, 'memory_high', 'above memory'),
    ({'nproc': 0}, 'nproc', 'at least 1'),
    ({'nproc': -3}, 'nproc', 'or max'),
    ({'cpu': {'fill_rate': 1}}, 'cpu', 'both fill_rate and interval'),
    ({'cpu': {'fill_rate': 0, 'interval': 4}}, 'cpu.fill_rate', 'from 1'),
    ({'cpu': {'fill_rate': 1, 'interval': 1000}}, 'cpu', 'at least 1000us'),
    ({'cpu': {'fill_rate': 9, 'interval': 1}}, 'cpu', 'online CPUs'),
    ({'cpu': {'fill_rate': 1, 'interval': 4, 'quota': 5000}}, 'cpu', 'not both'),
    ({'cpu': {'quota': 500}}, 'cpu.quota', 'at least 1000'),
    ({'cpu': {'period': 10}}, 'cpu.period', 'from 1000'),
    ({'cpu': {'quota': 20000, 'burst': 30000}}, 'cpu.burst', 'must not exceed quota'),
    ({'cpu': {'tokens': 3}}, 'cpu', 'accepted'),
    ({'cpu_weight': 0}, 'cpu_weight', 'from 1 to 10000'),
    ({'cpu_weight': 10001}, 'cpu_weight', 'from 1 to 10000'),
    ({'cpuset': '4'}, 'cpuset', 'not online'),
    ({'cpuset': '0-1,7'}, 'cpuset', 'online: 0-3'),
    ({'cpuset': 'all'}, 'cpuset', 'CPU list'),
    ({'cpuset': '3-1'}, 'cpuset', 'CPU list'),
    ({'io': {'weight': 0}}, 'io.weight', 'from 1 to 10000'),
    ({'io': {'devices': [{'device': '9:9', 'read_bps': '1M'}]}}, 'io.devices[0].device', 'unknown device'),
    ({'io': {'devices': [{'device': '/dev/vstnope', 'read_bps': '1M'}]}}, 'io.devices[0].device', 'unknown device'),
    ({'io': {'devices': [{'device': '/dev/null', 'read_bps': '1M'}]}}, 'io.devices[0].device', 'not a block'),
    ({'io': {'devices': [{'device': '8:1', 'read_bps': '1M'}]}}, 'io.devices[0].device', 'partition'),
    ({'io': {'devices': [{'device': '8:0'}]}}, 'io.devices[0]', 'at least one'),
    ({'io': {'devices': [{'device': '8:0', 'read_bps': -1}]}}, 'io.devices[0].read_bps', 'expected'),
    ({'io': {'devices': [{'device': '8:0', 'read_bps': 1}, {'device': '8:0', 'write_bps': 1}]}},
     'io.devices[1]', 'twice'),
    ({'io': {'devices': [{'device': '8:0', 'read_bps': 1, 'speed': 3}]}}, 'io.devices[0]', 'expected'),
    ({'rlimits': {'files': 3}}, 'rlimits.files', 'known: '),
    ({'rlimits': {'nofile': {'soft': 20, 'hard': 10}}}, 'rlimits.nofile', 'above the hard'),
    ({'rlimits': {'nofile': {'soft': 'unlimited', 'hard': 10}}}, 'rlimits.nofile', 'above the hard'),
    ({'rlimits': {'nofile': -4}}, 'rlimits.nofile', 'unlimited'),
    ({'rlimits': {'nofile': 'unlimited'}}, 'rlimits.nofile', 'nr_open'),
    ({'rlimits': {'nofile': {'max': 3}}}, 'rlimits.nofile', 'soft and/or hard'),
    ({'rlimits': [1]}, 'rlimits', 'mapping'),
    ({'disk': '1M'}, 'disk', 'too small'),
    ({'disk': '100M', 'disk_fstype': 'xfs'}, 'disk', 'xfs'),
    ({'disk': '1G', 'disk_fstype': 'zfs'}, 'disk_fstype', 'ext4, xfs'),
    ({'disk': '1G', 'disk_backend': 'quota'}, 'disk_backend', 'auto, loop, btrfs'),
    ({'disk': 'max'}, 'disk', 'not unlimited'),
    ({'disk': {'size': '1G', 'where': 'x'}}, 'disk', 'size'),
    ({'memroy': '1G'}, 'memroy', 'accepted'),
]


@pytest.mark.parametrize('params,field,words', BAD)
def test_bad_input_names_the_field(tmp_path, params, field, words):
    with pytest.raises(VServerError) as err:
        _limits.validate(params, FakeHost(tmp_path), V2)
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)


def test_swap_needs_memory_on_v1(tmp_path):
    host = FakeHost(tmp_path)
    assert _limits.validate({'swap': '1G'}, host, V2) == {'swap': 1 << 30}
    with pytest.raises(VServerError) as err:
        _limits.validate({'swap': '1G'}, host, V1)
    assert err.value.field == 'swap' and 'memsw' in str(err.value)


def test_rlimit_above_host_hard_needs_cap_sys_resource(tmp_path):
    host = FakeHost(tmp_path / 'a', cap_sys_resource=False, own_hard=20000)
    assert _limits.validate({'rlimits': {'nofile': 20000}}, host, V2)['rlimits']['nofile']['hard'] == 20000
    with pytest.raises(VServerError) as err:
        _limits.validate({'rlimits': {'nofile': 30000}}, host, V2)
    message = str(err.value)
    assert err.value.field == 'rlimits.nofile'
    assert 'CAP_SYS_RESOURCE' in message and 'at most 20000' in message and '30000' in message
    with_cap = FakeHost(tmp_path / 'b', cap_sys_resource=True, own_hard=20000)
    assert _limits.validate({'rlimits': {'nofile': 30000}}, with_cap, V2)['rlimits']['nofile']['soft'] == 30000


def test_rlimit_names_cover_the_kernel():
    assert {'nofile', 'nproc', 'core', 'stack', 'memlock', 'as', 'cpu', 'fsize'} <= set(_limits.RLIMITS)
    assert _limits.RLIMITS['nofile'] == resource.RLIMIT_NOFILE


@pytest.mark.parametrize('text,cpus', [('0-2,5', [0, 1, 2, 5]), ('3', [3]), ('', []), (' 1 , 0 ', [0, 1])])
def test_cpulists(text, cpus):
    assert _limits.parse_cpulist(text) == cpus
    assert _limits.parse_cpulist(_limits.format_cpulist(cpus)) == cpus


def test_disk_forms():
    assert _limits.disk_validate('2G') == {'size': 2 << 30, 'backend': 'auto', 'fstype': 'ext4'}
    assert _limits.disk_validate({'size': '1G', 'backend': 'loop', 'fstype': 'xfs'}) == {
        'size': 1 << 30, 'backend': 'loop', 'fstype': 'xfs'}
    assert _limits.disk_validate(None) is None
