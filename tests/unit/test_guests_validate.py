"""_mgr_guests.validate: the whole list is checked (and normalised) before any guest is touched; each refusal names
the entry's field."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _mgr_guests
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


@pytest.mark.parametrize('guests, field, words', [
    ('web', 'guests', 'must be a list'),
    ([{'xid': 5}], 'guests[0]', 'at least a name'),
    (['web'], 'guests[0]', 'at least a name'),
    ([{'name': 'a', 'colour': 'red'}], 'guests[0]', 'unknown keys colour'),
    ([{'name': 'a'}, {'name': 'a'}], 'guests[1].name', 'listed twice'),
    ([{'name': 'a', 'xid': 7}, {'name': 'b', 'xid': 7}], 'guests[1].xid', 'also given to guest a'),
    ([{'name': 'a', 'state': 'running'}], 'guests[0].state', 'started, stopped'),
    ([{'name': 'a', 'template': 'debootstrap'}], 'guests[0].template', 'built by the guest role'),
    ([{'name': 'a', 'template': 'clone'}], 'guests[0].clone_from', 'names the guest to clone'),
    ([{'name': 'a', 'template': 'clone', 'clone_from': '../b'}], 'guests[0].clone_from', 'lowercase'),
    ([{'name': 'a', 'files': ['/etc/motd']}], 'guests[0].files', 'dict of absolute guest paths'),
    ([{'name': 'a', 'files': {'etc/hosts': 'x'}}], 'guests[0].files', 'absolute file path'),
    ([{'name': 'a', 'files': {'/etc/../../x': 'x'}}], 'guests[0].files', 'without "." or ".."'),
    ([{'name': 'a', 'files': {'/etc/motd': {'mode': '0644'}}}], 'guests[0].files', 'with content'),
    ([{'name': 'a', 'files': {'/etc/motd': 7}}], 'guests[0].files', 'a string or a dict'),
    ([{'name': 'a', 'root_password_hash': 'a:b'}], 'guests[0].root_password_hash', 'without ":"'),
    ([{'name': 'a', 'root_password_hash': ''}], 'guests[0].root_password_hash', 'crypt(3)'),
    ([{'name': 'a', 'root_authorized_keys': 'ssh-ed25519 AAAA'}], 'guests[0].root_authorized_keys', 'list'),
    ([{'name': 'a', 'limits': ['512M']}], 'guests[0].limits', 'dict of that module'),
    ([{'name': 'a', 'capabilities': 'all'}], 'guests[0].capabilities', 'dict of that module'),
    ([{'name': 'a', 'network': ['x']}], 'guests[0].network', 'dict of that module'),
    ([{'name': 'Bad'}], 'guests[0].name', 'lowercase'),
    # context options: the context manager's own checks and messages
    ([{'name': 'a', 'hostname': 'bad_host!'}], 'hostname', 'DNS name'),
    ([{'name': 'a', 'root': '/usr'}], 'root', 'dedicated'),
    ([{'name': 'a', 'xid': 1}], 'xid', '2 to 49151'),
])
def test_bad_lists(guests, field, words):
    with pytest.raises(VServerError) as exc:
        _mgr_guests.validate(guests)
    assert exc.value.field == field
    assert words in str(exc.value)


def test_a_bad_entry_late_in_the_list_refuses_the_whole_list():
    good = [{'name': 'g%d' % i} for i in range(5)]
    with pytest.raises(VServerError) as exc:
        _mgr_guests.validate(good + [{'name': 'late', 'state': 'gone'}])
    assert exc.value.field == 'guests[5].state'


def test_normalisation():
    out = _mgr_guests.validate([
        {'name': 'web'},
        {'name': 'db', 'state': None, 'template': None, 'addresses': '192.0.2.10/24'},
        {'name': 'copy', 'template': 'clone', 'clone_from': 'web', 'xid': 12},
    ])
    assert [g['name'] for g in out] == ['web', 'db', 'copy']
    assert out[0] == {'name': 'web', 'state': 'started', 'template': 'busybox'}
    assert out[1]['state'] == 'started' and out[1]['template'] == 'busybox'
    assert out[1]['addresses'] == ['192.0.2.10/24']  # one address given as a string
    assert out[2]['template'] == 'clone' and out[2]['xid'] == 12


def test_accepted_entries_are_not_changed_beyond_the_defaults():
    entry = {'name': 'web', 'state': 'frozen', 'files': {'/etc/motd': {'content': 'hi\n', 'mode': '0600'},
                                                         '/etc/issue': 'x'},
             'root_password_hash': '!', 'root_authorized_keys': [], 'autostart': True, 'purge': False,
             'capabilities': {'bcaps_add': ['NET_ADMIN']}, 'limits': {'memory': '64M'}, 'network': {}}
    assert _mgr_guests.validate([entry]) == [dict(entry, template='busybox')]
    assert _mgr_guests.validate([]) == []
