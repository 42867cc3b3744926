"""vserver-supervise (the host role's boot/restart service where PID 1 is not systemd): starts marked guests,
restarts a guest whose init died, leaves a cleanly stopped guest alone, exits on SIGTERM leaving guests running."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _context, _manager

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISE = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'roles', 'host', 'files', 'vserver_supervise.py')


def wait_for(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


@pytest.mark.cgroup
def test_supervise_starts_restarts_and_respects_clean_stops(host_paths, make_guest):
    for name in ('sv-a', 'sv-b', 'sv-c'):
        make_guest(name)
    os.makedirs(os.path.join(host_paths.config_dir, 'autostart'))
    for name in ('sv-a', 'sv-b'):  # sv-c is not marked
        open(os.path.join(host_paths.config_dir, 'autostart', name), 'w').close()
    env = dict(os.environ, **{'VSERVER_' + k.upper(): v for k, v in host_paths.as_dict().items()})
    proc = subprocess.Popen([sys.executable, SUPERVISE, '--interval', '0.3'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def rt(name):
            return _context.Runtime(host_paths, name)

        assert wait_for(lambda: rt('sv-a').init_pid() and rt('sv-b').init_pid())
        assert rt('sv-c').state() == 'stopped'
        first = rt('sv-a').init_pid()
        os.kill(first, signal.SIGKILL)  # a crash: init dies, its runtime state stays
        assert wait_for(lambda: rt('sv-a').init_pid() not in (None, first))
        _manager.ensure_context(host_paths, {'name': 'sv-b', 'state': 'stopped'})  # `vserver sv-b stop`
        time.sleep(1.5)
        assert rt('sv-b').state() == 'stopped'
        running = rt('sv-a').init_pid()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert rt('sv-a').init_pid() == running  # guests outlive the supervisor
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert 'sv-a: init died, restarting' in log and 'sv-b: init died' not in log
