"""vserver-supervise (the host role's boot/restart service where PID 1 is not systemd): starts marked guests,
restarts a guest whose init died, leaves a cleanly stopped guest alone, exits on SIGTERM leaving guests running."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime, _mgr_context
from helpers import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISE = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'roles', 'host', 'files', 'vserver_supervise.py')


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
            return _runtime.Runtime(host_paths, name)

        assert wait_for(lambda: rt('sv-a').init_pid() and rt('sv-b').init_pid())
        assert rt('sv-c').state() == 'stopped'
        first = rt('sv-a').init_pid()
        os.kill(first, signal.SIGKILL)  # a crash: init dies, its runtime state stays
        assert wait_for(lambda: rt('sv-a').init_pid() not in (None, first))
        _mgr_context.ensure_context(host_paths, {'name': 'sv-b', 'state': 'stopped'})  # `vserver sv-b stop`
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


@pytest.mark.slow
def test_a_stop_killed_before_it_signals_does_not_switch_off_crash_restarts(host_paths, make_guest):
    """`vserver NAME stop` SIGKILLed on entering pidfd_send_signal (strace): its stop mark stays in state.json,
    init runs on. A crash long after that mark is still a crash: the supervisor restarts the guest."""
    from test_runtime_faults import killed_at
    make_guest('sv-k', stop_timeout=1)
    os.makedirs(os.path.join(host_paths.config_dir, 'autostart'))
    open(os.path.join(host_paths.config_dir, 'autostart', 'sv-k'), 'w').close()
    env = dict(os.environ, **{'VSERVER_' + k.upper(): v for k, v in host_paths.as_dict().items()})
    proc = subprocess.Popen([sys.executable, SUPERVISE, '--interval', '0.3'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def rt():
            return _runtime.Runtime(host_paths, 'sv-k')

        first = wait_for(lambda: rt().init_pid())
        assert first
        killed_at(host_paths, 'pidfd_send_signal', 'sv-k', 'stop')
        mark = rt().record.get('stopping')
        assert mark and rt().init_pid() == first  # the stale mark, init untouched
        # past the mark's stop_timeout (1 s) + the supervisor's grace (10 s) + one interval, init crashes
        while _runtime.P.boottime_now() < mark['at'] + 1 + 10.3 + 1:
            time.sleep(0.2)
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: rt().init_pid() not in (None, first), 20), 'a crash was taken for a clean stop'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert 'sv-k: init died, restarting' in log, log
