"""HostLock: one flock per process and path, shared by every instance (managers compose without deadlock)."""
import fcntl
import os
import subprocess
import sys

from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths


def test_two_instances_in_one_process_share_the_lock(tmp_path):
    paths = Paths(config_dir=str(tmp_path))
    with HostLock(paths, timeout=1) as outer:
        with HostLock(paths, timeout=1) as inner:  # the old lock waited on itself here, then failed
            assert inner.fd == outer.fd and inner.depth == 2
        assert outer.depth == 1
        probe = os.open(outer.path, os.O_RDWR)
        try:  # still held against other processes' open file descriptions
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError('the lock was released by the inner exit')
            except BlockingIOError:
                pass
        finally:
            os.close(probe)
    assert outer.fd is None and outer.depth == 0


def test_another_process_waits_for_it(tmp_path):
    paths = Paths(config_dir=str(tmp_path))
    code = ('import sys; from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths\n'
            'from ansible_collections.vserver.core.plugins.module_utils._common import VServerError\n'
            'try:\n    HostLock(Paths(config_dir=sys.argv[1]), timeout=0.3).__enter__()\n'
            'except VServerError as exc:\n    print(exc)\n    sys.exit(3)\n')
    with HostLock(paths):
        proc = subprocess.run([sys.executable, '-c', code, str(tmp_path)], capture_output=True, text=True,
                              timeout=60, check=False, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 3, proc.stderr
    assert 'could not take the host lock' in proc.stdout
