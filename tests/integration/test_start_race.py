"""A guest's init may exit at any moment: start, status and stat read its state once and never trip over it.

Before the fix, status() checked that init was alive and then read its pid a second time; an init exiting in
between made `vserver NAME start`, `vserver NAME status`, `vserver stat` and the context module fail with
``TypeError: %d format: a real number is required, not NoneType`` (1 start in 10 on a loaded machine).
Every loop here runs under tests/reaper.py, a subreaper that reaps exited inits at once, as a normal host does.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import TOP, VSERVER, env_for

from ansible_collections.vserver.core.plugins.module_utils import _runtime

REAPER = os.path.join(TOP, 'tests', 'reaper.py')
ROUNDS = 200

pytestmark = pytest.mark.slow


def test_status_while_init_exits(host_paths, make_guest):
    """status() sampled in a tight loop across the moment init exits: always a consistent row, never an error."""
    doc = make_guest('race-status', init=['/bin/usleep', '3000'], stop_signal='SIGKILL', stop_timeout=1)
    seen = {'running': 0, 'stopped': 0}
    for dummy in range(ROUNDS):
        _runtime.start(host_paths, doc)
        deadline = time.monotonic() + 10
        while True:
            row = _runtime.status(host_paths, doc)
            seen[row['state']] += 1
            if row['state'] == 'stopped':
                assert row['init_pid'] is None and row['uptime'] is None
                break
            assert isinstance(row['init_pid'], int) and row['uptime'] is not None, row
            assert time.monotonic() < deadline, 'init (usleep 3000) still running after 10 s'
    assert seen['stopped'] == ROUNDS and seen['running'] > 0, seen


def _under_reaper(argv, env):
    return subprocess.Popen([sys.executable, REAPER, '--'] + argv, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def test_start_of_an_init_that_exits_at_once_through_the_command_and_the_module(host_paths, make_guest, tmp_path):
    """200 starts through `vserver` (with status and stat) and 200 through the context module (run as Ansible
    runs it: one process per call, arguments in a file), on two guests at once."""
    make_guest('race-cli', init=['/bin/true'], stop_signal='SIGKILL', stop_timeout=1)
    make_guest('race-mod', init=['/bin/true'], stop_signal='SIGKILL', stop_timeout=1)
    cli = ('for i in $(seq %d); do "$PY" "$VS" race-cli start >/dev/null || exit 10; '
           '"$PY" "$VS" race-cli status >/dev/null; [ $? -le 3 ] || exit 11; '
           '[ $((i %% 10)) -ne 0 ] || "$PY" "$VS" stat >/dev/null || exit 12; done' % ROUNDS)
    args = tmp_path / 'args.json'
    args.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': dict(
        name='race-mod', state='started', config_dir=host_paths.config_dir, run_dir=host_paths.run_dir,
        tree_dir=host_paths.tree_dir, log_dir=host_paths.log_dir, cgroup_parent=host_paths.cgroup_parent)}))
    out = tmp_path / 'results'
    mod = 'for i in $(seq %d); do "$PY" "$MOD" "$ARGS" >>"$OUT" || exit 10; echo >>"$OUT"; done' % ROUNDS
    env = dict(env_for(host_paths), PY=sys.executable, VS=VSERVER, ARGS=str(args), OUT=str(out),
               MOD=os.path.join(TOP, 'plugins', 'modules', 'context.py'),
               PYTHONPATH=os.path.join(TOP, '.build', 'collections'))
    procs = [_under_reaper(['/bin/bash', '-c', script], env) for script in (cli, mod)]
    try:
        for proc in procs:
            dummy, err = proc.communicate(timeout=600)
            assert proc.returncode == 0 and 'Traceback' not in err, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    status = subprocess.run([sys.executable, VSERVER, 'race-cli', 'status'], env=env_for(host_paths),
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 3 and 'race-cli is stopped' in status.stdout
    results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert len(results) == ROUNDS
    for result in results:
        assert not result.get('failed'), result
        assert result['guest']['state'] in ('running', 'stopped'), result
        assert (result['guest']['init_pid'] is None) == (result['guest']['state'] == 'stopped'), result
