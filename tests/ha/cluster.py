"""A three-node Pacemaker/Corosync cluster on this machine, for the failover test and benchmark (docs/ha.md).

Each node is a systemd container (tests/integration/systemd_container.py boots them: systemd-nspawn --boot of a
Debian tree, here tests/ha/build's, with Pacemaker, Corosync and resource-agents) in its own network namespace,
joined to a bridge of this harness (vs19habr*) by nspawn's veth (host0 inside, 198.19.191.1-3/24). Corosync runs
over that bridge (knet, no crypto). The shared storage is one loop device (an ext4 image) bound into every node:
the guest's Filesystem resource mounts it on the node that runs the guest (never on two: Pacemaker's
colocation and ordering; the image is not a cluster filesystem). The guest (a busybox vserver.core guest, its
config and tree on that filesystem) has 198.19.191.100/24 on a macvlan of host0; a probe network namespace on the
bridge (198.19.191.200) checks that it answers.

What is simulated, and why: this kernel has no device-mapper, DLM or watchdog, so no clustered LVM (lvmlockd),
no GFS2/OCFS2 and no sbd; fencing is off (stonith-enabled=false) and a node "fails" by being killed outright (every
process of its container SIGKILLed at once), which is what a successful fence would leave. Nothing here is run by
the guest; every address is inside namespaces this harness made.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, 'tests', 'integration'))

from systemd_container import SystemdContainer  # noqa: E402

NET = '198.19.191'
GUEST = 'vs19-ha'
GUEST_ADDR = NET + '.100'
PROBE_ADDR = NET + '.200'
SHARED = '/srv/vs19-ha'
VENV = os.path.realpath(os.path.join(TOP, '.venv'))
COROSYNC = """totem {
    version: 2
    cluster_name: vs19ha
    transport: knet
    token: %(token)d
    crypto_cipher: none
    crypto_hash: none
}
nodelist {
%(nodes)s
}
quorum {
    provider: corosync_votequorum
}
logging {
    to_syslog: yes
    to_logfile: no
}
"""
NET_UNIT = """[Unit]
Description=vs19 cluster test: host0's address
Before=corosync.service
After=systemd-udevd.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr add %s/24 dev host0
ExecStart=/sbin/ip link set host0 up
[Install]
WantedBy=multi-user.target
"""


def build_tree():
    proc = subprocess.run([os.path.join(HERE, 'build')], capture_output=True, text=True, timeout=1200,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError('tests/ha/build failed:\n%s' % proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


def run(argv, **kw):
    kw.setdefault('timeout', 60)
    return subprocess.run(argv, capture_output=True, text=True, check=kw.pop('check', True), **kw)


class Node(SystemdContainer):
    """A cluster node: a SystemdContainer on the harness bridge (not --private-network) with the loop device and
    this checkout's venv bound in."""

    def __init__(self, tree, workdir, index, bridge, device):
        super().__init__(tree, workdir)
        self.index = index
        self.name = 'vs19-n%d' % index
        self.bridge = bridge
        self.device = device

    def prepare(self, token):
        """Files of the node written into its overlay before the first boot."""
        files = {
            '/etc/hostname': self.name + '\n',
            '/etc/hosts': '127.0.0.1 localhost\n' + ''.join('%s.%d vs19-n%d\n' % (NET, i, i) for i in (1, 2, 3)),
            '/etc/corosync/corosync.conf': COROSYNC % {'token': token, 'nodes': '\n'.join(
                '    node {\n        ring0_addr: %s.%d\n        name: vs19-n%d\n        nodeid: %d\n    }'
                % (NET, i, i, i) for i in (1, 2, 3))},
            '/etc/systemd/system/vs19-net.service': NET_UNIT % ('%s.%d' % (NET, self.index)),
            '/usr/local/bin/vserver': '#!/bin/sh\nexec /usr/bin/python3 %s/bin/vserver "$@"\n' % TOP,
            '/usr/lib/ocf/resource.d/vserver-core/guest': open(os.path.join(TOP, 'roles', 'host', 'files',
                                                                            'ocf-guest')).read(),
        }
        for path, text in files.items():
            target = self.path(path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, 'w') as handle:
                handle.write(text)
        for path in ('/usr/local/bin/vserver', '/usr/lib/ocf/resource.d/vserver-core/guest'):
            os.chmod(self.path(path), 0o755)
        wants = self.path('/etc/systemd/system/multi-user.target.wants')
        os.makedirs(wants, exist_ok=True)
        link = os.path.join(wants, 'vs19-net.service')
        if not os.path.lexists(link):
            os.symlink('/etc/systemd/system/vs19-net.service', link)
        os.makedirs(self.path(SHARED), exist_ok=True)

    def nspawn_argv(self):
        """On the harness bridge (not --private-network), with the venv and the shared loop device bound in."""
        argv = super().nspawn_argv()
        argv[argv.index('--private-network')] = '--network-bridge=%s' % self.bridge
        venv = '--bind-ro=%s' % VENV
        return argv + ([] if venv in argv else [venv]) + ['--bind=%s' % self.device]

    def boot(self, timeout=120):
        return super().boot(timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def fail(self):
        """The node dies at once: every process of its container killed in one write (cgroup.kill), then nspawn."""
        with open(os.path.join(self.cg2, 'cgroup.kill'), 'w') as handle:
            handle.write('1')
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.leader = None
        deadline = time.monotonic() + 15  # the killed processes leave their cgroups a moment later
        while time.monotonic() < deadline and self._procs():
            time.sleep(0.1)

    def _procs(self):
        found = []
        for base in (self.cg2, os.path.join(self.named, self.machine)):
            for dirpath, _dirs, files in os.walk(base):
                if 'cgroup.procs' in files:
                    with open(os.path.join(dirpath, 'cgroup.procs')) as handle:
                        found += handle.read().split()
        return found


class Cluster:
    """Three nodes, the bridge, the probe namespace, the loop device; ``setup`` boots them and forms the cluster,
    ``close`` removes everything."""

    def __init__(self, workdir, token=1000):
        self.workdir = str(workdir)
        self.tag = secrets.token_hex(2)
        self.bridge = 'vs19habr' + self.tag
        self.probe = 'vs19-haprobe' + self.tag
        self.token = token
        self.image = os.path.join(self.workdir, 'shared.img')
        self.device = None
        self.nodes = []

    # --- host side ------------------------------------------------------------------------------------------
    def _network(self):
        run(['ip', 'link', 'add', self.bridge, 'type', 'bridge'])
        run(['ip', 'link', 'set', self.bridge, 'up'])
        run(['ip', 'netns', 'add', self.probe])
        run(['ip', 'link', 'add', 'vs19hp' + self.tag, 'type', 'veth', 'peer', 'name', 'vs19hq' + self.tag])
        run(['ip', 'link', 'set', 'vs19hp' + self.tag, 'master', self.bridge, 'up'])
        run(['ip', 'link', 'set', 'vs19hq' + self.tag, 'netns', self.probe])
        run(['ip', '-n', self.probe, 'addr', 'add', PROBE_ADDR + '/24', 'dev', 'vs19hq' + self.tag])
        run(['ip', '-n', self.probe, 'link', 'set', 'vs19hq' + self.tag, 'up'])
        run(['ip', '-n', self.probe, 'link', 'set', 'lo', 'up'])

    def _storage(self):
        with open(self.image, 'wb') as handle:
            handle.truncate(256 << 20)
        run(['mkfs.ext4', '-q', '-F', '-L', 'vs19ha', self.image], timeout=120)
        self.device = run(['losetup', '-f', '--show', self.image]).stdout.strip()

    def setup(self, tree):
        os.makedirs(self.workdir, exist_ok=True)
        self._network()
        self._storage()
        for index in (1, 2, 3):
            node = Node(tree, os.path.join(self.workdir, 'n%d' % index), index, self.bridge, self.device)
            self.nodes.append(node)
            node.setup()
            node.prepare(self.token)
        for node in self.nodes:
            node.boot()

    def close(self):
        for node in self.nodes:
            try:
                if node.alive():
                    node.fail()  # no orderly shutdown needed: the cluster is thrown away
                node.cleanup()
            except Exception as exc:  # keep cleaning the others
                sys.stderr.write('cleanup of %s: %s\n' % (node.name, exc))
        if self.device:
            run(['losetup', '-d', self.device], check=False)
        run(['ip', 'netns', 'del', self.probe], check=False)
        run(['ip', 'link', 'del', self.bridge], check=False)
        run(['rm', '-f', self.image], check=False)

    # --- the cluster ----------------------------------------------------------------------------------------
    def alive(self):
        return [n for n in self.nodes if n.alive()]

    def crm(self, script, check=True, node=None, timeout=60):
        return (node or self.alive()[0]).sh(script, check=check, via_unit=False, timeout=timeout)

    def wait_online(self, count=3, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.crm('crm_mon -1 -X 2>/dev/null || true', check=False).stdout
            if out.count('online="true"') >= count and 'with_quorum="true"' in out:
                return out
            time.sleep(1)
        raise RuntimeError('the cluster did not get %d nodes online:\n%s\n%s'
                           % (count, out[-3000:], self.alive()[0].console()))

    def where(self, resource):
        """The node names the resource runs on (crm_resource --locate)."""
        out = self.crm('crm_resource --locate -r %s 2>&1 || true' % resource, check=False).stdout
        return [line.rsplit(':', 1)[-1].strip() for line in out.splitlines() if 'is running on' in line]

    def node(self, name):
        return [n for n in self.nodes if n.name == name][0]

    def answers(self, addr=GUEST_ADDR, timeout=0.3, flush=True):
        """``addr`` answers an ICMP echo from the probe namespace within ``timeout`` (tests/ha/pinger.py)."""
        return self.answer_time(addr, timeout, flush) is not None

    def answer_time(self, addr=GUEST_ADDR, timeout=120.0, flush=True):
        """The monotonic time ``addr`` first answers echo requests sent every 50 ms from the probe namespace, or
        None. ``flush``: the probe forgets its neighbour entry before each request (the guest announces no
        gratuitous ARP yet: a client that keeps the old node's MAC waits for ARP to time out, docs/ha.md)."""
        argv = ['ip', 'netns', 'exec', self.probe, sys.executable, os.path.join(HERE, 'pinger.py'), addr,
                '--timeout', str(timeout)] + ([] if flush else ['--keep-arp'])
        proc = run(argv, check=False, timeout=timeout + 30)
        return float(proc.stdout) if proc.returncode == 0 else None

    def start_pinger(self, addr=GUEST_ADDR, timeout=120.0, flush=True):
        argv = ['ip', 'netns', 'exec', self.probe, sys.executable, os.path.join(HERE, 'pinger.py'), addr,
                '--timeout', str(timeout)] + ([] if flush else ['--keep-arp'])
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_guests(self):
        """node name -> whether the guest runs there (vserver status on every live node)."""
        out = {}
        for node in self.alive():
            proc = node.sh('VSERVER_CONFIG_DIR=%s/etc vserver %s status' % (SHARED, GUEST), check=False,
                           via_unit=False, timeout=30)
            out[node.name] = proc.returncode == 0
        return out


ENV = {
    'PATH': '%s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' % VENV,
    'HOME': '/root', 'LANG': 'C.UTF-8',
    'ANSIBLE_COLLECTIONS_PATH': os.path.join(TOP, '.build', 'collections'),
    'ANSIBLE_PYTHON_INTERPRETER': '/usr/bin/python3',
    'ANSIBLE_STDOUT_CALLBACK': 'json_results',
    'ANSIBLE_CALLBACK_PLUGINS': os.path.join(TOP, 'tests', 'integration', 'callback_plugins'),
    'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_RETRY_FILES_ENABLED': '0', 'ANSIBLE_LOCALHOST_WARNING': '0',
    'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0', 'ANSIBLE_LOCAL_TEMP': '/root/.ansible/tmp',
}
PLAYBOOK = """
- name: The guest as a cluster resource
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    cluster_vserver_command: /usr/local/bin/vserver
    cluster_guests:
      - name: %(guest)s
        config_dir: %(shared)s/etc
        storage: {device: %(device)s, directory: %(shared)s, fstype: ext4}
        monitor_interval: 5s
  roles:
    - role: vserver.core.cluster
"""
MAKE_GUEST = """
import sys
sys.path.insert(0, %(collections)r)
from ansible_collections.vserver.core.plugins.module_utils import _common, _mgr_guests
paths = _common.Paths(config_dir=%(shared)r + '/etc', tree_dir=%(shared)r + '/trees')
spec = _mgr_guests.validate([{'name': %(guest)r, 'xid': 1990, 'template': 'busybox', 'state': 'present',
                              'stop_timeout': 2, 'addresses': [%(addr)r + '/24'],
                              'network': {'mode': 'macvlan', 'parent': 'host0'}}])[0]
print(_mgr_guests.ensure_one(paths, spec)['actions'])
"""


def cluster_ready(workdir, token=1000):
    """The booted cluster with the guest on its shared storage and its resources defined by the cluster role."""
    cl = Cluster(workdir, token=token)
    try:
        cl.setup(build_tree())
        cl.wait_online(3)
        first = cl.nodes[0]
        for prop, value in (('stonith-enabled', 'false'), ('no-quorum-policy', 'stop')):
            cl.crm('crm_attribute --type crm_config --name %s --update %s' % (prop, value))
        # the guest, made once on the shared filesystem (mounted here only for that)
        first.sh('mount %s %s' % (cl.device, SHARED), via_unit=False)
        try:
            first.sh("/usr/bin/python3 -c %s" % _quote(MAKE_GUEST % {
                'collections': os.path.join(TOP, '.build', 'collections'), 'shared': SHARED,
                'guest': GUEST, 'addr': GUEST_ADDR}), via_unit=False)
        finally:
            first.sh('umount %s' % SHARED, via_unit=False)
        with open(first.path('/root/cluster.yml'), 'w') as handle:
            handle.write(PLAYBOOK % {'guest': GUEST, 'shared': SHARED, 'device': cl.device})
        return cl
    except Exception:
        cl.close()
        raise


def _quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def playbook(node, *options):
    proc = node.sh('ansible-playbook -i localhost, /root/cluster.yml ' + ' '.join(options), check=False, env=ENV,
                   timeout=600)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('ansible-playbook output is not JSON:\n%s\n%s' % (proc.stdout[-3000:], proc.stderr[-3000:]))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return data['stats']['localhost']['changed']


def wait_running(cl, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        where = cl.where('vsg-' + GUEST)
        if where and cl.answers():
            return where
        time.sleep(0.5)
    raise AssertionError('the guest did not start: %s\n%s' % (
        cl.crm('crm_mon -1 -r 2>&1', check=False).stdout, cl.alive()[0].console()))


PEER_ADDR = NET + '.101'
PEER = """<primitive id="vs19-peer-ip" class="ocf" provider="heartbeat" type="IPaddr2">
  <instance_attributes id="vs19-peer-ip-ia">
    <nvpair id="vs19-peer-ip-ia-ip" name="ip" value="%s"/>
    <nvpair id="vs19-peer-ip-ia-cidr" name="cidr_netmask" value="24"/>
    <nvpair id="vs19-peer-ip-ia-nic" name="nic" value="host0"/>
  </instance_attributes>
  <operations><op id="vs19-peer-ip-monitor" name="monitor" interval="5s" timeout="20s"/></operations>
</primitive>""" % PEER_ADDR


def add_peer(cl):
    """The benchmark's peer: Pacemaker's stock floating address (ocf:heartbeat:IPaddr2, which announces itself
    with gratuitous ARP), colocated with the guest, so one kill moves both."""
    cl.crm("cibadmin --create --scope resources --xml-text '%s'" % PEER)
    cl.crm("cibadmin --create --scope constraints --xml-text "
           "'<rsc_colocation id=\"vs19-peer-with-guest\" rsc=\"vs19-peer-ip\" with-rsc=\"vsg-%s\" "
           "score=\"INFINITY\"/>'" % GUEST)


def failover(cl, timeout=120, peer=False):
    """Kill the node running the guest. Returns seconds from the kill until the guest answers again (and until
    the peer address does, with ``peer``), the node killed, where the guest runs then, and the most nodes seen
    running it at once meanwhile (every live node asked every second)."""
    before = cl.where('vsg-' + GUEST)
    assert len(before) == 1, before
    victim = cl.node(before[0])
    t0 = time.monotonic()
    victim.fail()
    pingers = {'guest': cl.start_pinger(GUEST_ADDR, timeout)}
    if peer:
        pingers['peer'] = cl.start_pinger(PEER_ADDR, timeout, flush=False)
    most = 0
    while any(p.poll() is None for p in pingers.values()):
        most = max(most, sum(cl.running_guests().values()))
        time.sleep(1)
    times = {}
    for key, proc in pingers.items():
        out = proc.communicate()[0].strip()
        if proc.returncode == 0 and out:
            times[key] = float(out) - t0
    if 'guest' not in times:
        raise AssertionError('no answer within %ss after killing %s:\n%s' % (
            timeout, victim.name, cl.crm('crm_mon -1 -r 2>&1', check=False).stdout))
    running = cl.running_guests()
    most = max(most, sum(running.values()))
    return times, victim, [n for n, up in running.items() if up], most
