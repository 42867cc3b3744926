"""Runs inside the cgroup v2 VM only (`make test-v2`; tests/vm is not collected on the host).

Proves the VM pipeline end to end: the VM is a v2-only host, and a guest started with the real runtime
lives in its own v2 cgroup with the controllers delegated, freezes, is limited by pids.max as seen from
inside, and stops leaving nothing behind.
"""
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _runtime, _procfs as P
from ansible_collections.vserver.core.plugins.module_utils import _enter

pytestmark = pytest.mark.cgroup

CONTROLLERS = ('cpu', 'cpuset', 'io', 'memory', 'pids')


def guest_sh(paths, doc, script):
    """Run ``script`` inside the guest; return (exit code, output) through a file in the guest's tree."""
    out = '/tmp/.v2smoke-out'
    rc = _enter.enter_guest(paths, doc, ['/bin/sh', '-c', '( %s ) > %s 2>&1' % (script, out)])
    with open(doc['root'] + out) as handle:
        return rc, handle.read()


def test_vm_is_a_cgroup_v2_only_host():
    layout = _cgroup.detect()
    assert layout.version == 2
    assert layout.unified == '/sys/fs/cgroup'
    assert layout.v1 == {}
    with open('/proc/mounts') as handle:
        assert not [line for line in handle if line.split()[2] == 'cgroup']
    with open('/sys/fs/cgroup/cgroup.controllers') as handle:
        available = handle.read().split()
    for ctrl in CONTROLLERS:
        assert ctrl in available, ctrl


def test_guest_lifecycle_on_v2(host_paths, make_guest):
    doc = make_guest('v2smoke', start=True)
    rt = _runtime.Runtime(host_paths, 'v2smoke')
    pid = rt.init_pid()
    assert pid
    start_ticks = P.read_stat(pid)[2]
    group = rt.group
    assert isinstance(group, _cgroup.CgroupV2)
    parent = os.path.join('/sys/fs/cgroup', host_paths.cgroup_parent)
    path = os.path.join(parent, 'v2smoke')
    assert group.path == path and os.path.isdir(path)
    assert pid in group.procs()
    with open('/proc/%d/cgroup' % pid) as handle:
        assert handle.read() == '0::/%s/v2smoke\n' % host_paths.cgroup_parent

    # controllers are delegated down to the guest's cgroup: its interface files exist
    with open(os.path.join(parent, 'cgroup.subtree_control')) as handle:
        enabled = handle.read().split()
    for ctrl in CONTROLLERS:
        assert ctrl in enabled, ctrl
    for key in ('memory.max', 'memory.high', 'pids.max', 'cpu.max', 'cpu.weight', 'io.max', 'cpuset.cpus',
                'cgroup.freeze', 'cgroup.kill'):
        assert os.path.exists(os.path.join(path, key)), key
    assert int(group.read('pids.current')) >= 1
    assert group.memory_usage() > 0

    # inside, the cgroup namespace makes the guest's cgroup its root
    rc, text = guest_sh(host_paths, doc, 'cat /proc/self/cgroup')
    assert rc == 0, text
    assert text.splitlines() == ['0::/']

    # pids.max is enforced on what the guest does (capped loop: at most 24 sleepers)
    group.write('pids.max', '6')
    rc, text = guest_sh(host_paths, doc, 'n=0; for i in $(seq 1 24); do sleep 3 & n=$((n+1)); done; echo started')
    assert 'fork' in text.lower() or 'resource temporarily unavailable' in text.lower(), text
    with open(os.path.join(path, 'pids.events')) as handle:
        assert int(handle.read().split()[1]) > 0
    group.write('pids.max', 'max')

    # freeze / thaw through cgroup.freeze
    _runtime.freeze(host_paths, doc)
    assert rt.state() == 'frozen'
    with open(os.path.join(path, 'cgroup.events')) as handle:
        assert 'frozen 1' in handle.read()
    _runtime.thaw(host_paths, doc)
    assert rt.state() == 'running'

    # stop leaves no process and no cgroup behind
    _runtime.stop(host_paths, dict(doc, stop_timeout=2))
    assert _runtime.Runtime(host_paths, 'v2smoke').init_pid() is None
    assert P.read_stat(pid) is None or P.read_stat(pid)[2] != start_ticks
    assert not os.path.exists(path)
