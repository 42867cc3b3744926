"""The default scenario verified on the real system (this machine, connection local): namespaces, capability
bounding sets, cgroup values, addresses and links, guest files, unification and the `vserver` command."""
import json
import os

import pytest

TOP = '/var/tmp/vstest-molecule'
ENV = 'set -a; . %s/vserver.env; set +a; ' % TOP
GUESTS = ('mol-web', 'mol-mail', 'mol-dns')
CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_CHOWN = 10, 18, 13, 21, 0


def state(host, name):
    return json.loads(host.file('%s/run/%s/state.json' % (TOP, name)).content_string)


def status_field(host, pid, field):
    for line in host.file('/proc/%d/status' % pid).content_string.splitlines():
        if line.startswith(field + ':'):
            return line.split(':', 1)[1].strip()
    raise AssertionError('%s not in /proc/%d/status' % (field, pid))


def cg(host, name, controller, v1, v2):
    paths = state(host, name)['cgroup']
    path = os.path.join(paths[controller], v1)
    if not host.file(path).exists:
        path = os.path.join(paths.get('unified', paths[controller]), v2)
    return host.file(path).content_string.strip()


def in_netns(host, name, cmd):
    return host.check_output('nsenter --net=%s/run/%s/netns %s' % (TOP, name, cmd))


def test_vserver_stat_lists_three_running_guests(host):
    out = host.check_output(ENV + '%s/cli/vserver stat' % TOP)
    for xid, name in ((3101, 'mol-web'), (3102, 'mol-mail'), (3103, 'mol-dns')):
        line = [l.split() for l in out.splitlines() if name in l.split()]
        assert line and line[0][0] == str(xid) and 'running' in line[0], out
    for name in GUESTS:
        assert host.run(ENV + '%s/cli/vserver %s status' % (TOP, name)).rc == 0
    assert '198.18.30.11/24' in [l for l in out.splitlines() if 'mol-web' in l.split()][0]


@pytest.mark.parametrize('name', GUESTS)
def test_own_namespaces(host, name):
    pid = state(host, name)['init_pid']
    for kind in ('pid', 'net', 'mnt', 'uts', 'ipc', 'cgroup'):
        guest_ns = host.check_output('readlink /proc/%d/ns/%s' % (pid, kind))
        assert guest_ns.startswith(kind + ':[')
        assert guest_ns != host.check_output('readlink /proc/self/ns/%s' % kind)


def test_capability_bounding_sets(host):
    bnd = {n: int(status_field(host, state(host, n)['init_pid'], 'CapBnd'), 16) for n in GUESTS}
    for name in GUESTS:  # util-vserver's default set: no sys_admin, no net_raw; chown kept
        assert not bnd[name] & (1 << CAP_SYS_ADMIN) and not bnd[name] & (1 << CAP_NET_RAW)
        assert bnd[name] & (1 << CAP_CHOWN)
    assert bnd['mol-web'] & (1 << CAP_SYS_CHROOT) and bnd['mol-web'] & (1 << CAP_NET_BIND_SERVICE)
    assert not bnd['mol-mail'] & (1 << CAP_SYS_CHROOT) and not bnd['mol-mail'] & (1 << CAP_NET_BIND_SERVICE)
    assert status_field(host, state(host, 'mol-dns')['init_pid'], 'NoNewPrivs') == '1'
    assert status_field(host, state(host, 'mol-web')['init_pid'], 'NoNewPrivs') == '0'


def test_raw_icmp_ccap(host):
    assert in_netns(host, 'mol-web', 'cat /proc/sys/net/ipv4/ping_group_range').split() == ['0', '2147483647']
    assert in_netns(host, 'mol-mail', 'cat /proc/sys/net/ipv4/ping_group_range').split() != ['0', '2147483647']


def test_cgroup_limits(host):
    assert int(cg(host, 'mol-web', 'memory', 'memory.limit_in_bytes', 'memory.max')) == 64 << 20
    assert int(cg(host, 'mol-mail', 'memory', 'memory.limit_in_bytes', 'memory.max')) == 48 << 20
    assert cg(host, 'mol-web', 'pids', 'pids.max', 'pids.max') == '64'
    assert cg(host, 'mol-dns', 'pids', 'pids.max', 'pids.max') == '16'
    quota = cg(host, 'mol-web', 'cpu', 'cpu.cfs_quota_us', 'cpu.max').split()[0]
    period = cg(host, 'mol-web', 'cpu', 'cpu.cfs_period_us', 'cpu.max').split()[-1]
    assert int(quota) * 4 == int(period)  # token bucket 1/4 of a CPU
    assert cg(host, 'mol-dns', 'cpu', 'cpu.shares', 'cpu.weight') in ('512', '50')
    pid = state(host, 'mol-mail')['init_pid']
    assert '512' in host.file('/proc/%d/limits' % pid).content_string.split('Max open files')[1].splitlines()[0]


def test_addresses_and_links(host):
    assert '198.18.30.11/24' in in_netns(host, 'mol-web', 'ip -br addr show dev eth0')
    assert 'fd00:5653::11/64' in in_netns(host, 'mol-web', 'ip -br addr show dev eth0')
    assert '198.18.30.12/24' in in_netns(host, 'mol-mail', 'ip -br addr show dev eth0')
    assert '198.18.30.13/24' in in_netns(host, 'mol-dns', 'ip -br addr show dev eth0')
    ports = host.check_output('ip -br link show master vstmolbr0').splitlines()
    assert len(ports) == 3
    assert '198.18.30.1/24' in host.check_output('ip -br addr show dev vstmolbr0')
    # the guests answer on their addresses, each from the others' side of the bridge
    assert host.run('busybox ping -c 1 -W 2 198.18.30.12').rc == 0


def test_guest_files_and_hostname(host):
    hosts = host.file('%s/trees/mol-web/etc/hosts' % TOP).content_string
    assert '198.18.30.11\tweb.mol.test web' in hosts
    assert host.file('%s/trees/mol-web/etc/hostname' % TOP).content_string == 'web\n'
    assert host.file('%s/trees/mol-dns/etc/shadow' % TOP).content_string.startswith('root:!:')
    out = host.check_output(ENV + '%s/cli/vserver mol-web exec hostname' % TOP)
    assert out.strip() == 'web.mol.test'


def test_kinds_and_unification(host):
    # busybox template, clone of it, and a tarball: after unify their busybox binaries are one protected inode
    inodes = {host.file('%s/trees/%s/bin/busybox' % (TOP, n)).inode for n in GUESTS}
    assert len(inodes) == 1
    assert 'i' in host.check_output('lsattr %s/trees/mol-web/bin/busybox' % TOP).split()[0]
    # excluded paths are never unified
    assert host.file('%s/trees/mol-web/etc/passwd' % TOP).inode != host.file('%s/trees/mol-mail/etc/passwd' % TOP).inode


def test_autostart_marks(host):
    assert host.file('%s/etc/autostart/mol-web' % TOP).exists
    assert host.file('%s/etc/autostart/mol-mail' % TOP).exists
    assert not host.file('%s/etc/autostart/mol-dns' % TOP).exists


def test_periodic_unify_job(host):
    cron = host.file('%s/cron.vserver-unify' % TOP).content_string
    assert 'root nice -n 10 %s/cli/vserver-unify' % TOP in cron
    out = json.loads(host.check_output('%s/cli/vserver-unify' % TOP))
    assert out['changed'] is False  # the converge already unified everything
