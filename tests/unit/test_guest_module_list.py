"""The guest role's filter (vserver.core.guest_module_list): role keys out, guest files in, defaults vs own keys."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.vserver.core.plugins.filter.guest_module_list import FilterModule

FILTER = FilterModule().filters()['guest_module_list']
HOSTS = '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'


def test_defaults_fill_a_bare_entry():
    out = FILTER([{'name': 'a', 'addresses': ['198.18.0.2/24', 'fd00::2/64'], 'xid': 5}],
                 domain='example.org', dns_servers=['192.0.2.1'])
    assert out == [{'name': 'a', 'addresses': ['198.18.0.2/24', 'fd00::2/64'], 'xid': 5, 'template': 'busybox',
                    'hostname': 'a.example.org', 'state': 'started', 'autostart': True, 'root_password_hash': '!',
                    'files': {'/etc/hostname': 'a\n',
                              '/etc/hosts': HOSTS + '198.18.0.2\ta.example.org a\nfd00::2\ta.example.org a\n',
                              '/etc/resolv.conf': 'search example.org\nnameserver 192.0.2.1\n'}}]


def test_own_keys_win_and_role_keys_stay_out():
    entry = {'name': 'b', 'hostname': 'b.other.net', 'domain': '', 'template': 'debootstrap', 'suite': 'bookworm',
             'state': 'stopped', 'autostart': False, 'hosts_entries': ['10.0.0.1 x'], 'dns_servers': ['9.9.9.9'],
             'root_password_hash': '$6$abc$def', 'root_authorized_keys': ['ssh-ed25519 AAA k']}
    out, = FILTER([entry], domain='example.org', dns_servers=['192.0.2.1'], root_authorized_keys=['other'])
    assert out == {'name': 'b', 'template': 'none', 'hostname': 'b.other.net', 'state': 'stopped',
                   'autostart': False, 'root_password_hash': '$6$abc$def', 'root_authorized_keys': ['ssh-ed25519 AAA k'],
                   'files': {'/etc/hostname': 'b\n', '/etc/hosts': HOSTS + '10.0.0.1 x\n',
                             '/etc/resolv.conf': 'nameserver 9.9.9.9\n'}}


def test_unmanaged_files_and_empty_resolv():
    out = FILTER([{'name': 'c', 'manage_files': 'no', 'template': 'clone', 'source': 'a'},
                  {'name': 'd', 'hostname': 'plain', 'root_authorized_keys': []}])
    assert out[0] == {'name': 'c', 'source': 'a', 'template': 'clone', 'hostname': 'c', 'state': 'started',
                      'autostart': True}
    assert out[1]['files'] == {'/etc/hostname': 'plain\n', '/etc/hosts': HOSTS, '/etc/resolv.conf': ''}
    assert out[1]['root_authorized_keys'] == []


@pytest.mark.parametrize('guests, message', [
    ('web', 'vserver_guests must be a list'),
    ([{'name': 'a'}, 'web'], r'vserver_guests\[1\] must be a mapping'),
    ([{'addresses': []}], r'vserver_guests\[0\] has no name'),
])
def test_bad_entries_are_named(guests, message):
    with pytest.raises(AnsibleFilterError, match=message):
        FILTER(guests)


@pytest.mark.parametrize('entry, default, wanted', [
    ({'name': 'e', 'template': 'mmdebstrap', 'packages': ['sysvinit-core']}, [], True),
    ({'name': 'e', 'template': 'debootstrap'}, ['sysvinit-core', 'nginx-light'], True),
    ({'name': 'e', 'template': 'debootstrap', 'packages': ['systemd-sysv']}, ['sysvinit-core'], False),
    ({'name': 'e', 'template': 'busybox', 'packages': ['sysvinit-core']}, [], False),
    ({'name': 'e', 'template': 'mmdebstrap', 'packages': ['sysvinit-core'], 'manage_files': False}, [], False),
])
def test_a_sysvinit_guest_gets_a_container_inittab(entry, default, wanted):
    out, = FILTER([entry], packages=default)
    inittab = out.get('files', {}).get('/etc/inittab')
    assert (inittab is not None) == wanted
    if wanted:
        lines = inittab.splitlines()
        assert 'p0::powerfail:/sbin/init 0' in lines and 'l0:0:wait:/etc/init.d/rc 0' in lines
        assert not [line for line in lines if 'getty' in line and not line.startswith('#')]
