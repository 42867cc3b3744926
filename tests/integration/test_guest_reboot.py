"""reboot and halt from inside a guest (VServer's vshelper): its init ends with SIGHUP or SIGINT, and the host side
that waits for it (vserver-supervise, one per host or one --watch per vserver@ unit) restarts it or leaves it
stopped. The host itself is never touched."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime
from helpers import TOP, build_static, env_for, guest_sh, wait_for
from test_init_guests import _tree

pytestmark = pytest.mark.cgroup
SUPERVISE = os.path.join(TOP, 'roles', 'host', 'files', 'vserver_supervise.py')
# a sysvinit-style init: a shell that counts its boots and, when the host drops /go-N (N: this boot), calls
# reboot(2) itself through busybox (reboot -f), or halts (poweroff -f) when /halt-N is there too
SHELL_INIT = ('n=$(($(cat /boots 2>/dev/null || echo 0) + 1)); echo $n > /boots; '
              'while [ ! -e /go-$n ]; do sleep 0.1; done; '
              'if [ -e /halt-$n ]; then exec poweroff -f; fi; exec reboot -f')


def _host_facts():
    with open('/proc/sys/kernel/random/boot_id') as handle:
        boot_id = handle.read()
    with open('/proc/sys/kernel/ctrl-alt-del') as handle:
        cad = handle.read()
    return boot_id, cad


class Supervisor:
    def __init__(self, paths, tmp_path, *args):
        self.log = str(tmp_path / 'supervise.log')
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen([sys.executable, SUPERVISE] + list(args), env=env_for(paths),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def text(self):
        with open(self.log) as handle:
            return handle.read()

    def end(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def supervisor(host_paths, tmp_path):
    started = []

    def factory(*args):
        started.append(Supervisor(host_paths, tmp_path, *args))
        return started[-1]
    yield factory
    for sup in started:
        sup.end()


def _init(paths, name):
    return _runtime.Runtime(paths, name).init_pid()


def _uptime(paths, name):
    out = guest_sh(paths, name, 'cat /proc/uptime')
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[0])


def test_reboot_restarts_and_poweroff_stops_a_busybox_guest_under_its_unit(host_paths, make_guest, supervisor):
    host = _host_facts()
    doc = make_guest('vs18v-rb')
    sup = supervisor('--watch', 'vs18v-rb')                # what vserver@vs18v-rb.service runs
    first = wait_for(lambda: _init(host_paths, 'vs18v-rb'), 20)
    assert first, sup.text()
    time.sleep(1.2)
    asked = time.monotonic()
    out = guest_sh(host_paths, 'vs18v-rb', 'reboot')      # busybox: signals init, which calls reboot(2)
    assert out.returncode == 0, out.stderr
    second = wait_for(lambda: (_init(host_paths, 'vs18v-rb') or first) != first and _init(host_paths, 'vs18v-rb'), 20)
    assert second and second != first, sup.text()
    assert _uptime(host_paths, 'vs18v-rb') <= time.monotonic() - asked + 0.5   # started after the reboot
    assert _config.load(host_paths, 'vs18v-rb') == doc     # same config
    assert 'rebooted from inside' in sup.text() and sup.proc.poll() is None
    out = guest_sh(host_paths, 'vs18v-rb', 'poweroff -f')  # reboot(2) RB_POWER_OFF right away
    assert sup.proc.wait(20) == 0, sup.text()               # exit 0: the unit is not restarted
    assert _runtime.Runtime(host_paths, 'vs18v-rb').state() == 'stopped'
    assert not os.path.exists(host_paths.runtime('vs18v-rb'))
    assert _host_facts() == host


def test_shell_init_reboot_and_halt_under_the_host_supervisor(host_paths, make_guest, supervisor):
    host = _host_facts()
    doc = make_guest('vs18v-sh', init=['/bin/sh', '-c', SHELL_INIT])
    root = doc['root']
    os.makedirs(os.path.dirname(host_paths.autostart_mark('vs18v-sh')), exist_ok=True)
    open(host_paths.autostart_mark('vs18v-sh'), 'w').close()   # marked: the supervisor starts it (init's parent)
    sup = supervisor('--interval', '1')
    first = wait_for(lambda: _init(host_paths, 'vs18v-sh'), 20)
    assert first, sup.text()
    asked = time.monotonic()
    open(os.path.join(root, 'go-1'), 'w').close()            # the shell init calls reboot -f
    second = wait_for(lambda: (_init(host_paths, 'vs18v-sh') or first) != first and _init(host_paths, 'vs18v-sh'), 20)
    assert second, sup.text()
    assert wait_for(lambda: open(os.path.join(root, 'boots')).read().strip() == '2', 10)
    assert _uptime(host_paths, 'vs18v-sh') <= time.monotonic() - asked + 0.5   # started after the reboot
    open(os.path.join(root, 'halt-2'), 'w').close()
    open(os.path.join(root, 'go-2'), 'w').close()            # poweroff -f
    assert wait_for(lambda: 'halted from inside' in sup.text(), 20), sup.text()
    time.sleep(1.5)                                           # a tick or more of the supervisor: still stopped
    assert _runtime.Runtime(host_paths, 'vs18v-sh').state() == 'stopped', sup.text()
    assert open(os.path.join(root, 'boots')).read().strip() == '2'
    assert sup.proc.poll() is None and _host_facts() == host


def test_kexec_is_denied_to_a_guest_holding_sys_boot(host_paths, make_guest, tmp_path):
    """sys_boot is in the default bounding set; kexec_load/kexec_file_load check it against the host and must
    stay denied by the filter; reboot(2) can only end the guest's init."""
    host = _host_facts()
    make_guest('vs18v-kx', start=True)
    build_static('kexec_probe.c', os.path.join(host_paths.tree_dir, 'vs18v-kx', 'bin', 'kexec_probe'))
    out = guest_sh(host_paths, 'vs18v-kx', 'grep CapBnd /proc/self/status; /bin/kexec_probe')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split('\n')
    assert int(lines[0].split()[1], 16) & (1 << 22), lines[0]   # CAP_SYS_BOOT held
    got = dict(line.split() for line in lines[1:] if line)
    assert got['kexec_load'] == got['kexec_file_load'] == '1', got     # EPERM from the filter
    assert got['reboot_cad_on'] == '22', got          # EINVAL: a PID namespace's reboot takes no other command
    assert _host_facts() == host


def test_bcaps_drop_sys_boot_keeps_the_refusal(host_paths, make_guest):
    make_guest('vs18v-nb', start=True, capabilities={'bcaps_drop': ['sys_boot']})
    pid = _init(host_paths, 'vs18v-nb')
    out = guest_sh(host_paths, 'vs18v-nb', 'reboot -f; echo rc=$?; poweroff -f; echo rc=$?')
    assert out.stdout.split() == ['rc=1', 'rc=1'] and 'Operation not permitted' in out.stderr, out
    assert _init(host_paths, 'vs18v-nb') == pid


@pytest.mark.slow
def test_systemctl_reboot_and_poweroff_in_a_systemd_guest(host_paths, make_guest, supervisor):
    """systemd ends its shutdown with the same reboot(2): restarted under the unit's watcher, then stopped."""
    import shutil
    tree = _tree('systemd')     # tests/guests/build systemd (cached), as test_init_guests boots it
    host = _host_facts()
    doc = make_guest('vs18v-sd', init=['/lib/systemd/systemd'], stop_signal='SIGRTMIN+3', stop_timeout=30)
    shutil.rmtree(doc['root'])
    subprocess.run(['cp', '-a', '--reflink=auto', tree, doc['root']], check=True, timeout=300)
    sup = supervisor('--watch', 'vs18v-sd')
    first = wait_for(lambda: _init(host_paths, 'vs18v-sd'), 30)
    assert first, sup.text()
    ready = wait_for(lambda: guest_sh(host_paths, 'vs18v-sd', 'systemctl is-system-running --wait').stdout.strip()
                     in ('running', 'degraded'), 90, 1)
    assert ready, sup.text()
    guest_sh(host_paths, 'vs18v-sd', 'systemctl reboot')
    second = wait_for(lambda: (_init(host_paths, 'vs18v-sd') or first) != first and _init(host_paths, 'vs18v-sd'), 90)
    assert second, sup.text()
    assert _uptime(host_paths, 'vs18v-sd') < 30
    guest_sh(host_paths, 'vs18v-sd', 'systemctl poweroff')
    assert sup.proc.wait(90) == 0, sup.text()
    assert _runtime.Runtime(host_paths, 'vs18v-sd').state() == 'stopped'
    assert _host_facts() == host
