"""Fleet verification, per host (testinfra over the same ssh as Ansible): after site.yml, the migration of
fleet-web from vst-fleet1 to vst-fleet3 and a failed migration of fleet-dns to vst-fleet2 (rolled back), each host
runs exactly its guests, in its own cgroup parent."""
import json

EXPECTED = {
    'vst-fleet1': {'running': {'fleet-dns'}, 'stopped': {'fleet-web'}},
    'vst-fleet2': {'running': {'fleet-mail'}, 'stopped': set()},
    'vst-fleet3': {'running': {'fleet-moodle', 'fleet-web'}, 'stopped': set()},
}


def vserver(host, *args):
    return host.run("set -a; . /etc/default/vserver; set +a; exec vserver %s" % ' '.join(args))


def name(host):
    return host.ansible.get_variables()['inventory_hostname']


def test_own_hostname_and_mounts(host):
    me = name(host)
    assert host.run('hostname').stdout.strip() == me
    for path in ('/etc/vservers', '/var/lib/vservers'):
        assert host.mount_point(path).exists
    assert host.file('/etc/default/vserver').contains('VSERVER_CGROUP_PARENT=vstest-%s' % me.replace('vst-', ''))


def test_guest_states(host):
    me = name(host)
    listed = set(vserver(host, 'list').stdout.split())
    want = EXPECTED[me]
    assert listed == want['running'] | want['stopped']
    for guest in want['running']:
        assert vserver(host, guest, 'status').rc == 0, guest
    for guest in want['stopped']:
        assert vserver(host, guest, 'status').rc == 3, guest


def test_guests_live_in_this_hosts_cgroup_parent(host):
    me = name(host)
    parent = 'vstest-' + me.replace('vst-', '')
    for guest in EXPECTED[me]['running']:
        state = json.loads(host.file('/run/vservers/%s/state.json' % guest).content_string)
        cgroups = host.file('/proc/%d/cgroup' % state['init_pid']).content_string
        assert ('/%s/%s' % (parent, guest)) in cgroups
    # nothing of a stopped (migrated away) guest is left on this host
    for guest in EXPECTED[me]['stopped']:
        assert not host.file('/run/vservers/%s' % guest).exists
        out = host.run("grep -l '/%s/%s' /proc/[0-9]*/cgroup 2>/dev/null" % (parent, guest))
        assert out.stdout.strip() == ''


def test_guests_answer_on_their_addresses(host):
    me = name(host)
    addresses = {'fleet-web': '198.18.20.11', 'fleet-dns': '198.18.20.12', 'fleet-mail': '198.18.20.21',
                 'fleet-moodle': '198.18.20.31'}
    for guest in EXPECTED[me]['running']:
        assert host.run('busybox ping -c 1 -W 2 %s' % addresses[guest]).rc == 0, guest
    for guest in EXPECTED[me]['stopped']:
        assert host.run('busybox ping -c 1 -W 1 %s' % addresses[guest]).rc != 0, guest


def test_migrated_guest(host):
    me = name(host)
    mark = host.file('/etc/vservers/autostart/fleet-web')
    if me == 'vst-fleet3':
        assert mark.exists
        tree = host.file('/var/lib/vservers/fleet-web/bin/busybox')
        assert tree.exists
        conf = json.loads(host.file('/etc/vservers/fleet-web.json').content_string)
        assert conf['xid'] == 1101 and conf['root'] == '/var/lib/vservers/fleet-web'
        assert conf['network']['addresses'] == ['198.18.20.11/24']
        assert conf['limits']['nproc'] == 64
        assert host.run("set -a; . /etc/default/vserver; vserver fleet-web exec hostname").stdout.strip() == 'web.fleet.test'
    elif me == 'vst-fleet1':
        assert not mark.exists
        assert host.file('/etc/vservers/fleet-web.json').exists  # retired, kept stopped


def test_status_table(host):
    """status.yml (run after the migration) printed one table of every guest on every host."""
    import os
    with open(os.path.join(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'], 'status.txt')) as handle:
        rows = [line.split() for line in handle.read().splitlines()]
    assert rows[0] == ['HOST', 'NAME', 'XID', 'STATE', 'ADDRESSES', 'MEMORY', 'PROC', 'LIMIT', 'CPU', 'THROTTLED', 'OOM',
                       'UPTIME', 'NET_RX', 'NET_TX']
    table = {(r[0], r[1]): r for r in rows[1:]}
    assert table[('vst-fleet3', 'fleet-web')][2:5] == ['1101', 'running', '198.18.20.11/24']
    assert table[('vst-fleet1', 'fleet-web')][3] == 'stopped'
    assert table[('vst-fleet2', 'fleet-mail')][3:5] == ['running', '198.18.20.21/24']
    assert int(table[('vst-fleet3', 'fleet-moodle')][6]) >= 1
    # the figures of a running guest (context_info's metrics): CPU seconds, OOM kills, uptime, bytes through its eth0
    web = table[('vst-fleet3', 'fleet-web')]
    assert web[8].endswith('s') and web[10] == '0' and web[11] != '-' and web[12] != '-', web
    assert len(rows) == 1 + 5


def test_failed_migration_left_no_trace_on_the_target(host):
    if name(host) == 'vst-fleet2':
        assert not host.file('/etc/vservers/fleet-dns.json').exists
        assert not host.file('/var/lib/vservers/fleet-dns').exists
        assert not host.file('/run/vservers/fleet-dns').exists
    elif name(host) == 'vst-fleet1':
        assert host.file('/etc/vservers/autostart/fleet-dns').exists
        assert vserver(host, 'fleet-dns', 'status').rc == 0


def test_a_role_ran_inside_every_running_guest(host):
    """side_effect.yml ran molecule/fleet/inside.yml on the guests the vserver inventory plugin found, through the
    vserver connection (ssh to this host, `vserver NAME exec`): each running guest holds what its role wrote, as its
    own root; the retired copy of fleet-web on vst-fleet1 (stopped) was left alone."""
    me = name(host)
    for guest in EXPECTED[me]['running']:
        assert vserver(host, guest, 'exec', 'cat', '/etc/motd').stdout == 'managed by ansible: %s on %s\n' % (guest, me)
        nodename = vserver(host, guest, 'exec', 'uname', '-n').stdout.strip()
        got = vserver(host, guest, 'exec', 'cat', '/etc/inside-ok').stdout.split()
        assert got == ['uid=0', 'nodename=' + nodename, 'pid1=init'], (guest, got)
    for guest in EXPECTED[me]['stopped']:
        assert not host.file('/var/lib/vservers/%s/etc/inside-ok' % guest).exists
