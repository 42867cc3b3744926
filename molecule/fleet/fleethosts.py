"""Test harness for the molecule `fleet` scenario: three "hosts" on this machine, reached over ssh.

    fleethosts.py create DIR     make vst-fleet1..3 (see below); state goes to DIR/fleet.json
    fleethosts.py destroy DIR    remove everything create made (processes by PID, netns, links, cgroups, dirs)

Each host is
  * a network namespace ``vst-fleetN`` with ``eth0`` = 198.18.10.N/24, plugged (veth ``vstflNh``) into the
    test bridge ``vstfleetbr`` that holds 198.18.10.254/24 in the root namespace (the controller's side);
  * its own UTS namespace (hostname vst-fleetN) and private mount namespace in which
      /etc, /var and /usr/local are overlays (writes land in DIR/hostN/*.up, the machine's own files are untouched),
      /etc/vservers, /var/lib/vservers, /var/log/vservers are bind mounts of DIR/hostN/{config,trees,log},
      /run is a fresh tmpfs (so /run/vservers is per host);
  * an sshd (own host key, root login by key only) running under tests/reaper.py, so orphaned guest inits of
    that host are reaped (this machine's PID 1 does not reap).
Every host uses its own cgroup parent (``vstest-fleetN``, set in the inventory); destroy kills what is left
in those cgroups and removes them.
Standard library only; iproute2, util-linux and openssh do the work.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

HOSTS = 3
BRIDGE = 'vstfleetbr'
BRIDGE_ADDR = '198.18.10.254/24'
NET = '198.18.10.%d'
CGROUP_PREFIX = 'vstest-fleet'
HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
REAPER = os.path.join(TOP, 'tests', 'reaper.py')

SSHD_CONFIG = """\
ListenAddress {addr}
Port 22
HostKey {dir}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile {top}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
AcceptEnv LANG LC_*
"""

MOUNT_SCRIPT = """\
set -e
hostname {name}
mount --make-rprivate /
for d in etc var usr/local; do
  key=$(echo $d | tr / _)
  mount -t overlay overlay -o lowerdir=/$d,upperdir={dir}/$key.up,workdir={dir}/$key.work /$d
done
mkdir -p /etc/vservers /var/lib/vservers /var/log/vservers
mount --bind {dir}/config /etc/vservers
mount --bind {dir}/trees /var/lib/vservers
mount --bind {dir}/log /var/log/vservers
mount -t tmpfs -o mode=755,size=64m tmpfs /run
mkdir -p /run/sshd /run/vservers
chmod 0755 /run/sshd
exec {python} {reaper} -- /usr/sbin/sshd -D -e -f {dir}/sshd_config
"""


def sh(*argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise SystemExit('%s failed (%d): %s' % (' '.join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def host_dir(top, n):
    return os.path.join(top, 'host%d' % n)


def start_ticks(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def wait_port(addr, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, 22), timeout=1) as sock:
                if sock.recv(4).startswith(b'SSH'):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit('sshd on %s did not answer within %ss' % (addr, timeout))


def create(top):
    top = os.path.abspath(top)
    os.makedirs(top, exist_ok=True)
    if os.path.exists(os.path.join(top, 'fleet.json')) or os.path.exists('/sys/class/net/' + BRIDGE):
        destroy(top)
    state = {'top': top, 'hosts': {}}
    key = os.path.join(top, 'id_ed25519')
    if not os.path.exists(key):
        sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'vserver-fleet', '-f', key)
    with open(key + '.pub') as src, open(os.path.join(top, 'authorized_keys'), 'w') as dst:
        dst.write(src.read())
    write_state(top, state)  # from here on, destroy knows what to remove
    sh('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
    state['bridge'] = BRIDGE
    write_state(top, state)
    sh('ip', 'addr', 'add', BRIDGE_ADDR, 'dev', BRIDGE)
    sh('ip', 'link', 'set', BRIDGE, 'up')
    for n in range(1, HOSTS + 1):
        name = 'vst-fleet%d' % n
        addr = NET % n
        hdir = host_dir(top, n)
        for sub in ('config', 'trees', 'log', 'etc.up', 'etc.work', 'var.up', 'var.work', 'usr_local.up',
                    'usr_local.work'):
            os.makedirs(os.path.join(hdir, sub), exist_ok=True)
        os.chmod(os.path.join(hdir, 'trees'), 0o700)
        hostkey = os.path.join(hdir, 'ssh_host_ed25519_key')
        if not os.path.exists(hostkey):
            sh('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', hostkey)
        with open(os.path.join(hdir, 'sshd_config'), 'w') as handle:
            handle.write(SSHD_CONFIG.format(addr=addr, dir=hdir, top=top))
        host = {'netns': name, 'addr': addr, 'dir': hdir, 'veth': 'vstfl%dh' % n}
        state['hosts'][name] = host
        sh('ip', 'netns', 'add', name)
        write_state(top, state)
        sh('ip', 'link', 'add', host['veth'], 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name)
        sh('ip', 'link', 'set', host['veth'], 'master', BRIDGE, 'up')
        sh('ip', '-n', name, 'addr', 'add', addr + '/24', 'dev', 'eth0')
        sh('ip', '-n', name, 'link', 'set', 'eth0', 'up')
        sh('ip', '-n', name, 'link', 'set', 'lo', 'up')
        script = MOUNT_SCRIPT.format(name=name, dir=hdir, python=sys.executable, reaper=REAPER)
        log = open(os.path.join(hdir, 'sshd.log'), 'ab')
        proc = subprocess.Popen(
            ['nsenter', '--net=/run/netns/' + name, '--', 'unshare', '--mount', '--uts', '--propagation',
             'private', '--', '/bin/sh', '-c', script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
        log.close()
        time.sleep(0.05)
        host['pid'] = proc.pid
        host['start'] = start_ticks(proc.pid)
        write_state(top, state)
        wait_port(addr)
        host['mntns'] = os.readlink('/proc/%d/ns/mnt' % proc.pid)
        write_state(top, state)
    print(json.dumps(state, indent=2))


def write_state(top, state):
    tmp = os.path.join(top, '.fleet.json.tmp')
    with open(tmp, 'w') as handle:
        json.dump(state, handle, indent=2)
    os.rename(tmp, os.path.join(top, 'fleet.json'))


def cgroup_dirs(prefix):
    """Every cgroup directory (deepest first) below a parent whose name starts with ``prefix``."""
    found = []
    root = '/sys/fs/cgroup'
    for hierarchy in sorted(os.listdir(root)):
        base = os.path.join(root, hierarchy)
        if not os.path.isdir(base) or os.path.islink(base):
            continue
        for parent_dir, dirs, _files in os.walk(base):
            depth = parent_dir[len(base):].count('/')
            if depth > 3:
                dirs[:] = []
                continue
            for d in list(dirs):
                if d.startswith(prefix):
                    for sub, _subdirs, _files2 in os.walk(os.path.join(parent_dir, d), topdown=False):
                        found.append(sub)
                    dirs.remove(d)
    return found


def kill_cgroups(prefix, timeout=10):
    dirs = cgroup_dirs(prefix)
    deadline = time.monotonic() + timeout
    for d in dirs:
        freezer = os.path.join(d, 'freezer.state')
        if os.path.exists(freezer):
            try:
                with open(freezer, 'w') as handle:
                    handle.write('THAWED')
            except OSError:
                pass
    while True:
        alive = False
        for d in dirs:
            try:
                with open(os.path.join(d, 'cgroup.procs')) as handle:
                    pids = [int(p) for p in handle.read().split()]
            except OSError:
                continue
            for pid in pids:
                alive = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for d in dirs:
        for _attempt in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
    return [d for d in dirs if os.path.exists(d)]


def kill_mntns(mntns, keep=None, timeout=10):
    """SIGKILL every process living in mount namespace ``mntns`` (the whole fleet host)."""
    deadline = time.monotonic() + timeout
    while True:
        victims = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                if os.readlink('/proc/%s/ns/mnt' % entry) == mntns:
                    victims.append(int(entry))
            except OSError:
                continue
        victims = [pid for pid in victims if pid not in (os.getpid(), keep)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not victims or time.monotonic() > deadline:
            return victims
        time.sleep(0.1)


def destroy(top):
    top = os.path.abspath(top)
    path = os.path.join(top, 'fleet.json')
    try:
        with open(path) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        state = {'hosts': {}}
    problems = []
    for n in range(1, HOSTS + 1):
        left = kill_cgroups('%s%d' % (CGROUP_PREFIX, n))
        problems += ['cgroup %s' % d for d in left]
    for name, host in state.get('hosts', {}).items():
        pid = host.get('pid')
        mntns = host.get('mntns')
        alive = bool(pid) and start_ticks(pid) == host.get('start')
        if alive and not mntns:
            try:
                mntns = os.readlink('/proc/%d/ns/mnt' % pid)
            except OSError:
                mntns = None
        if mntns:
            # everything but the host's reaper first, so the reaper reaps them; it then exits by itself
            left = kill_mntns(mntns, keep=pid if alive else None)
            problems += ['process %d' % p for p in left]
        if alive:
            deadline = time.monotonic() + 5
            while start_ticks(pid) == host.get('start') and time.monotonic() < deadline:
                time.sleep(0.05)
            if start_ticks(pid) == host.get('start'):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for name in list(state.get('hosts', {})) or ['vst-fleet%d' % n for n in range(1, HOSTS + 1)]:
        if os.path.exists('/run/netns/' + name):
            sh('ip', 'netns', 'del', name, check=False)
    for n in range(1, HOSTS + 1):
        if os.path.exists('/sys/class/net/vstfl%dh' % n):
            sh('ip', 'link', 'del', 'vstfl%dh' % n, check=False)
    if os.path.exists('/sys/class/net/' + BRIDGE):
        sh('ip', 'link', 'del', BRIDGE, check=False)
    for n in range(1, HOSTS + 1):
        hdir = host_dir(top, n)
        if os.path.isdir(hdir):
            # unified trees may carry the immutable flag
            sh('chattr', '-R', '-f', '-i', hdir, check=False)
            sh('rm', '-rf', '--one-file-system', hdir, check=False)
    for leftover in ('fleet.json', 'authorized_keys', 'id_ed25519', 'id_ed25519.pub'):
        try:
            os.unlink(os.path.join(top, leftover))
        except FileNotFoundError:
            pass
    if problems:
        raise SystemExit('fleet destroy left: %s' % ', '.join(problems))
    print('fleet destroyed')


if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[1] not in ('create', 'destroy'):
        raise SystemExit(__doc__)
    (create if sys.argv[1] == 'create' else destroy)(sys.argv[2])
