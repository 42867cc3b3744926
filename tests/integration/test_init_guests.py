"""Guests that boot a Debian distribution through its own init: systemd (with nginx-light and a timer of the test)
and sysvinit (sysvinit-core). The trees are built once by tests/guests/build (mmdebstrap from this host's configured
mirror, cached in /var/cache/vserver-guests; a minute or two on a fresh machine) and copied for each guest.

Seen from outside: `systemctl is-system-running` says running, nginx answers on the guest's address from the host,
`systemctl restart nginx` gives it a new main pid, the timer fires, journald holds the boot; the stop (SIGRTMIN+3,
picked by the runtime for the default SIGTERM) ends in systemd's own "Shutting down" well inside stop_timeout and
the guest starts again. From inside the systemd guest, the confinement issue's attack (files/cgroup_escape.c) leaves
the host's limits as they were, and the guest's cgroup tree is its own subtree only. Two systemd guests unified
with each other boot and run. A sysvinit guest reaches runlevel 2 (its rc script starts a daemon) and stops through
runlevel 0 (the script's stop ran).
"""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _config, _limits, _mgr_address, _mgr_unify, _runtime)
from ansible_collections.vserver.core.plugins.filter.guest_module_list import SYSV_INITTAB
from helpers import TOP, VSERVER, build_static, env_for, guest_sh, vserver, wait_for
from test_enter import converse

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which('mmdebstrap') and not os.environ.get('VS_GUESTS_TREES'),
                                 reason='mmdebstrap missing (make apt)')]

LAYOUT = _cgroup.detect()
SUBNET = '198.19.215'           # this file's own /24 (issue 15's)
TIMER = """[Unit]
Description=vserver.core test timer
[Timer]
OnActiveSec=1
OnUnitActiveSec=1
AccuracySec=100ms
[Install]
WantedBy=timers.target
"""
TIMER_SERVICE = """[Unit]
Description=vserver.core test timer's job
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'date +%%s.%%N >> /var/lib/vstest-timer'
"""
SYSV_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          vstest
# Required-Start:    $local_fs
# Required-Stop:     $local_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: vserver.core test daemon
### END INIT INFO
case "$1" in
  start) start-stop-daemon --start --background --make-pidfile --pidfile /run/vstest.pid --exec /bin/sleep -- 1000
         echo started >> /var/lib/vstest-sysv ;;
  stop)  start-stop-daemon --stop --pidfile /run/vstest.pid --retry 5; echo stopped >> /var/lib/vstest-sysv ;;
esac
exit 0
"""


def _tree(kind):
    shared = os.environ.get('VS_GUESTS_TREES')     # the cgroup v2 VM: the host's cache, read-only (tests/vm/run)
    if shared:
        if not os.path.isdir(os.path.join(shared, kind, 'etc')):
            pytest.skip('no %s tree in %s' % (kind, shared))
        return os.path.join(shared, kind)
    proc = subprocess.run([os.path.join(TOP, 'tests', 'guests', 'build'), kind], capture_output=True, text=True,
                          timeout=1200, check=False)
    if proc.returncode != 0:
        pytest.fail('tests/guests/build %s failed:\n%s' % (kind, proc.stderr[-3000:]))
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope='session')
def systemd_tree():
    return _tree('systemd')


@pytest.fixture(scope='session')
def sysvinit_tree():
    return _tree('sysvinit')


@pytest.fixture
def guests(host_paths):
    """Copy a cached tree for a guest and save its config; every guest and tree is removed at the end."""
    made = []
    unified = []

    def factory(name, tree, **extra):
        root = os.path.join(host_paths.tree_dir, name)
        os.makedirs(host_paths.tree_dir, exist_ok=True)
        subprocess.run(['cp', '-a', '--reflink=auto', tree, root], check=True, timeout=300)
        made.append(root)
        doc = {'name': name, 'xid': _config.free_xid(host_paths), 'root': root, 'init': ['/sbin/init'],
               'stop_timeout': 30, 'stop_signal': 'SIGTERM', 'schema': _config.SCHEMA}
        doc.update(extra)
        _config.save(host_paths, doc)
        return doc

    factory.unified = unified
    yield factory
    for root in made:
        name = os.path.basename(root)
        try:
            _runtime.cleanup(host_paths, name)
        except Exception:
            pass
        if unified:     # unified files carry the immutable flag
            subprocess.run(['chattr', '-R', '-i', root], capture_output=True, check=False, timeout=120)
        subprocess.run(['rm', '-rf', '--one-file-system', root], check=False, timeout=300)


@pytest.fixture
def bridge():
    taken = subprocess.run(['ip', '-o', 'route'], capture_output=True, text=True, check=True).stdout
    if SUBNET + '.0/24' in taken:
        pytest.skip('%s.0/24 is routed on this host already' % SUBNET)
    name = 'vs15br%d' % (os.getpid() % 10000)
    yield name
    subprocess.run(['ip', 'link', 'del', name], capture_output=True, check=False, timeout=30)


def ok(paths, name, script, timeout=60):
    out = guest_sh(paths, name, 'exec 2>&1; set -e; ' + script, timeout=timeout)
    assert out.returncode == 0, '%s\n-> rc %d\n%s%s' % (script, out.returncode, out.stdout, out.stderr)
    return out.stdout


def write(root, path, text, mode=0o644):
    full = os.path.join(root, path.lstrip('/'))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'w') as handle:
        handle.write(text)
    os.chmod(full, mode)


def add_timer(root):
    write(root, '/etc/systemd/system/vstest.timer', TIMER)
    write(root, '/etc/systemd/system/vstest.service', TIMER_SERVICE)
    os.makedirs(os.path.join(root, 'etc/systemd/system/timers.target.wants'), exist_ok=True)
    os.symlink('/etc/systemd/system/vstest.timer', os.path.join(root, 'etc/systemd/system/timers.target.wants',
                                                                'vstest.timer'))


# under the cgroup v2 VM's TCG emulation a boot takes minutes, not a second
BOOT_TIMEOUT = 300 if os.environ.get('VS_GUESTS_TREES') else 60
STOP_BOUND = 29 if os.environ.get('VS_GUESTS_TREES') else 15   # s; every stop_timeout here is 30: below, no SIGKILL


def system_state(paths, name, timeout=BOOT_TIMEOUT):
    """`systemctl is-system-running --wait` (blocks until the boot is over): running, degraded... Retried while
    systemd has not opened its control socket yet (right after the start: systemctl then prints nothing)."""
    script = ('for i in $(seq 200); do s=$(systemctl is-system-running --wait 2>/dev/null); '
              '[ -n "$s" ] && break; sleep 0.05; done; echo "$s"')
    try:
        return guest_sh(paths, name, script, timeout=timeout).stdout.strip()
    except subprocess.TimeoutExpired:
        return 'no answer in %d s; %s' % (timeout, diagnose(paths, name))


def diagnose(paths, name):
    """What a guest that did not finish booting shows: its console log, systemd's jobs, its processes."""
    try:
        with open(paths.log_file(name), errors='replace') as handle:
            log = handle.read()[-3000:]
    except OSError as exc:
        log = str(exc)
    out = guest_sh(paths, name, 'systemctl list-jobs --no-pager 2>&1 | head -30; ps -ef 2>&1 | head -40; '
                                'cat /proc/1/cgroup; ls /sys/fs/cgroup', timeout=60)
    return 'log:\n%s\nguest:\n%s%s' % (log, out.stdout, out.stderr)


def http_get(ip, port=80, timeout=2.0):
    with socket.create_connection((ip, port), timeout=timeout) as sock:
        sock.sendall(b'GET / HTTP/1.0\r\nHost: x\r\n\r\n')
        data = b''
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b'\r\n\r\n', 1)[-1].decode()


def timed_stop(paths, doc):
    begin = time.monotonic()
    _runtime.stop(paths, doc)
    return time.monotonic() - begin


def test_systemd_guest_boots_serves_and_stops_through_systemd(host_paths, guests, systemd_tree, bridge):
    doc = guests('vs15-sd', systemd_tree)
    add_timer(doc['root'])
    write(doc['root'], '/var/www/html/index.html', 'served by systemd in vs15-sd\n')
    begin = time.monotonic()
    _runtime.start(host_paths, doc)
    assert system_state(host_paths, 'vs15-sd') == 'running', ok(host_paths, 'vs15-sd', 'systemctl --failed')
    booted = time.monotonic() - begin
    result = _mgr_address.ensure(host_paths, 'vs15-sd', {'address': SUBNET + '.2/24', 'bridge': bridge}).to_dict()
    assert result['changed'], result
    ip = SUBNET + '.2'
    assert wait_for(lambda: _try(http_get, ip), timeout=10) == 'served by systemd in vs15-sd\n'

    # the guest's own view: a container (ours), its machine-id, journald, units in its cgroup subtree
    assert ok(host_paths, 'vs15-sd', 'systemd-detect-virt --container || true').strip() == 'container-other'
    assert ok(host_paths, 'vs15-sd', 'cat /run/systemd/container').strip() == 'vserver'
    machine_id = ok(host_paths, 'vs15-sd', 'cat /etc/machine-id').strip()
    assert len(machine_id) == 32
    assert 'Reached target multi-user.target' in ok(host_paths, 'vs15-sd', 'journalctl --no-pager -b -u init.scope '
                                                    '-o cat; journalctl --no-pager -o cat | grep multi-user')
    pid1 = ok(host_paths, 'vs15-sd', 'systemctl show -p MainPID --value nginx').strip()
    ok(host_paths, 'vs15-sd', 'systemctl restart nginx')
    pid2 = ok(host_paths, 'vs15-sd', 'systemctl show -p MainPID --value nginx').strip()
    assert pid1 != pid2 and pid2 != '0', (pid1, pid2)
    assert http_get(ip) == 'served by systemd in vs15-sd\n'
    fired = wait_for(lambda: ok(host_paths, 'vs15-sd', 'cat /var/lib/vstest-timer 2>/dev/null || true').split(),
                     timeout=15, step=0.5)
    assert len(fired) >= 1, fired
    # systemd's units live in the guest's own cgroup, seen from the host under the guest's directory
    unified = _runtime.Runtime(host_paths, 'vs15-sd', LAYOUT).group.unified_dir()
    assert os.path.isdir(os.path.join(unified, 'system.slice', 'nginx.service'))
    assert ok(host_paths, 'vs15-sd', 'cat /proc/1/cgroup').strip().endswith('::/init.scope')

    # `vserver enter`: root's login shell (bash, from the guest's passwd) in its home, systemctl usable
    shown, code = converse([sys.executable, VSERVER, 'vs15-sd', 'enter'], env_for(host_paths),
                           [(b'#', b'echo "in=$0:$SHELL:$USER:$HOME:$(pwd)"; systemctl is-system-running; exit 4\n')])
    shown = shown.replace(b'\r', b'')
    assert b'root@vs15-sd:~# ' in shown and b'in=/bin/bash:/bin/bash:root:/root:/root\n' in shown, shown
    assert b'\nrunning\n' in shown and b'\nlogout\n' in shown and code == 4, shown    # a login shell's exit

    took = timed_stop(host_paths, doc)
    assert took < STOP_BOUND, 'stop took %.1f s (stop_timeout 30): systemd did not shut down by itself' % took
    journal = subprocess.run(['journalctl', '--no-pager', '-o', 'cat', '-D',
                              os.path.join(doc['root'], 'var/log/journal', machine_id)],
                             capture_output=True, text=True, timeout=60, check=False).stdout
    assert 'Reached target shutdown.target' in journal and 'Shutting down.' in journal, journal[-2000:]
    print('systemd guest: boot to running %.2f s, stop %.2f s' % (booted, took))

    _runtime.start(host_paths, doc)   # and again: same machine-id, running
    assert system_state(host_paths, 'vs15-sd') == 'running'
    assert ok(host_paths, 'vs15-sd', 'cat /etc/machine-id').strip() == machine_id
    assert timed_stop(host_paths, doc) < STOP_BOUND


def _try(func, *args):
    try:
        return func(*args)
    except OSError:
        return None


@pytest.fixture(scope='module')
def escape_binary(tmp_path_factory):
    return build_static('cgroup_escape.c', str(tmp_path_factory.mktemp('escape') / 'cgroup_escape'))


def limit_files(group):
    keys = ('memory.max', 'pids.max', 'cpu.max') if LAYOUT.version == 2 else \
        ('memory.limit_in_bytes', 'pids.max', 'cpu.cfs_quota_us')
    return {key: group.read(key) for key in keys}


@pytest.mark.cgroup
def test_systemd_guest_cannot_lift_its_limits_through_its_cgroup_tree(
        host_paths, guests, systemd_tree, escape_binary):
    limits = _limits.validate({'memory': '256M', 'nproc': 200, 'cpu': {'fill_rate': 3, 'interval': 2}},
                              layout=LAYOUT)
    doc = guests('vs15-sdlim', systemd_tree, limits=limits)
    shutil.copy(escape_binary, os.path.join(doc['root'], 'usr/local/bin/escape'))
    _runtime.start(host_paths, doc)
    state = system_state(host_paths, 'vs15-sdlim')
    assert state == 'running', state
    group = _runtime.Runtime(host_paths, 'vs15-sdlim', LAYOUT).group
    before = limit_files(group)
    out = vserver(host_paths, 'vs15-sdlim', 'exec', '/usr/local/bin/escape', 'lift', timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = dict(line.split(' ', 1) for line in out.stdout.splitlines())
    assert steps['unshare_mnt_cgroup'] == 'Operation not permitted', steps
    assert all(value != 'ok' for value in steps.values()), steps
    # through the mounted tree: the namespace root's limit files (v2) refuse the guest, and there is nothing above
    script = ('for f in memory.max pids.max cpu.max memory.high; do [ -e /sys/fs/cgroup/$f ] || continue; '
              'if echo max > /sys/fs/cgroup/$f 2>/dev/null; then echo "wrote $f"; fi; done; '
              'grep -c . /proc/self/mountinfo >/dev/null; ls /sys/fs/cgroup/..; cat /sys/fs/cgroup/cgroup.procs')
    seen = ok(host_paths, 'vs15-sdlim', script)
    assert 'wrote' not in seen, seen
    assert limit_files(group) == before
    # a unit's process lands in the guest's own subtree, as the host sees it
    ok(host_paths, 'vs15-sdlim', 'systemd-run --unit vstest-sleep /bin/sleep 300')
    pids = open(os.path.join(group.unified_dir(), 'system.slice', 'vstest-sleep.service', 'cgroup.procs')).read()
    assert pids.split(), 'no process in the transient unit'
    assert timed_stop(host_paths, doc) < STOP_BOUND
    assert not group.exists()


def test_two_unified_systemd_guests_boot_and_run(host_paths, guests, systemd_tree):
    docs = [guests(name, systemd_tree) for name in ('vs15-u1', 'vs15-u2')]
    guests.unified.append(True)
    result = _mgr_unify.ensure(host_paths, None, {'guests': ['vs15-u1', 'vs15-u2']}, False).to_dict()
    assert result['changed'], result
    one = os.stat(os.path.join(docs[0]['root'], 'usr/lib/systemd/systemd'))
    two = os.stat(os.path.join(docs[1]['root'], 'usr/lib/systemd/systemd'))
    assert (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)       # one inode for both guests
    for doc in docs:
        _runtime.start(host_paths, doc)
    for doc in docs:
        assert system_state(host_paths, doc['name']) == 'running'
    ids = {ok(host_paths, doc['name'], 'cat /etc/machine-id').strip() for doc in docs}
    assert len(ids) == 2, ids      # /etc is not unified: each guest its own machine-id
    for doc in docs:
        assert timed_stop(host_paths, doc) < STOP_BOUND


def test_sysvinit_guest_boots_its_runlevel_and_stops_through_it(host_paths, guests, sysvinit_tree):
    doc = guests('vs15-sysv', sysvinit_tree)
    root = doc['root']
    write(root, '/etc/inittab', SYSV_INITTAB)     # what the guest role writes into a sysvinit guest
    write(root, '/etc/init.d/vstest', SYSV_SCRIPT, 0o755)
    # enabled as a package would (insserv orders it; rc reads its .depend files): the test's own tree, not a guest's
    subprocess.run(['chroot', root, 'update-rc.d', 'vstest', 'defaults'], check=True, capture_output=True, timeout=60)
    _runtime.start(host_paths, doc)
    state = wait_for(lambda: ok(host_paths, 'vs15-sysv', 'cat /var/lib/vstest-sysv 2>/dev/null || true'),
                     timeout=30, step=0.3)
    assert state == 'started\n'
    assert ok(host_paths, 'vs15-sysv', 'runlevel').split()[-1] == '2'
    assert ok(host_paths, 'vs15-sysv', 'cat /proc/$(cat /run/vstest.pid)/cmdline | tr "\\0" " "') == '/bin/sleep 1000 '
    assert ok(host_paths, 'vs15-sysv', 'mount | grep " /run "').startswith('tmpfs on /run type tmpfs')
    took = timed_stop(host_paths, doc)
    assert took < STOP_BOUND, 'stop took %.1f s (stop_timeout 30)' % took
    with open(os.path.join(root, 'var/lib/vstest-sysv')) as handle:
        assert handle.read() == 'started\nstopped\n'    # runlevel 0 ran the script's stop
    print('sysvinit guest: stop %.2f s' % took)
