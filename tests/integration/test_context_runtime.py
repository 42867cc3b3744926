"""A started guest seen from outside (kernel files) and from inside (what its root can and cannot do)."""
import os
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime, _runtime_views, _procfs as P
from helpers import build_static, guest_sh, vserver

pytestmark = pytest.mark.cgroup


def all_ns_inodes():
    seen = set()
    for pid in P.pids():
        for kind in _runtime.NAMESPACES:
            ino = P.ns_inode(pid, kind)
            if ino:
                seen.add(ino)
    return seen


def test_started_guest_from_outside(host_paths, make_guest):
    doc = make_guest('outside', hostname='outside.test', start=True)
    rt = _runtime.Runtime(host_paths, 'outside')
    pid = rt.init_pid()
    assert pid
    for kind in _runtime.NAMESPACES:
        assert P.ns_inode(pid, kind) != P.ns_inode(os.getpid(), kind), kind
    status = P.read_status(pid)
    assert status['NSpid'].split()[-1] == '1'       # PID 1 of its own PID namespace
    assert status['Name'] == 'init'                 # busybox init
    assert int(status['CapInh'], 16) == 0 and int(status['CapAmb'], 16) == 0
    with open('/proc/%d/cgroup' % pid) as handle:
        cgroups = handle.read()
    assert '/%s/outside' % host_paths.cgroup_parent in cgroups
    assert pid in rt.group.procs()
    # the guest's root is its tree: /proc/PID/root resolves to it
    assert os.path.samefile('/proc/%d/root/etc/passwd' % pid, os.path.join(doc['root'], 'etc/passwd'))
    out = guest_sh(host_paths, 'outside', 'hostname; ip -o link; cat /proc/uptime')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == 'outside.test'
    links = [line for line in lines if ': ' in line and 'link/' in line]
    assert len(links) == 1 and ': lo:' in links[0] and 'UP' in links[0]
    assert float(lines[-1].split()[0]) < 30, 'uptime starts at guest start'
    assert P.uptime() > float(lines[-1].split()[0])


def test_guest_uptime_starts_at_its_start_to_the_nanosecond(host_paths, make_guest):
    """The boottime offset is exact: the guest's /proc/uptime, read right after the start, is no more than the time
    the host saw pass since it asked for the start (a whole-second offset would put it anywhere up to 1 s above)."""
    before = P.boottime_now()
    make_guest('uptimed', start=True)
    out = guest_sh(host_paths, 'uptimed', 'cat /proc/uptime')
    elapsed = P.boottime_now() - before
    assert out.returncode == 0, out.stderr
    uptime = float(out.stdout.split()[0])
    assert 0 <= uptime <= elapsed + 0.01, (uptime, elapsed)    # /proc/uptime has two decimals


def test_guest_sees_only_its_own_processes(host_paths, make_guest):
    make_guest('seer', start=True)
    make_guest('other', start=True)
    other_pid = _runtime.Runtime(host_paths, 'other').init_pid()
    out = guest_sh(host_paths, 'seer', 'ls /proc | grep -E "^[0-9]+$"; echo ---; '
                                       'for p in /proc/[0-9]*; do cat $p/comm; done')
    assert out.returncode == 0, out.stderr
    pids = [int(x) for x in out.stdout.split('---')[0].split()]
    assert 1 in pids and len(pids) <= 5, pids          # init, the exec'd shell and its children only
    assert other_pid not in pids or other_pid < 10     # host pids of the other guest are not visible
    comms = out.stdout.split('---')[1].split()
    assert comms.count('init') == 1                    # its own init, not the other guest's nor the host's
    # the spectator view sees both, labelled
    rows = {row['pid']: row for row in _runtime_views.processes(host_paths)}
    assert rows[other_pid]['guest'] == 'other' and rows[other_pid]['guest_pid'] == 1
    assert rows[os.getpid()]['xid'] == 0


def test_guest_root_cannot_write_kernel_settings_or_reach_devices(host_paths, make_guest):
    make_guest('locked', start=True)
    out = guest_sh(host_paths, 'locked', 'echo evil > /proc/sys/kernel/hostname; echo rc=$?; '
                                         'echo 1 > /proc/sys/vm/drop_caches; echo rc=$?; '
                                         'touch /sys/kernel/x 2>&1; echo rc=$?; ls /dev; '
                                         'grep -c . /proc/partitions')
    assert out.stdout.count('rc=0') == 0, out.stdout
    assert 'Read-only file system' in out.stderr + out.stdout
    devs = set(out.stdout.split())
    assert {'null', 'zero', 'full', 'random', 'urandom', 'tty', 'console', 'ptmx', 'pts', 'shm'} <= devs
    assert not any(d.startswith(('vd', 'sd', 'nvme', 'loop', 'mem', 'kmsg')) for d in devs)
    with open('/proc/sys/kernel/hostname') as handle:
        assert handle.read().strip() != 'evil'


def test_double_chroot_escape_does_not_reach_the_host(host_paths, make_guest, tmp_path):
    doc = make_guest('jail', start=True)
    marker = tmp_path / 'host-only-marker'
    marker.write_text('host secret\n')
    with open(os.path.join(doc['root'], 'etc', 'hostname'), 'w') as handle:
        handle.write('jail-tree')
    binary = os.path.join(doc['root'], 'bin', 'escape')
    build_static('chroot_escape.c', binary)
    out = vserver(host_paths, 'jail', 'exec', '/bin/escape', str(marker))
    assert 'ESCAPED' not in out.stdout
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'contained' in out.stdout and 'jail' in out.stdout


def test_stop_leaves_nothing_behind(host_paths, make_guest):
    doc = make_guest('gone', start=True)
    rt = _runtime.Runtime(host_paths, 'gone')
    pid = rt.init_pid()
    inodes = set(rt.record['ns'].values())
    assert inodes <= all_ns_inodes()
    cg_paths = list(rt.group.paths().values())
    out = guest_sh(host_paths, 'gone', 'sleep 600 >/dev/null 2>&1 & sleep 600 >/dev/null 2>&1 & true')
    assert out.returncode == 0
    assert len(rt.group.procs()) >= 3
    t0 = time.monotonic()
    _runtime.stop(host_paths, doc)
    assert time.monotonic() - t0 < doc['stop_timeout'] + 3
    deadline = time.monotonic() + 5
    while os.path.exists('/proc/%d' % pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the reaper (tests/reaper.py) collects the exited init
    assert not os.path.exists('/proc/%d' % pid)
    assert not any(os.path.exists(p) for p in cg_paths)
    assert not os.path.exists(rt.dir)
    with open('/proc/self/mountinfo') as handle:
        assert host_paths.run_dir not in handle.read()
    assert not inodes & all_ns_inodes()
    assert _runtime.status(host_paths, doc)['state'] == 'stopped'


def test_stop_kills_an_init_that_ignores_the_signal(host_paths, make_guest):
    doc = make_guest('stubborn', init=['/bin/sh', '-c', 'trap "" TERM; while :; do sleep 1; done'],
                     stop_timeout=1, start=True)
    t0 = time.monotonic()
    _runtime.stop(host_paths, doc)
    assert 0.9 < time.monotonic() - t0 < 5
    assert not _runtime.Runtime(host_paths, 'stubborn').group.exists()


def test_freeze_and_thaw(host_paths, make_guest):
    doc = make_guest('ice', init=['/bin/sh', '-c', 'while :; do echo tick >> /tmp/ticks; sleep 0.1; done'],
                     start=True, stop_signal='SIGKILL')
    ticks = os.path.join(doc['root'], 'tmp', 'ticks')
    time.sleep(0.5)
    _runtime.freeze(host_paths, doc)
    assert _runtime.status(host_paths, doc)['state'] == 'frozen'
    before = open(ticks).read().count('tick')
    time.sleep(0.6)
    assert open(ticks).read().count('tick') == before   # nothing runs while frozen
    _runtime.thaw(host_paths, doc)
    time.sleep(0.6)
    assert open(ticks).read().count('tick') > before
    assert _runtime.status(host_paths, doc)['state'] == 'running'


def test_start_failure_rolls_back(host_paths, make_guest):
    from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
    doc = make_guest('broken', init=['/sbin/does-not-exist'])
    with pytest.raises(VServerError) as err:
        _runtime.start(host_paths, doc)
    assert 'exec' in str(err.value)
    rt = _runtime.Runtime(host_paths, 'broken')
    assert not rt.group.exists() and not os.path.exists(rt.dir)


def test_init_log(host_paths, make_guest):
    make_guest('chatty', start=True)
    time.sleep(0.3)
    with open(host_paths.log_file('chatty')) as handle:
        assert 'guest chatty up' in handle.read()
