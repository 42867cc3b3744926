"""The limits backends against fake cgroup trees: v2 (fake cgroup2 mount + mountinfo) and v1, live apply,
idempotence, rollback; and where the guests' cgroups go when systemd is PID 1."""
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _limits
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

V2_DEFAULTS = {
    'memory.max': 'max', 'memory.high': 'max', 'memory.swap.max': 'max', 'pids.max': 'max',
    'cpu.max': 'max 100000', 'cpu.max.burst': '0', 'cpu.weight': '100', 'cpuset.cpus': '',
    'io.weight': 'default 100', 'io.max': '', 'cgroup.procs': '',
}


class FakeHost(_limits.Host):
    def __init__(self, tmp_path):
        sys_root = tmp_path / 'sys'
        (sys_root / 'devices/system/cpu').mkdir(parents=True)
        (sys_root / 'devices/system/cpu/online').write_text('0-3\n')
        (sys_root / 'dev/block/8:0').mkdir(parents=True)
        (sys_root / 'dev/block/8:16').mkdir(parents=True)
        super().__init__(sys_root=str(sys_root))


def fake_v2(tmp_path):
    """A fake cgroup2 mount and the mountinfo that shows it; returns (layout, root)."""
    root = tmp_path / 'cgroup2'
    root.mkdir()
    (root / 'cgroup.controllers').write_text('cpuset cpu io memory hugetlb pids rdma misc\n')
    (root / 'cgroup.subtree_control').write_text('')
    mountinfo = tmp_path / 'mountinfo'
    mountinfo.write_text(
        '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n'
        '30 22 0:26 / %s rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n' % root)
    return _cgroup.detect(str(mountinfo)), root


def make_group(layout, root, parent='vservers', name='web', files=None):
    files = V2_DEFAULTS if files is None else files
    group = layout.group(parent, name)
    group.create()
    path = root / parent / name
    for key, value in files.items():
        (path / key).write_text(value + '\n')
    return group, path


def test_fake_mountinfo_detects_v2(tmp_path):
    layout, root = fake_v2(tmp_path)
    assert layout.version == 2 and layout.unified == str(root) and layout.v1 == {}
    group, path = make_group(layout, root)
    assert (root / 'cgroup.subtree_control').read_text() == '+cpu +cpuset +io +memory +pids'
    assert group.file('memory.max') == str(path / 'memory.max')
    assert group.unified_dir() == str(path)


def test_v2_settings_and_live_apply(tmp_path):
    layout, root = fake_v2(tmp_path)
    host = FakeHost(tmp_path)
    group, path = make_group(layout, root)
    section = _limits.validate({
        'memory': '512M', 'memory_high': '400M', 'swap': '128M', 'nproc': 64,
        'cpu': {'fill_rate': 1, 'interval': 4, 'burst': 10000}, 'cpu_weight': 300, 'cpuset': '1-2',
        'io': {'weight': 500, 'devices': [{'device': '8:0', 'read_bps': '10M', 'write_iops': 200}]},
    }, host, layout)
    written = _limits.apply(group, section, host)
    assert sorted(written) == sorted(['memory.max', 'memory.high', 'memory.swap.max', 'pids.max', 'cpu.max',
                                      'cpu.max.burst', 'cpu.weight', 'cpuset.cpus', 'io.weight', 'io.max'])
    read = {key: (path / key).read_text() for key in V2_DEFAULTS}
    assert read['memory.max'] == str(512 << 20) and read['memory.high'] == str(400 << 20)
    assert read['memory.swap.max'] == str(128 << 20) and read['pids.max'] == '64'
    assert read['cpu.max'] == '25000 100000' and read['cpu.max.burst'] == '10000'
    assert read['cpu.weight'] == '300' and read['cpuset.cpus'] == '1-2' and read['io.weight'] == 'default 500'
    assert read['io.max'] == '8:0 rbps=10485760 riops=max wbps=max wiops=200'
    # the kernel now agrees: nothing to write the second time
    assert _limits.diff_files(group, section, host) == []
    assert _limits.apply(group, section, host) == []
    # drift is seen and put back
    (path / 'pids.max').write_text('100\n')
    assert [s.key for s, _raw in _limits.diff_files(group, section, host)] == ['pids.max']


def test_v2_removing_options_lifts_limits(tmp_path):
    layout, root = fake_v2(tmp_path)
    host = FakeHost(tmp_path)
    files = dict(V2_DEFAULTS, **{'pids.max': '64', 'cpu.max': '25000 100000', 'memory.max': '1048576',
                                 'cpuset.cpus': '1', 'io.max': '8:16 rbps=1024 wbps=max riops=max wiops=max'})
    group, path = make_group(layout, root, files=files)
    _limits.apply(group, {}, host)
    assert (path / 'pids.max').read_text() == 'max' and (path / 'cpu.max').read_text() == 'max 100000'
    assert (path / 'memory.max').read_text() == 'max'
    assert (path / 'cpuset.cpus').read_text() == '\n'        # an empty write resets to the parent's CPUs
    assert (path / 'io.max').read_text() == '8:16 rbps=max wbps=max riops=max wiops=max'


def test_v2_missing_file_for_a_set_limit_is_an_error(tmp_path):
    layout, root = fake_v2(tmp_path)
    host = FakeHost(tmp_path)
    files = {k: v for k, v in V2_DEFAULTS.items() if k != 'memory.swap.max'}
    group, path = make_group(layout, root, files=files)
    assert _limits.apply(group, {}, host) == []              # default value, no file: nothing to do
    with pytest.raises(VServerError) as err:
        _limits.apply(group, {'swap': 0}, host)
    assert err.value.field == 'swap' and 'memory.swap.max' in str(err.value)


def test_failed_write_rolls_back(tmp_path):
    layout, root = fake_v2(tmp_path)
    host = FakeHost(tmp_path)
    group, path = make_group(layout, root)
    real_write = group.write

    def write(key, value):   # the kernel refuses cpu.weight, after memory.max and pids.max went through
        if key == 'cpu.weight':
            raise OSError(22, 'Invalid argument')
        real_write(key, value)
    group.write = write
    section = _limits.validate({'memory': '64M', 'nproc': 10, 'cpu_weight': 50}, host, layout)
    with pytest.raises(VServerError) as err:
        _limits.apply(group, section, host)
    assert err.value.field == 'cpu_weight' and 'refused' in str(err.value)
    assert (path / 'memory.max').read_text() == 'max' and (path / 'pids.max').read_text() == 'max'


def test_check_supported_v2_controllers(tmp_path):
    layout, root = fake_v2(tmp_path)
    (root / 'cgroup.controllers').write_text('cpu memory pids\n')
    _limits.check_supported({'memory': 1 << 20, 'cpu': {'quota': 5000, 'period': 100000}}, layout)
    with pytest.raises(VServerError) as err:
        _limits.check_supported({'io': {'weight': 10}}, layout)
    assert err.value.field == 'io' and 'io controller' in str(err.value)


def fake_v1(tmp_path, memsw=True, bfq=False):
    mounts = {}
    base = tmp_path / 'v1'
    for ctrl in ('memory', 'pids', 'cpu', 'cpuacct', 'cpuset', 'blkio', 'devices', 'freezer'):
        (base / ctrl).mkdir(parents=True)
        mounts[ctrl] = str(base / ctrl)
    (base / 'cpuset' / 'cpuset.cpus').write_text('0-3\n')
    (base / 'cpuset' / 'cpuset.mems').write_text('0\n')
    if memsw:
        (base / 'memory' / 'memory.memsw.limit_in_bytes').write_text('9223372036854771712\n')
    if bfq:
        (base / 'blkio' / 'blkio.bfq.weight').write_text('100\n')
    (base / 'cpu' / 'cpu.cfs_burst_us').write_text('0\n')
    return _cgroup.Layout(1, v1=mounts), base


V1_DEFAULTS = {
    'memory/memory.limit_in_bytes': '9223372036854771712', 'memory/memory.memsw.limit_in_bytes': '9223372036854771712',
    'memory/memory.soft_limit_in_bytes': '9223372036854771712', 'pids/pids.max': 'max',
    'cpu/cpu.cfs_period_us': '100000', 'cpu/cpu.cfs_quota_us': '-1', 'cpu/cpu.cfs_burst_us': '0',
    'cpu/cpu.shares': '1024', 'blkio/blkio.throttle.read_bps_device': '', 'blkio/blkio.throttle.write_bps_device': '',
    'blkio/blkio.throttle.read_iops_device': '', 'blkio/blkio.throttle.write_iops_device': '',
}


def test_v1_mapping(tmp_path):
    layout, base = fake_v1(tmp_path)
    host = FakeHost(tmp_path)
    group = layout.group('vservers', 'web')
    group.create()
    for key, value in V1_DEFAULTS.items():
        ctrl, name = key.split('/')
        (base / ctrl / 'vservers' / 'web' / name).write_text(value + '\n')
    assert (base / 'cpuset' / 'vservers' / 'web' / 'cpuset.cpus').read_text() == '0-3'   # copied from parent
    section = _limits.validate({'memory': '512M', 'memory_high': '256M', 'swap': '64M', 'nproc': 32,
                                'cpu': {'quota': 50000, 'period': 200000}, 'cpu_weight': 50,
                                'io': {'devices': [{'device': '8:0', 'read_bps': '1M', 'write_iops': 9}]}},
                               host, layout)
    _limits.apply(group, section, host)

    def web(ctrl, name):
        return (base / ctrl / 'vservers' / 'web' / name).read_text()
    assert web('memory', 'memory.limit_in_bytes') == str(512 << 20)
    assert web('memory', 'memory.memsw.limit_in_bytes') == str(576 << 20)           # memory + swap
    assert web('memory', 'memory.soft_limit_in_bytes') == str(256 << 20)            # memory_high
    assert web('pids', 'pids.max') == '32'
    assert web('cpu', 'cpu.cfs_quota_us') == '50000' and web('cpu', 'cpu.cfs_period_us') == '200000'
    assert web('cpu', 'cpu.shares') == '512'
    assert web('blkio', 'blkio.throttle.read_bps_device') == '8:0 1048576'
    assert web('blkio', 'blkio.throttle.write_iops_device') == '8:0 9'
    assert _limits.diff_files(group, section, host) == []
    # lifting: -1 for memory and quota, "MAJ:MIN 0" clears a throttle
    _limits.apply(group, {}, host)
    assert web('memory', 'memory.limit_in_bytes') == '-1' and web('cpu', 'cpu.cfs_quota_us') == '-1'
    assert web('blkio', 'blkio.throttle.read_bps_device') == '8:0 0'


def test_v1_memsw_written_first_when_it_grows():
    layout = _cgroup.Layout(1, v1={'memory': '/x'})

    class Group:
        def read(self, key):
            return '1048576'
    limit = _limits.Setting('memory.limit_in_bytes', 4 << 20, 'memory')
    memsw = _limits.Setting('memory.memsw.limit_in_bytes', 8 << 20, 'swap')
    order = _limits._ordered([(limit, '1048576'), (memsw, '1048576')], Group())
    assert [s.key for s, _raw in order] == ['memory.memsw.limit_in_bytes', 'memory.limit_in_bytes']
    memsw_down = _limits.Setting('memory.memsw.limit_in_bytes', 1 << 19, 'swap')
    order = _limits._ordered([(memsw_down, '1048576'), (limit, '1048576')], Group())
    assert [s.key for s, _raw in order][0] == 'memory.limit_in_bytes'
    assert layout.version == 1


def test_burst_written_before_a_lower_quota():
    quota = _limits.Setting('cpu.max', '20000 100000', 'cpu')
    burst = _limits.Setting('cpu.max.burst', 5000, 'cpu.burst')
    order = _limits._ordered([(quota, '50000 100000'), (burst, '40000')], None)
    assert [s.key for s, _raw in order] == ['cpu.max.burst', 'cpu.max']
    burst_up = _limits.Setting('cpu.max.burst', 30000, 'cpu.burst')
    quota_up = _limits.Setting('cpu.max', '60000 100000', 'cpu')
    order = _limits._ordered([(quota_up, '50000 100000'), (burst_up, '5000')], None)
    assert [s.key for s, _raw in order] == ['cpu.max', 'cpu.max.burst']


def test_v1_io_weight_needs_bfq(tmp_path):
    layout = fake_v1(tmp_path / 'a')[0]
    with pytest.raises(VServerError) as err:
        _limits.check_supported({'io': {'weight': 200}}, layout)
    assert err.value.field == 'io.weight' and 'bfq' in str(err.value)
    layout = fake_v1(tmp_path / 'b', bfq=True)[0]
    _limits.check_supported({'io': {'weight': 200}}, layout)
    keys = [s.key for s in _limits.settings({'io': {'weight': 200}}, layout, host=FakeHost(tmp_path))]
    assert 'blkio.bfq.weight' in keys


def test_v1_swap_without_accounting(tmp_path):
    layout = fake_v1(tmp_path, memsw=False)[0]
    with pytest.raises(VServerError) as err:
        _limits.check_supported({'memory': 1 << 20, 'swap': 0}, layout)
    assert err.value.field == 'swap' and 'swapaccount' in str(err.value)


def test_device_rules_are_the_minimal_dev():
    assert _limits.device_rules() == ['c 1:3 rwm', 'c 1:5 rwm', 'c 1:7 rwm', 'c 1:8 rwm', 'c 1:9 rwm',
                                      'c 5:0 rwm', 'c 5:2 rwm', 'c 136:* rwm']


# --- systemd as PID 1: a delegated subtree -------------------------------------------------------------

def fake_proc(tmp_path, comm, exe=None):
    proc = tmp_path / 'proc'
    (proc / '1').mkdir(parents=True)
    (proc / '1' / 'comm').write_text(comm + '\n')
    if exe:
        os.symlink(exe, proc / '1' / 'exe')
    return str(proc)


@pytest.mark.parametrize('comm,exe,expected', [
    ('systemd', '/lib/systemd/systemd', True), ('init', '/usr/lib/systemd/systemd', True),
    ('init', '/sbin/init', False), ('busybox', None, False), ('tini', '/usr/bin/tini', False),
])
def test_systemd_detection(tmp_path, comm, exe, expected):
    assert _cgroup.systemd_is_pid1(fake_proc(tmp_path, comm, exe)) is expected


def test_guest_parent_under_systemd(tmp_path):
    layout, root = fake_v2(tmp_path)
    systemd = fake_proc(tmp_path / 's', 'systemd')
    other = fake_proc(tmp_path / 'o', 'init', '/sbin/init')
    assert _cgroup.guest_parent('vservers', layout, other) == 'vservers'
    assert _cgroup.guest_parent('vservers', layout, systemd) == 'system.slice/vservers.service/vservers'
    # an administrator's own delegated unit is kept as given
    assert _cgroup.guest_parent('machine.slice/guests.scope/vs', layout, systemd) == 'machine.slice/guests.scope/vs'


def test_delegation_status_and_install(tmp_path):
    layout, root = fake_v2(tmp_path)
    systemd = fake_proc(tmp_path / 's', 'systemd')
    unit_dir = tmp_path / 'units'
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[:2] == ['systemctl', 'enable']:   # what systemd does: the unit's cgroup, marked delegated
            path = root / 'system.slice' / 'vservers.service'
            path.mkdir(parents=True)
            os.setxattr(path, 'user.delegate', b'1')

    assert _cgroup.delegation_status(layout, systemd)['delegated'] is False
    actions = _cgroup.ensure_delegation(layout, systemd, str(unit_dir), run)
    assert actions == ['install %s/vservers.service' % unit_dir, 'start vservers.service']
    assert 'Delegate=yes' in (unit_dir / 'vservers.service').read_text()
    assert calls == [['systemctl', 'daemon-reload'], ['systemctl', 'enable', '--now', 'vservers.service']]
    assert _cgroup.delegation_status(layout, systemd) == {
        'systemd': True, 'delegated': True, 'path': str(root / 'system.slice' / 'vservers.service')}
    assert _cgroup.ensure_delegation(layout, systemd, str(unit_dir), run) == []      # idempotent
    other = fake_proc(tmp_path / 'o', 'init', '/sbin/init')
    assert _cgroup.ensure_delegation(layout, other, str(unit_dir), run) == []
    assert _cgroup.delegation_status(layout, other)['systemd'] is False


def test_host_role_installs_the_same_delegated_unit_as_the_runtime():
    """The host role's vservers.service and the one the runtime installs on its own are the same unit (the
    runtime keeps any unit that delegates, so they must not drift apart)."""
    template = os.path.join(os.path.dirname(__file__), '..', '..', 'roles', 'host', 'templates', 'vservers.service.j2')
    with open(template) as handle:
        body = ''.join(line for line in handle if not line.startswith('#'))
    assert body == _cgroup.DELEGATE_UNIT_TEXT
