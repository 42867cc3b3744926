"""cgroup layout detection and both backends, against fake v1 and v2 trees."""
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


def mountinfo(entries):
    return [{'fstype': fs, 'mountpoint': mp, 'super': sup} for fs, mp, sup in entries]


def test_detect_hybrid_v1(tmp_path):
    layout = _cgroup.detect(mountinfo([
        ('cgroup', '/c/cpu', 'rw,cpu'), ('cgroup', '/c/cpuacct', 'rw,cpuacct'), ('cgroup', '/c/memory', 'rw,memory'),
        ('cgroup', '/c/systemd', 'rw,name=systemd'), ('cgroup2', '/c/unified', 'rw')]))
    assert layout.version == 1
    assert layout.v1 == {'cpu': '/c/cpu', 'cpuacct': '/c/cpuacct', 'memory': '/c/memory'}
    assert layout.unified == '/c/unified'


def test_detect_joined_v1_controllers():
    layout = _cgroup.detect(mountinfo([('cgroup', '/c/cpu,cpuacct', 'rw,cpu,cpuacct')]))
    assert layout.v1 == {'cpu': '/c/cpu,cpuacct', 'cpuacct': '/c/cpu,cpuacct'}
    group = layout.group('vservers', 'web')
    assert group.paths() == {'cpu': '/c/cpu,cpuacct/vservers/web'}


def test_detect_pure_v2_and_none():
    assert _cgroup.detect(mountinfo([('cgroup2', '/sys/fs/cgroup', 'rw')])).version == 2
    with pytest.raises(VServerError):
        _cgroup.detect(mountinfo([('ext4', '/', 'rw')]))


def make_v2_root(root, controllers='cpuset cpu io memory hugetlb pids'):
    root.mkdir(exist_ok=True)
    (root / 'cgroup.controllers').write_text(controllers + '\n')
    (root / 'cgroup.subtree_control').write_text('')
    return root


def test_v2_create_enables_controllers_down_the_path(tmp_path):
    root = make_v2_root(tmp_path / 'cg')
    layout = _cgroup.Layout(2, unified=str(root))
    group = layout.group('vservers', 'web')
    # a real kernel creates the interface files; the fake tree gets them when the dir appears
    group.create()
    assert (root / 'cgroup.subtree_control').read_text() == '+cpu +cpuset +io +memory +pids'
    assert (root / 'vservers' / 'web').is_dir()
    web = root / 'vservers' / 'web'
    (web / 'cgroup.procs').write_text('12\n34\n')
    (web / 'memory.current').write_text('4096\n')
    (web / 'cpu.stat').write_text('usage_usec 1500\nuser_usec 1000\n')
    (web / 'cgroup.freeze').write_text('0\n')
    assert group.procs() == [12, 34]
    assert group.memory_usage() == 4096
    assert group.cpu_usage_ns() == 1500000
    assert not group.frozen()
    (web / 'cgroup.events').write_text('populated 1\nfrozen 1\n')
    assert group.freeze(timeout=0.1)
    assert (web / 'cgroup.freeze').read_text() == '1'
    group.write('memory.max', 1024)
    assert group.read('memory.max') == '1024'


def test_v1_cpuset_is_copied_from_the_parent(tmp_path):
    cpuset = tmp_path / 'cpuset'
    cpuset.mkdir()
    (cpuset / 'cpuset.cpus').write_text('0-1\n')
    (cpuset / 'cpuset.mems').write_text('0\n')
    freezer = tmp_path / 'freezer'
    freezer.mkdir()
    layout = _cgroup.Layout(1, v1={'cpuset': str(cpuset), 'freezer': str(freezer)})
    group = layout.group('vservers', 'web')
    group.create()
    assert (cpuset / 'vservers' / 'web' / 'cpuset.cpus').read_text() == '0-1'
    assert (cpuset / 'vservers' / 'web' / 'cpuset.mems').read_text() == '0'
    assert os.path.isdir(freezer / 'vservers' / 'web')
    (freezer / 'vservers' / 'web' / 'freezer.state').write_text('THAWED\n')
    assert not group.frozen()
    with pytest.raises(VServerError):
        group.dir_for('memory')


def test_procs_and_remove_cover_the_whole_subtree(tmp_path):
    """Child cgroups a guest made count: their processes are the guest's, and removal goes bottom-up."""
    root = make_v2_root(tmp_path / 'cg')
    layout = _cgroup.Layout(2, unified=str(root))
    group = layout.group('vservers', 'web')
    group.create()
    web = root / 'vservers' / 'web'
    (web / 'esc' / 'deeper').mkdir(parents=True)
    (web / 'cgroup.procs').write_text('')
    (web / 'esc' / 'cgroup.procs').write_text('12\n')
    (web / 'esc' / 'deeper' / 'cgroup.procs').write_text('34\n56\n')
    assert group.procs() == [12, 34, 56]
    assert _cgroup._subtree(str(web)) == [str(web / 'esc' / 'deeper'), str(web / 'esc'), str(web)]
    # a fake cgroup directory holds files, so rmdir fails: the error names every directory left
    with pytest.raises(VServerError) as err:
        group.remove(timeout=0.1)
    assert str(web / 'esc' / 'deeper') in str(err.value) and '12 34 56' in str(err.value)
    for path in (web / 'esc' / 'deeper', web / 'esc', web):
        for entry in path.iterdir():
            if entry.is_file():
                entry.unlink()
    group.remove(timeout=0.1)
    assert not web.exists()
