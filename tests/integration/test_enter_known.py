"""The fast path of `vserver NAME exec|enter` (_enter.enter_known): an entry whose inputs are all the same as the
last full entry's (options, VSERVER_* variables, defaults file, the exact config and runtime record, the library's
modules) reuses what that one concluded, and reads everything else afresh (init alive, its cgroup, frozen or not,
its credentials and namespaces). Any change takes the full path, which decides and reports as before."""
import json
import os
import subprocess
import sys

from ansible_collections.vserver.core.plugins.module_utils import _enter, _runtime, _procfs as P
from helpers import VSERVER, env_for, wait_for
from test_enter import STATUS_KEYS, _stages_of


def run(paths, *args, env=None):
    """`vserver ARGS...` under -X importtime; returns (CompletedProcess, whether it loaded the config store)."""
    proc = subprocess.run([sys.executable, '-X', 'importtime', VSERVER] + list(args), env=env or env_for(paths),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    lines = proc.stderr.splitlines()
    full = any(line.endswith('module_utils._config') for line in lines)
    proc.stderr = '\n'.join(line for line in lines if not line.startswith('import time:'))
    return proc, full


def status_in(paths, name):
    proc, full = run(paths, name, 'exec', '/bin/cat', '/proc/self/status')
    assert proc.returncode == 0, proc.stderr
    return P.parse_status(proc.stdout), full


def test_a_kept_conclusion_holds_only_while_every_input_does(host_paths, make_guest):
    doc = make_guest('known', start=True)
    rt = _runtime.Runtime(host_paths, 'known')
    kept = os.path.join(rt.dir, _enter.KNOWN_FILE)
    init = P.read_status(rt.init_pid())

    mine, full = status_in(host_paths, 'known')
    assert full and os.path.isfile(kept)  # the first entry goes the full way and keeps what it found
    assert oct(os.stat(kept).st_mode & 0o777) == '0o600'
    mine, full = status_in(host_paths, 'known')
    assert not full, 'the second entry loaded the config store'
    assert {k: mine[k] for k in STATUS_KEYS} == {k: init[k] for k in STATUS_KEYS}

    # the config changes: the change applies at once (full path), and is then kept
    doc['capabilities'] = {'bcaps_drop': ['kill']}
    with open(host_paths.config_file('known'), 'w') as handle:
        json.dump(doc, handle)
    for want_full in (True, False):
        mine, full = status_in(host_paths, 'known')
        assert full == want_full
        assert int(mine['CapBnd'], 16) == int(init['CapBnd'], 16) & ~(1 << 5)  # CAP_KILL

    # a broken config: refused as every command refuses it, although an entry was kept
    with open(host_paths.config_file('known'), 'w') as handle:
        json.dump(dict(doc, colour='red'), handle)
    proc, full = run(host_paths, 'known', 'exec', '/bin/true')
    assert (proc.returncode, full) == (1, True) and "unknown key 'colour'" in proc.stderr, proc.stderr
    assert not _stages_of(os.getpid())
    with open(host_paths.config_file('known'), 'w') as handle:
        json.dump(doc, handle)
    assert not status_in(host_paths, 'known')[1]  # the very bytes the last full entry checked

    # other host roots (here another cgroup parent given in the environment) are other inputs
    env = dict(env_for(host_paths), VSERVER_CGROUP_PARENT=host_paths.cgroup_parent + 'x')
    proc, full = run(host_paths, 'known', 'exec', '/bin/true', env=env)
    assert full and proc.returncode == 0, proc.stderr  # the runtime record names the cgroup parent it was started in

    assert [status_in(host_paths, 'known')[1] for dummy in range(2)] == [True, False]  # one conclusion is kept

    # a frozen guest is never entered, whatever was kept
    _runtime.freeze(host_paths, doc)
    try:
        proc, full = run(host_paths, 'known', 'exec', '/bin/true')
        assert proc.returncode == 1 and 'guest known is frozen' in proc.stderr, proc.stderr
    finally:
        _runtime.thaw(host_paths, doc)

    # a restart: a new init (new runtime record); its namespaces are the ones entered
    assert not status_in(host_paths, 'known')[1]
    _runtime.stop(host_paths, dict(doc, stop_timeout=2))
    proc, full = run(host_paths, 'known', 'exec', '/bin/true')
    assert proc.returncode == 1 and 'guest known is not running' in proc.stderr, proc.stderr
    _runtime.start(host_paths, doc)
    init_pid = _runtime.Runtime(host_paths, 'known').init_pid()
    for want_full in (True, False):
        proc, full = run(host_paths, 'known', 'exec', '/bin/sh', '-c', 'readlink /proc/self/ns/pid; '
                         'readlink /proc/self/ns/mnt')
        assert (proc.returncode, full) == (0, want_full), proc.stderr
        assert proc.stdout.split() == [os.readlink('/proc/%d/ns/%s' % (init_pid, kind)) for kind in ('pid', 'mnt')]

    # init gone behind the runtime's back (killed, record left as it was): nothing is entered
    os.kill(init_pid, 9)
    assert wait_for(lambda: (P.read_stat(init_pid) or 'X')[0] in ('Z', 'X'))
    proc, full = run(host_paths, 'known', 'exec', '/bin/true')
    assert proc.returncode == 1 and 'guest known is not running' in proc.stderr, proc.stderr
