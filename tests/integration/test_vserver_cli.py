"""The vserver command: start/stop/status exit codes, exec, stat and ps tables."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime
from helpers import vserver

pytestmark = pytest.mark.cgroup


def test_cli_lifecycle_and_tables(host_paths, make_guest):
    make_guest('cli-a', xid=410, stop_signal='SIGKILL')
    make_guest('cli-b', xid=411, stop_signal='SIGKILL', start=True)
    out = vserver(host_paths, 'cli-a', 'status')
    assert out.returncode == 3 and 'stopped' in out.stdout
    out = vserver(host_paths, 'cli-a', 'start')
    assert out.returncode == 0, out.stderr
    out = vserver(host_paths, 'cli-a', 'status')
    assert out.returncode == 0 and 'running' in out.stdout
    out = vserver(host_paths, 'cli-a', 'exec', 'sh', '-c', 'echo $$; hostname; exit 7')
    assert out.returncode == 7 and out.stdout.split()[1] == 'cli-a'
    out = vserver(host_paths, 'stat')
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ['CTX', 'PROC', 'RSS', 'DISK', 'CPUTIME', 'UPTIME', 'STATE', 'NAME', 'ADDRESSES']
    assert [r[0] for r in rows[1:]] == ['410', '411'] and all(r[6] == 'running' for r in rows[1:])
    assert all(r[3] == 'none' for r in rows[1:])   # no disk limit: their trees share the host filesystem
    out = vserver(host_paths, 'ps')
    init_a = _runtime.Runtime(host_paths, 'cli-a').init_pid()
    line = [ln for ln in out.stdout.splitlines() if ln.split()[0] == str(init_a)][0].split()
    assert line[1] == '410' and line[2] == '1' and line[3] == 'cli-a'
    assert any(ln.split()[1] == '0' and '(host)' in ln for ln in out.stdout.splitlines()[1:])
    out = vserver(host_paths, 'cli-a', 'freeze')
    assert out.returncode == 0 and vserver(host_paths, 'cli-a', 'status').stdout.startswith('cli-a is frozen')
    assert vserver(host_paths, 'cli-a', 'thaw').returncode == 0
    assert vserver(host_paths, 'cli-a', 'restart').returncode == 0
    assert _runtime.Runtime(host_paths, 'cli-a').init_pid() != init_a
    assert vserver(host_paths, 'cli-a', 'stop').returncode == 0
    assert vserver(host_paths, 'cli-a', 'status').returncode == 3
    bad = vserver(host_paths, 'nosuch', 'start')
    assert bad.returncode == 1 and 'no such guest' in bad.stderr
    assert vserver(host_paths, 'cli-a', 'bogus').returncode == 2


def test_exec_gets_the_guest_rlimits_and_bounding_set(host_paths, make_guest):
    make_guest('cli-rl', stop_signal='SIGKILL', start=True,
               limits={'rlimits': {'nofile': {'soft': 512, 'hard': 1024}}})
    out = vserver(host_paths, 'cli-rl', 'exec', 'sh', '-c', 'ulimit -Sn; ulimit -Hn; grep CapBnd /proc/self/status')
    assert out.returncode == 0, out.stderr
    soft, hard, capbnd = out.stdout.splitlines()
    assert (soft, hard) == ('512', '1024')
    with open('/proc/%d/status' % _runtime.Runtime(host_paths, 'cli-rl').init_pid()) as handle:
        init_bnd = [line for line in handle.read().splitlines() if line.startswith('CapBnd')][0]
    assert capbnd.split()[1] == init_bnd.split()[1]


def test_stop_clears_what_a_dead_init_left(host_paths, make_guest):
    make_guest('cli-dead', init=['/bin/true'], stop_signal='SIGKILL')
    assert vserver(host_paths, 'cli-dead', 'start').returncode == 0
    rt = _runtime.Runtime(host_paths, 'cli-dead')
    assert vserver(host_paths, 'cli-dead', 'status').returncode == 3   # init exited at once
    assert rt.leftovers()
    out = vserver(host_paths, 'cli-dead', 'stop')
    assert out.returncode == 0 and 'stop' in out.stdout
    assert not _runtime.Runtime(host_paths, 'cli-dead').leftovers()
    assert vserver(host_paths, 'cli-dead', 'stop').stdout.strip() == 'cli-dead: nothing to do'


def test_stat_shows_the_disk_limit_or_none(host_paths, make_guest):
    make_guest('disk-none', xid=412)
    make_guest('disk-64m', xid=413, limits={'disk': {'size': 64 << 20, 'backend': 'loop', 'fstype': 'ext4'}})
    out = vserver(host_paths, 'stat')
    assert out.returncode == 0, out.stderr
    rows = {line.split()[7]: line.split() for line in out.stdout.splitlines()[1:]}
    assert rows['disk-none'][3] == 'none' and rows['disk-64m'][3] == '64.0M'
