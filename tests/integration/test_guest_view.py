"""A guest's view of its own limits in /proc (LXCFS), on a private LXCFS instance of the test's own."""
import os
import shutil
import signal
import time
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _lxcfs, _mgr_context, _mgr_limits, _runtime
from helpers import guest_sh, wait_for

pytestmark = [pytest.mark.cgroup,
              pytest.mark.skipif(not os.path.exists('/usr/bin/lxcfs'), reason='lxcfs is not installed (make apt)')]
MIB = 1 << 20


class Lxcfs:
    """One private LXCFS: its own mount point and pid file under the test's tmp dir; ended by its PID."""

    def __init__(self, base):
        self.dir = os.path.join(str(base), 'lxcfs')
        self.pidfile = os.path.join(str(base), 'lxcfs.pid')
        self.log = os.path.join(str(base), 'lxcfs.log')
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None

    def start(self):
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(['/usr/bin/lxcfs', '-f', '-l', '--enable-cfs', '-p', self.pidfile, self.dir],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        assert wait_for(lambda: _lxcfs.unavailable(self.dir) is None or self.proc.poll() is not None, 10)
        if self.proc.poll() is not None and not os.path.exists('/dev/fuse'):
            pytest.skip('no /dev/fuse here (FUSE module not loaded): LXCFS cannot run')
        assert self.proc.poll() is None, open(self.log).read()[-2000:]

    def stop(self, sig=signal.SIGTERM):
        """SIGTERM: LXCFS unmounts and exits (~5 s: its loadavg thread); SIGKILL (teardown): its mount is left,
        unmounted here."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        for dummy in range(4):  # the daemon unmounts on exit; a killed one leaves its mount behind
            if _lxcfs.mount_id(self.dir) is None and not os.path.ismount(self.dir):
                break
            subprocess.run(['umount', '-l', self.dir], capture_output=True, check=False)


@pytest.fixture
def lxcfs(tmp_path, monkeypatch):
    inst = Lxcfs(tmp_path)
    inst.start()
    monkeypatch.setenv(_lxcfs.ENV, inst.dir)
    yield inst
    inst.stop(signal.SIGKILL)


def _procps_free(root):
    """The host's procps `free` (reads /proc/meminfo) with its libraries, copied into a busybox guest tree. Busybox's
    own `free` asks sysinfo(2) for the totals, which LXCFS cannot answer (docs/guest-view.md)."""
    out = subprocess.run(['ldd', '/usr/bin/free'], capture_output=True, text=True, check=True).stdout
    libs = [part for line in out.splitlines() for part in line.split() if part.startswith('/')]
    for path in ['/usr/bin/free'] + libs:
        dest = os.path.join(root, path.lstrip('/'))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.unlink(dest)
        shutil.copy2(os.path.realpath(path), dest)


def _meminfo(text):
    return {line.split(':')[0]: int(line.split()[1]) * 1024 for line in text.splitlines() if line.endswith('kB')}


PROBE = ('/usr/bin/free -b | sed -n 2p; nproc; cat /proc/uptime; grep -c ^processor /proc/cpuinfo; '
         'grep -c "^cpu[0-9]" /proc/stat')


def _probe(paths, name):
    out = guest_sh(paths, name, PROBE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5, repr(out)
    return {'mem_total': int(lines[0].split()[1]), 'nproc': int(lines[1]), 'uptime': float(lines[2].split()[0]),
            'cpuinfo': int(lines[3]), 'stat_cpus': int(lines[4])}


def test_guest_sees_its_own_memory_cpus_and_uptime(host_paths, make_guest, lxcfs):
    with open('/proc/meminfo') as handle:
        host_meminfo = handle.read()
    with open('/proc/uptime') as handle:
        host_uptime = float(handle.read().split()[0])
    for name, limits in (('vs18v-view', {'memory': 64 * MIB, 'cpuset': '0'}), ('vs18v-view2', {'memory': 96 * MIB})):
        doc = make_guest(name, limits=limits)
        _procps_free(doc['root'])
        _runtime.start(host_paths, doc)
    seen = _probe(host_paths, 'vs18v-view')
    assert seen['mem_total'] == 64 * MIB, seen
    assert seen['nproc'] == 1 and seen['cpuinfo'] == 1 and seen['stat_cpus'] == 1, seen
    assert seen['uptime'] < 30, seen
    other = _probe(host_paths, 'vs18v-view2')
    assert other['mem_total'] == 96 * MIB, other        # a second guest sees its own
    assert other['nproc'] == other['cpuinfo'] == other['stat_cpus'] == os.cpu_count(), other
    # nothing of LXCFS's directory nor of the host path is reachable: one read-only mount per file, rooted at it
    info = guest_sh(host_paths, 'vs18v-view', 'cat /proc/self/mountinfo; echo x > /proc/meminfo; ls /proc/meminfo/..')
    lx = [line.split() for line in info.stdout.splitlines() if ' - fuse.lxcfs ' in line]
    assert sorted(f[3] for f in lx) == sorted('/' + rel for rel in _lxcfs.FILES), info.stdout
    for fields in lx:
        assert fields[3] == fields[4] and {'ro', 'nosuid', 'nodev', 'noexec'} <= set(fields[5].split(',')), fields
    assert lxcfs.dir not in info.stdout and 'cgroup' not in ' '.join(f[3] for f in lx)
    assert 'Read-only file system' in info.stderr and 'Not a directory' in info.stderr, info.stderr
    # changed live: the next read answers with the new limit
    _mgr_limits.ensure(host_paths, 'vs18v-view', {'memory': '80M'})
    assert _meminfo(guest_sh(host_paths, 'vs18v-view', 'cat /proc/meminfo').stdout)['MemTotal'] == 80 * MIB
    # the host's own files are untouched
    with open('/proc/meminfo') as handle:
        assert _meminfo(handle.read())['MemTotal'] == _meminfo(host_meminfo)['MemTotal']
    with open('/proc/uptime') as handle:
        assert float(handle.read().split()[0]) >= host_uptime


def test_guest_keeps_its_view_across_an_lxcfs_restart(host_paths, make_guest, lxcfs):
    doc = make_guest('vs18v-rst', limits={'memory': 64 * MIB})
    _procps_free(doc['root'])
    _runtime.start(host_paths, doc)
    assert _probe(host_paths, 'vs18v-rst')['mem_total'] == 64 * MIB
    lxcfs.stop()
    lxcfs.start()
    stale = guest_sh(host_paths, 'vs18v-rst', 'cat /proc/meminfo')   # the old daemon's mounts: ENOTCONN
    assert stale.returncode != 0 and 'not connected' in stale.stderr, stale
    rt = _runtime.Runtime(host_paths, 'vs18v-rst')
    fd = rt.open_init()
    try:
        assert '/proc/meminfo' in _lxcfs.reattach(fd)
    finally:
        os.close(fd)
    assert _probe(host_paths, 'vs18v-rst')['mem_total'] == 64 * MIB


def test_guest_starts_with_a_warning_when_lxcfs_is_not_running(host_paths, make_guest, tmp_path, monkeypatch):
    monkeypatch.setenv(_lxcfs.ENV, str(tmp_path / 'no-lxcfs'))   # nothing mounted there
    make_guest('vs18v-nolx')
    result = _mgr_context.ensure(host_paths, 'vs18v-nolx', {'name': 'vs18v-nolx', 'state': 'started'})
    assert result.changed and _runtime.Runtime(host_paths, 'vs18v-nolx').state() == 'running'
    assert any('LXCFS is not running' in w and 'vs18v-nolx' in w for w in result.warnings), result.warnings
    with open('/proc/meminfo') as handle:
        host_total = _meminfo(handle.read())['MemTotal']
    out = guest_sh(host_paths, 'vs18v-nolx', 'cat /proc/meminfo; grep -c " /proc/meminfo " /proc/self/mountinfo')
    assert _meminfo(out.stdout)['MemTotal'] == host_total and out.stdout.split()[-1] == '0', out.stdout
    # turned off per guest: no warning, the host's files
    _mgr_context.ensure(host_paths, 'vs18v-nolx', {'name': 'vs18v-nolx', 'state': 'stopped'})
    result = _mgr_context.ensure(host_paths, 'vs18v-nolx', {'name': 'vs18v-nolx', 'state': 'started', 'lxcfs': False})
    assert not any('LXCFS' in w for w in result.warnings), result.warnings


def test_the_host_supervisor_refreshes_guests_when_lxcfs_comes_back(host_paths, make_guest, lxcfs, tmp_path):
    """vserver-supervise (the host's one daemon) sees LXCFS's mount change and gives the running guests fresh
    mounts: after LXCFS stopped (it unmounts itself, the supervisor's probe does not hold it busy) and started
    again."""
    import sys
    from helpers import TOP, env_for
    make_guest('vs18v-sup', start=True, limits={'memory': 64 * MIB})
    log = open(str(tmp_path / 'supervise.log'), 'ab')
    sup = subprocess.Popen([sys.executable, os.path.join(TOP, 'roles', 'host', 'files', 'vserver_supervise.py'),
                            '--interval', '0.5'], env=env_for(host_paths), stdin=subprocess.DEVNULL, stdout=log,
                           stderr=log)
    try:
        time.sleep(1)
        lxcfs.stop()
        assert _lxcfs.mount_id(lxcfs.dir) is None      # unmounted by LXCFS itself on the way out
        lxcfs.start()
        ok = wait_for(lambda: _meminfo(guest_sh(host_paths, 'vs18v-sup', 'cat /proc/meminfo').stdout
                                       ).get('MemTotal') == 64 * MIB, 30, 0.3)
        assert ok, open(str(tmp_path / 'supervise.log')).read()
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(15)
        log.close()
