"""Faults in the runtime leave no wrong state reported as success: a lost netns handle, a start or stop killed
half-way (SIGKILL injected with strace at one exact syscall of the real `vserver` process), a state file naming
a host process, and bad stop settings in a config. Each test makes the fault for real, then checks what the user
sees, what is left on the host, and that a re-run converges with honest actions."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime, _kernel as K, _mgr_context
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils import _mgr_address
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from helpers import VSERVER, build_static, env_for, vserver, wait_for
from test_address import Net, veths_gone, _host_links

STRACE = shutil.which('strace')


@pytest.fixture
def net():
    tn = Net()
    yield tn
    tn.cleanup()
    assert veths_gone('vst' + tn.tag), 'links left behind: %s' % sorted(_host_links())


def killed_at(paths, syscall, *args, when=1):
    """Run `vserver ARGS...` and SIGKILL it on entering its ``when``-th ``syscall`` (that call never runs).
    Only the vserver process is traced (no -f): the guest processes it forks run on untouched."""
    if STRACE is None:
        pytest.skip('strace is not installed (make setup installs it)')
    inject = '%s:error=EPERM:signal=KILL:when=%d' % (syscall, when)
    proc = subprocess.run([STRACE, '-qq', '-o', '/dev/null', '-e', 'trace=' + syscall, '-e', 'inject=' + inject,
                           sys.executable, VSERVER] + list(args), env=env_for(paths), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode in (-9, 137), (proc.returncode, proc.stdout, proc.stderr)
    return proc


def record(paths, name):
    with open(os.path.join(paths.runtime(name), _runtime.STATE_FILE)) as handle:
        return json.load(handle)


def netns_intact(paths, name):
    rt = _runtime.Runtime(paths, name)
    pid = rt.init_pid()
    return pid and os.path.exists(rt.netns) and os.path.samestat(os.stat(rt.netns), os.stat('/proc/%d/ns/net' % pid))


# --- item: a lost netns handle ------------------------------------------------------------------------------

def test_lost_netns_handle_is_repaired_by_address_and_by_started(net, host_paths, make_guest):
    make_guest('lostns', start=True)
    rt = _runtime.Runtime(host_paths, 'lostns')
    first = _mgr_address.ensure_params(host_paths, {'name': 'lostns', 'addresses': [net.cidr4(2)], 'bridge': net.bridge})
    assert first['running'] and first['live_addresses'] == [net.cidr4(2)]

    K.umount(rt.netns, K.MNT_DETACH)  # the bind mount is gone, the empty file stays (was: setns EINVAL)
    with pytest.raises(VServerError) as err:  # check mode changes nothing: it says what repairs it
        _mgr_address.ensure_params(host_paths, {'name': 'lostns', 'addresses': [net.cidr4(2), net.cidr4(3)]}, check_mode=True)
    assert 'network namespace handle' in str(err.value) and 'state started' in str(err.value)
    assert not netns_intact(host_paths, 'lostns')
    res = _mgr_address.ensure_params(host_paths, {'name': 'lostns', 'addresses': [net.cidr4(2), net.cidr4(3)]})
    assert res['running'] and 'repair netns handle' in res['actions'], res
    assert sorted(res['live_addresses']) == sorted([net.cidr4(2), net.cidr4(3)])
    assert netns_intact(host_paths, 'lostns')

    K.umount(rt.netns, K.MNT_DETACH)
    os.unlink(rt.netns)  # handle file removed too (was: rc 0, running false, nothing changed live)
    out = vserver(host_paths, 'lostns', 'start')
    assert out.returncode == 0 and out.stdout.strip() == 'lostns: repair netns handle', out
    assert netns_intact(host_paths, 'lostns')
    out = vserver(host_paths, 'lostns', 'start')
    assert out.stdout.strip() == 'lostns: nothing to do'
    res = _mgr_address.ensure_params(host_paths, {'name': 'lostns', 'addresses': [net.cidr4(2), net.cidr4(3)]})
    assert not res['changed'] and res['running'], res


def test_start_killed_before_its_netns_bind(net, host_paths, make_guest):
    """SIGKILL on the starter's one mount(2) (the netns bind): state.json is written, the handle is not bound."""
    make_guest('killbind')
    _mgr_address.ensure_params(host_paths, {'name': 'killbind', 'addresses': [net.cidr4(2)], 'bridge': net.bridge})
    killed_at(host_paths, 'mount', 'killbind', 'start')
    rt = _runtime.Runtime(host_paths, 'killbind')
    assert rt.init_pid() and not netns_intact(host_paths, 'killbind')
    out = vserver(host_paths, 'killbind', 'status')
    assert out.returncode == 0 and 'killbind is running' in out.stdout  # never "stopped" while init runs
    out = vserver(host_paths, 'killbind', 'start')
    assert out.returncode == 0 and out.stdout.strip() == 'killbind: repair netns handle', out
    assert netns_intact(host_paths, 'killbind')
    res = _mgr_address.ensure_params(host_paths, {'name': 'killbind', 'addresses': [net.cidr4(2), net.cidr4(3)]})
    assert res['running'] and sorted(res['live_addresses']) == sorted([net.cidr4(2), net.cidr4(3)]), res


# --- item: stop with bad settings in the config -------------------------------------------------------------

@pytest.mark.parametrize('bad, field', [({'stop_timeout': 'soon'}, 'stop_timeout'),
                                        ({'stop_signal': 'SIGBOGUS'}, 'stop_signal')])
def test_stop_with_bad_settings_in_the_config_stops_with_defaults(host_paths, make_guest, bad, field):
    doc = make_guest('badstop', start=True)
    _config.save(host_paths, dict(doc, **bad))  # an edited config: the modules would refuse these values
    rt = _runtime.Runtime(host_paths, 'badstop')
    out = vserver(host_paths, 'badstop', 'stop')
    assert out.returncode == 0 and out.stdout.strip() == 'badstop: stop', out
    assert 'Traceback' not in out.stderr
    # the config store reports the file as broken (naming the field); stop falls back to SIGTERM and 10 s
    assert 'vserver: warning: config of guest badstop is broken' in out.stderr, out.stderr
    assert '%s must be' % field in out.stderr and 'SIGTERM and stop_timeout 10 s' in out.stderr, out.stderr
    assert not rt.group.exists() and not os.path.exists(rt.dir)  # nothing half-stopped
    assert vserver(host_paths, 'badstop', 'stop').stdout.strip() == 'badstop: nothing to do'


# --- item: never signal a process that is not the guest's -------------------------------------------------

def test_stop_never_signals_a_host_process_named_by_the_state_file(host_paths, make_guest):
    make_guest('forged', start=True)
    rt = _runtime.Runtime(host_paths, 'forged')
    host = subprocess.Popen(['sleep', '60'])
    try:
        forged = dict(rt.record, init_pid=host.pid, init_start=P.read_stat(host.pid)[2])
        with open(os.path.join(rt.dir, _runtime.STATE_FILE), 'w') as handle:
            json.dump(forged, handle)
        assert _runtime.Runtime(host_paths, 'forged').init_pid() is None  # not in the guest's cgroup: not init
        out = vserver(host_paths, 'forged', 'status')
        assert out.returncode == 4 and 'forged is broken' in out.stdout and 'no tracked init' in out.stdout, out
        out = vserver(host_paths, 'forged', 'stop')
        assert out.returncode == 0 and out.stdout.strip() == 'forged: stop', out
        time.sleep(0.5)
        assert host.poll() is None, 'the host process was signalled'  # was: SIGTERM
        assert not rt.group.exists() and not os.path.exists(rt.dir)   # the real guest is gone
    finally:
        host.kill()
        host.wait()


# --- item: a killed stop must not switch off crash restarts ---------------------------------------------

def test_stop_killed_before_it_signals_leaves_a_mark_that_started_clears(host_paths, make_guest):
    make_guest('killstop', start=True)
    pid = _runtime.Runtime(host_paths, 'killstop').init_pid()
    killed_at(host_paths, 'pidfd_send_signal', 'killstop', 'stop')
    rt = _runtime.Runtime(host_paths, 'killstop')
    assert rt.init_pid() == pid and rt.record.get('stopping')
    out = vserver(host_paths, 'killstop', 'start')
    assert out.returncode == 0 and out.stdout.strip() == 'killstop: clear stale stop mark', out
    assert 'stopping' not in record(host_paths, 'killstop')
    assert _runtime.Runtime(host_paths, 'killstop').init_pid() == pid  # the guest ran on throughout
    assert vserver(host_paths, 'killstop', 'start').stdout.strip() == 'killstop: nothing to do'


# --- item: a start killed between fork and state write --------------------------------------------------

@pytest.mark.parametrize('then, actions', [('start', 'kill untracked processes, start'), ('stop', 'stop')])
def test_start_killed_before_its_state_write_reads_broken(host_paths, make_guest, then, actions):
    """SIGKILL on the starter's wait4 for the intermediate: init gets forked, no state.json is ever written."""
    make_guest('untracked')
    killed_at(host_paths, 'wait4', 'untracked', 'start')
    rt = _runtime.Runtime(host_paths, 'untracked')
    assert wait_for(rt.group.procs)  # the guest's processes run in its cgroup...
    assert not os.path.exists(os.path.join(rt.dir, _runtime.STATE_FILE))  # ...untracked
    out = vserver(host_paths, 'untracked', 'status')
    assert out.returncode == 4 and 'untracked is broken' in out.stdout, out  # was: "is stopped", exit 3
    row = _runtime.status(host_paths, _config.load(host_paths, 'untracked'))
    assert row['state'] == 'broken' and row['nproc'] >= 1 and 'no tracked init' in row['message']
    assert 'broken' in vserver(host_paths, 'stat').stdout
    untracked = rt.group.procs()
    out = vserver(host_paths, 'untracked', then)
    assert out.returncode == 0 and out.stdout.strip() == 'untracked: %s' % actions, out
    assert not set(untracked) & set(_runtime.Runtime(host_paths, 'untracked').group.procs())
    for pid in untracked:
        assert wait_for(lambda: P.read_stat(pid) is None or P.read_stat(pid)[0] == 'Z', 5)
    expect = 'running' if then == 'start' else 'stopped'
    assert _runtime.Runtime(host_paths, 'untracked').state() == expect
    assert vserver(host_paths, 'untracked', then).stdout.strip() == 'untracked: nothing to do'


# --- stop_signal SIGRTMIN+3 -----------------------------------------------------------------------------

RTINIT = r'''
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>
static volatile sig_atomic_t got;
static void on(int sig) { got = sig; }
int main(void) {
    signal(SIGTERM, SIG_IGN);
    signal(SIGRTMIN + 3, on);
    while (!got) pause();
    int fd = open("/got-rtmin3", O_WRONLY | O_CREAT, 0644);
    write(fd, "ok\n", 3);
    close(fd);
    return 0;
}
'''


def test_stop_with_sigrtmin3(host_paths, make_guest, tmp_path):
    """An init that ignores SIGTERM and ends on SIGRTMIN+3 (as systemd does) is stopped by its signal at once."""
    src = tmp_path / 'rtinit.c'
    src.write_text(RTINIT)
    doc = make_guest('rtmin')
    build_static(str(src), os.path.join(doc['root'], 'sbin', 'rtinit'))  # an absolute path: files/ is not used
    res = _mgr_context.ensure_context(host_paths, {'name': 'rtmin', 'init': '/sbin/rtinit', 'stop_signal': 'rtmin+3',
                                                   'stop_timeout': 60, 'state': 'started'})
    assert res['guest']['state'] == 'running'
    assert _config.load(host_paths, 'rtmin')['stop_signal'] == 'SIGRTMIN+3'
    begin = time.monotonic()
    out = vserver(host_paths, 'rtmin', 'stop', timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == 'rtmin: stop', out
    assert time.monotonic() - begin < 30  # init ended on the signal, not killed after stop_timeout (60 s)
    with open(os.path.join(doc['root'], 'got-rtmin3')) as handle:
        assert handle.read() == 'ok\n'


# --- item: a corrupt runtime record (state.json) --------------------------------------------------------------

@pytest.mark.parametrize('content', ['{"name": "sj-a", "init_pid": 12', '[1, 2]', '', 'null', '{"init_pid": "x"}'])
def test_a_corrupt_state_file_breaks_no_listing_and_the_guest_still_stops(host_paths, make_guest, content):
    """state.json truncated by a crash (or any other shape): the guest's init is untracked; listings go on for
    every guest, the guest reads as broken while its processes run, and stop ends them."""
    make_guest('sj-a', start=True)
    make_guest('sj-b', start=True)
    rt = _runtime.Runtime(host_paths, 'sj-a')
    assert rt.group.procs()
    with open(os.path.join(rt.dir, _runtime.STATE_FILE), 'w') as handle:
        handle.write(content)
    for listing in ('stat', 'ps'):
        out = vserver(host_paths, listing)
        assert out.returncode == 0 and 'Traceback' not in out.stderr, out
    rows = {line.split()[-2]: line for line in vserver(host_paths, 'stat').stdout.splitlines()[1:]}  # NAME ADDRESSES
    assert ' broken ' in rows['sj-a'] and ' running ' in rows['sj-b'], rows
    assert vserver(host_paths, 'sj-a', 'status').returncode == 4
    out = vserver(host_paths, 'sj-a', 'stop')
    assert out.returncode == 0 and 'Traceback' not in out.stderr, out
    assert not _runtime.Runtime(host_paths, 'sj-a').group.exists()
    assert _runtime.Runtime(host_paths, 'sj-b').state() == 'running'
    assert vserver(host_paths, 'sj-a', 'start').returncode == 0
    assert _runtime.Runtime(host_paths, 'sj-a').state() == 'running'
