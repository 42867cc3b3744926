"""A guest's root cannot loosen its own confinement: its cgroup limits hold, and stop/absent end it whatever child
cgroups it made. Hostile static C program: files/cgroup_escape.c (runs only inside a guest)."""
import os
import shutil
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _config, _runtime, _limits, _mgr_context, _kernel as K, _procfs as P)
from helpers import build_static, needs_userns, vserver

pytestmark = pytest.mark.cgroup
LAYOUT = _cgroup.detect()
LIMITS = {'memory': '64M', 'nproc': 64, 'cpu': {'fill_rate': 1, 'interval': 4}}
NO_FILTER = {'seccomp': {'mode': 'unconfined'}}


@pytest.fixture(scope='module')
def escape_binary(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('escape') / 'cgroup_escape')
    return build_static('cgroup_escape.c', out)


def limited_guest(make_guest, name, binary, **extra):
    doc = make_guest(name, limits=_limits.validate(LIMITS, layout=LAYOUT), stop_timeout=2, **extra)
    shutil.copy(binary, os.path.join(doc['root'], 'bin', 'escape'))
    return doc


def limit_files(group):
    keys = ('memory.max', 'pids.max', 'cpu.max') if LAYOUT.version == 2 else \
        ('memory.limit_in_bytes', 'pids.max', 'cpu.cfs_quota_us')
    return {key: group.read(key) for key in keys}


def run_escape(host_paths, name, mode):
    out = vserver(host_paths, name, 'exec', '/bin/escape', mode, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(line.split(' ', 1) for line in out.stdout.splitlines())


def test_limits_hold_against_the_guest_root(host_paths, make_guest, escape_binary):
    doc = limited_guest(make_guest, 'vst-lift', escape_binary)
    _runtime.start(host_paths, doc)
    group = _runtime.Runtime(host_paths, 'vst-lift', LAYOUT).group
    before = limit_files(group)
    assert before['pids.max'] == '64'
    steps = run_escape(host_paths, 'vst-lift', 'lift')
    assert steps['unshare_user'] == 'Operation not permitted', steps
    assert steps['unshare_mnt_cgroup'] == 'Operation not permitted', steps
    assert all(value != 'ok' for key, value in steps.items()), steps
    assert limit_files(group) == before


def _nsdelegate():
    """cgroup v2 host whose cgroup2 mount has nsdelegate: a cgroup namespace root is a delegation boundary."""
    return LAYOUT.version == 2 and any(
        m['fstype'] == 'cgroup2' and 'nsdelegate' in m['super'].split(',') for m in P.read_mountinfo())


@needs_userns
def test_unconfined_guest_can_lift_its_limits(host_paths, make_guest, escape_binary):
    """What the filter stops, shown without it (docs/security.md: `unconfined` reopens this on cgroup v1 and on
    cgroup2 without nsdelegate; with nsdelegate the kernel refuses writes to the namespace root's limit files)."""
    doc = limited_guest(make_guest, 'vst-lift2', escape_binary, capabilities=NO_FILTER)
    _runtime.start(host_paths, doc)
    group = _runtime.Runtime(host_paths, 'vst-lift2', LAYOUT).group
    before = limit_files(group)
    steps = run_escape(host_paths, 'vst-lift2', 'lift')
    assert steps['unshare_user'] == 'ok', steps
    after = limit_files(group)
    if _nsdelegate():
        assert after == before and all(steps.get('v2_' + key) != 'ok' for key in before), (steps, after)
    else:
        assert after != before, (steps, before, after)


def _alive(pids):
    return [pid for pid in pids if P.read_stat(pid) is not None and P.read_stat(pid)[0] not in ('Z', 'X')]


@needs_userns
@pytest.mark.parametrize('how', ['stop', 'absent', 'stop-frozen'])
def test_stop_and_absent_end_a_guest_hiding_in_child_cgroups(host_paths, make_guest, escape_binary, how):
    """stop-frozen: the guest also froze its child cgroup in the v1 freezer, where SIGKILL waits for a thaw."""
    if how == 'stop-frozen' and 'freezer' not in LAYOUT.v1:
        pytest.skip('no cgroup v1 freezer (on cgroup v2 a frozen process dies of SIGKILL)')
    name = 'vst-hide-' + how
    doc = limited_guest(make_guest, name, escape_binary, capabilities=NO_FILTER)
    _runtime.start(host_paths, doc)
    rt = _runtime.Runtime(host_paths, name, LAYOUT)
    tops = rt.group.paths()
    steps = run_escape(host_paths, name, 'hide-frozen' if how == 'stop-frozen' else 'hide')
    hidden = int(steps['hidden'])
    assert hidden == len(tops), steps      # every hierarchy the guest is in
    # processes now sit in child cgroups the guest made, seen from the host
    children = {ctrl: os.path.join(top, 'esc') for ctrl, top in tops.items() if os.path.isdir(os.path.join(top, 'esc'))}
    assert children, steps
    inside = set()
    for path in children.values():
        with open(os.path.join(path, 'cgroup.procs')) as handle:
            inside.update(int(x) for x in handle.read().split())
    assert len(inside) >= 3, (steps, children)
    if how == 'stop-frozen':
        state = os.path.join(children['freezer'], 'freezer.state')
        deadline = time.monotonic() + 10
        while open(state).read().strip() != 'FROZEN' and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open(state).read().strip() == 'FROZEN'
    t0 = time.monotonic()
    if how != 'absent':
        _runtime.stop(host_paths, doc)
    else:
        result = _mgr_context.ensure_context(host_paths, {'name': name, 'state': 'absent'})
        assert result['changed']
        assert _config.load(host_paths, name) is None
    assert time.monotonic() - t0 < doc['stop_timeout'] + 10
    deadline = time.monotonic() + 10
    while _alive(inside) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(inside)
    assert not any(os.path.exists(path) for path in list(tops.values()) + list(children.values()))
    with open('/proc/self/mountinfo') as handle:
        assert host_paths.run_dir not in handle.read()
    assert _runtime.status(host_paths, doc)['state'] == 'stopped'


def test_absent_keeps_the_config_until_the_guest_is_gone(host_paths, make_guest, tmp_path):
    """A cgroup that cannot be removed (here: a child cgroup with a mount on it, a real kernel EBUSY) makes `absent`
    fail naming it, with the config kept; once it can go, `absent` finishes."""
    doc = make_guest('vst-keep', stop_timeout=1, stop_signal='SIGKILL')
    _runtime.start(host_paths, doc)
    group = _runtime.Runtime(host_paths, 'vst-keep', LAYOUT).group
    top = group.paths()['memory' if LAYOUT.version == 1 else 'unified']
    child = os.path.join(top, 'held')
    os.mkdir(child)
    source = tmp_path / 'bind-source'
    source.mkdir()
    K.mount(str(source), child, None, K.MS_BIND)
    try:
        with pytest.raises(Exception) as err:
            _mgr_context.ensure_context(host_paths, {'name': 'vst-keep', 'state': 'absent'})
        assert child in str(err.value), err.value
        assert _config.load(host_paths, 'vst-keep') is not None      # the config stays: the guest is not gone
        assert os.path.isdir(child)
    finally:
        K.umount(child, K.MNT_DETACH)
    result = _mgr_context.ensure_context(host_paths, {'name': 'vst-keep', 'state': 'absent'})
    assert result['changed'] and _config.load(host_paths, 'vst-keep') is None
    assert not any(os.path.exists(path) for path in group.paths().values())
