"""Per-uid kernel counters a guest shares with host root, and the bound a guest's limits put on them.

In this (privileged) mode a guest's root is host uid 0, so host-wide per-user counters such as
fs.inotify.max_user_instances count the guest's instances together with host root's: the mode cannot give a
guest a counter of its own (docs/security.md, "Per-uid kernel resources"). What bounds a guest is its own limits:
each process holds at most RLIMIT_NOFILE descriptors and the pids limit bounds its processes. A hostile static C
program inside a guest with rlimits nofile 16 and nproc 6 forks as many holders as it can, each opening inotify
instances until it fails: it is stopped by its own RLIMIT_NOFILE, holds at most nofile x nproc instances, and host
root's inotify_init1 keeps working meanwhile. (A default guest has no such bound: that is not run here, since it
would starve host root's inotify on a shared machine; the docs say so.)
"""
import ctypes
import os
import select
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _limits
from helpers import TOP, env_for, VSERVER


LAYOUT = _cgroup.detect()
NOFILE, NPROC = 16, 6
IN_CLOEXEC = 0o2000000


@pytest.fixture(scope='module')
def hog_binary(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('hog') / 'inotify_hog')
    subprocess.run(['gcc', '-static', '-O1', '-o', out, os.path.join(TOP, 'tests/integration/files/inotify_hog.c')],
                   check=True, capture_output=True, timeout=120)
    return out


def root_inotify_instances():
    """Inotify descriptors held by host processes with euid 0 (an upper bound of host root's instances: a
    descriptor shared by several processes is counted for each)."""
    count = 0
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/status' % pid) as handle:
                uids = [line.split()[2] for line in handle if line.startswith('Uid:')]
            if uids != ['0']:
                continue
            fds = '/proc/%s/fd' % pid
            count += sum(1 for fd in os.listdir(fds) if os.readlink(os.path.join(fds, fd)) == 'anon_inode:inotify')
        except OSError:
            continue
    return count


def host_inotify_init_works():
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0:
        return os.strerror(ctypes.get_errno())
    os.close(fd)
    return True


def test_a_guest_holds_no_more_inotify_instances_than_its_limits_allow(host_paths, make_guest, hog_binary):
    with open('/proc/sys/fs/inotify/max_user_instances') as handle:
        maximum = int(handle.read())
    if root_inotify_instances() + NOFILE * NPROC + 8 > maximum:
        pytest.skip('host root already holds too many inotify instances for this test to leave it room')
    limits = _limits.validate({'nproc': NPROC, 'rlimits': {'nofile': NOFILE}}, layout=LAYOUT)
    doc = make_guest('vst-hog', start=True, limits=limits, init=['/bin/sleep', 'infinity'], stop_signal='SIGKILL',
                     stop_timeout=1)
    dest = os.path.join(doc['root'], 'bin', 'hog')
    with open(hog_binary, 'rb') as src, open(dest, 'wb') as out:
        out.write(src.read())
    os.chmod(dest, 0o755)
    proc = subprocess.Popen([sys.executable, VSERVER, 'vst-hog', 'exec', '/bin/hog', '64'], env=env_for(host_paths),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        data = b''
        deadline = time.monotonic() + 60
        while b'ready\n' not in data and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                data += chunk
        lines = data.decode().splitlines()
        assert 'ready' in lines, (lines, proc.poll())
        got = dict(line.split(None, 1) for line in lines if ' ' in line)
        # stopped by its own descriptor limit, not by host root's instance limit
        assert got['stop'] == 'nofile', got
        held, procs = int(got['held']), int(got['procs'])
        # several holders (the pids limit also counts init and the exec path), each filling its descriptor table
        assert 2 <= procs < NPROC, got
        assert (NOFILE - 8) * procs <= held, got   # less stdio and the program's own pipe
        assert held <= NOFILE * NPROC, got
        # while the guest holds all it can, host root still gets an instance
        assert host_inotify_init_works() is True
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read().decode()
