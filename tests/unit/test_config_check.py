"""Guest config files are validated on every read; a bad one is reported per guest, never hiding the others."""
import json
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _config, _limits, _mgr_context
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError


def good(name='web', **changes):
    doc = {'name': name, 'xid': 101, 'root': '/srv/guests/%s' % name, 'init': ['/sbin/init'], 'hostname': 'web.test',
           'stop_signal': 'SIGTERM', 'stop_timeout': 10}
    doc.update(changes)
    return doc


def without(key):
    doc = good()
    del doc[key]
    return doc


@pytest.fixture
def paths(tmp_path):
    out = Paths(config_dir=str(tmp_path / 'etc'), run_dir=str(tmp_path / 'run'), tree_dir=str(tmp_path / 'trees'),
                log_dir=str(tmp_path / 'log'), cgroup_parent='vst-unit-config', defaults_file=None)
    os.makedirs(out.config_dir)
    return out


def put(paths, name, content):
    data = content if isinstance(content, bytes) else (
        content.encode() if isinstance(content, str) else json.dumps(content).encode())
    with open(paths.config_file(name), 'wb') as handle:
        handle.write(data)


TRUNCATED = json.dumps(good())[:40]

# (file content, words the error must hold); every one of them is refused by load() AND by scan()
CORRUPT = [
    ('[1, 2]', 'holds a JSON list, not a JSON object'),
    ('null', 'holds null, not a JSON object'),
    ('"web"', 'holds a JSON string'),
    ('', 'is empty'),
    ('  \n', 'is empty'),
    (TRUNCATED, 'is not valid JSON'),
    (b'{"name": "web\xff"}', 'is not UTF-8'),
    (good(colour='red'), "unknown key 'colour'"),
    (good(name='other'), "names guest 'other', not 'web'"),
    (good(name=5), "names guest 5, not 'web'"),
    (without('xid'), 'missing key xid'),
    (without('root'), 'missing key root'),
    (without('init'), 'missing key init'),
    (good(xid='101'), "xid must be stored as the number 101 (got the string '101')"),
    (good(xid=1), 'xid must be an integer from 2 to 49151 (got 1)'),
    (good(xid=49152), 'xid must be an integer from 2 to 49151'),
    (good(xid=True), 'xid must be an integer from 2 to 49151'),
    (good(xid=None), 'xid must not be null'),
    (good(init=None), 'init must not be null'),
    (good(xid=101.5), 'xid must be an integer'),
    (good(root=5), 'root must be a string (got 5)'),
    (good(root='relative/tree'), 'root must be an absolute path'),
    (good(root='/usr'), 'root must be a dedicated directory'),
    (good(hostname=5), 'hostname must be a string (got 5)'),
    (good(hostname='bad_host!'), 'hostname must be a DNS name'),
    (good(domainname=['a']), 'domainname must be a string'),
    (good(init='/sbin/init'), 'init must be an argv list such as ["/sbin/init"] (got \'/sbin/init\')'),
    (good(init=[]), 'init must be an absolute path'),
    (good(init=[5]), 'init must be an absolute path'),
    (good(init={'a': 1}), "init must be an argv list such as [\"/sbin/init\"] (got {'a': 1})"),
    (good(init=5), 'init must be an argv list such as ["/sbin/init"] (got 5)'),
    (good(stop_signal=15), 'stop_signal must be a string (got 15)'),
    (good(stop_signal='SIGFOO'), 'stop_signal must be a signal name'),
    (good(stop_signal='term'), "stop_signal must be stored as the string 'SIGTERM' (got the string 'term')"),
    (good(stop_timeout='10'), "stop_timeout must be stored as the number 10 (got the string '10')"),
    (good(stop_timeout=-1), 'stop_timeout must be a number of seconds from 0 to 3600'),
    (good(stop_timeout=True), 'stop_timeout must be a number of seconds from 0 to 3600 (got True)'),
    (good(stop_timeout=[1]), 'stop_timeout must be a number'),
    (good(capabilities=['chown']), 'capabilities must be a JSON object (got a JSON list)'),
    (good(capabilities={'bcaps_drop': ['nonsense']}), 'capabilities: '),
    (good(capabilities={'bcaps_drop': 'sys_ptrace'}), 'capabilities: bcaps_drop: expected a list'),
    (good(capabilities={'colour': 1}), 'capabilities: unknown key colour'),
    (good(network={'addresses': ['300.1.1.1/24']}), 'network: addresses must be an IPv4 or IPv6 address'),
    (good(network={'addresses': ['198.18.0.2/24'], 'mode': 'tunnel'}), 'network: mode must be bridge or macvlan'),
    (good(network={'addresses': ['198.18.0.2/24'], 'mtu': 'big'}), 'network: mtu must be an integer'),
    (good(network={'addresses': ['198.18.0.2/24'], 'colour': 1}), 'network: unknown key colour'),
    (good(network=7), 'network must be a JSON object (got a JSON number)'),
    (good(limits='512M'), 'limits must be a JSON object (got a JSON string)'),
    (good(unify=[]), 'unify must be a JSON object (got a JSON list)'),
]


@pytest.mark.parametrize('content,words', CORRUPT, ids=[str(i) for i in range(len(CORRUPT))])
def test_corrupt_config_is_refused_naming_file_and_problem(paths, content, words):
    put(paths, 'web', content)
    with pytest.raises(_config.BrokenConfig) as err:
        _config.load(paths, 'web')
    message = str(err.value)
    assert message.startswith(paths.config_file('web') + ': ')
    assert words in message
    assert isinstance(err.value, VServerError)  # callers that report VServerError report it without a traceback
    put(paths, 'db', good('db', xid=102))
    docs, broken = _config.scan(paths)
    assert list(docs) == ['db'] and list(broken) == ['web']
    assert str(broken['web']) == message


@pytest.mark.parametrize('section,value,words', [
    ('limits', {'memory': 'lots'}, 'limits: memory: expected bytes'),
    ('limits', {'colour': 1}, 'limits: limits: unknown options colour'),
    ('limits', {'cpu': 5}, 'limits: cpu: expected {fill_rate, interval}'),
    ('limits', {'rlimits': {'nofile': {'soft': 10, 'hard': 5}}}, 'soft limit 10 is above the hard limit 5'),
])
def test_limits_section_is_checked_by_single_guest_reads(paths, section, value, words):
    """load() (start, stop, the modules) checks the limits section; listings check it is an object only."""
    put(paths, 'web', good(**{section: value}))
    with pytest.raises(_config.BrokenConfig) as err:
        _config.load(paths, 'web')
    assert words in str(err.value)
    assert list(_config.scan(paths)[0]) == ['web']


def test_unify_section_is_checked_by_its_reader(paths):
    put(paths, 'web', good(unify={'state': 'bogus'}))
    assert _config.load(paths, 'web')['unify'] == {'state': 'bogus'}
    with pytest.raises(_config.BrokenConfig) as err:
        _config.load(paths, 'web', _config.SECTIONS)
    assert 'unify: state must be one of' in str(err.value)
    docs, broken = _config.scan(paths, _config.SECTIONS)
    assert not docs and 'unify: state' in str(broken['web'])


def test_configs_the_modules_write_are_accepted(paths):
    network = {'addresses': ['198.18.0.2/24', 'fd00:5653::2/64'], 'mode': 'bridge', 'interface': 'eth0',
               'bridge': 'vsbr0', 'gateway': ['198.18.0.1'], 'mtu': 1500}
    doc = good(capabilities=_caps.validate({'bcaps_drop': ['CAP_SYS_PTRACE'], 'ccaps': ['raw_icmp'],
                                            'no_new_privs': True}),
               limits=_limits.validate({'memory': '256M', 'nproc': 100, 'cpu': {'fill_rate': 1, 'interval': 4},
                                        'rlimits': {'nofile': {'soft': 512, 'hard': 1024}},
                                        'disk': {'size': '1G', 'backend': 'loop', 'fstype': 'ext4'}}),
               network=network, unify={'state': 'present', 'method': 'hardlink', 'protect': True},
               domainname='example.test', stop_timeout=2.5)
    put(paths, 'web', doc)
    put(paths, 'old', {'name': 'old', 'xid': 7, 'root': '/srv/old', 'init': ['/sbin/init', '--quiet']})
    put(paths, 'gone', {'name': 'gone', 'xid': 8, 'root': '/srv/gone', 'init': ['/sbin/init'], 'hostname': None,
                        'unify': {'state': 'absent'}, 'limits': None})
    assert _config.load(paths, 'web', _config.SECTIONS) == dict(doc, schema=_config.SCHEMA)  # read as migrated
    docs, broken = _config.scan(paths, _config.SECTIONS)
    assert sorted(docs) == ['gone', 'old', 'web'] and not broken
    assert _config.load(paths, 'missing') is None


def test_a_file_name_that_is_no_guest_name_is_broken_not_fatal(paths):
    put(paths, 'Bad Name', good())
    put(paths, 'db', good('db', xid=102))
    docs, broken = _config.scan(paths)
    assert list(docs) == ['db'] and 'name must be 1 to 63 characters' in str(broken['Bad Name'])


def test_xids_of_broken_configs_are_never_handed_out_again(paths):
    put(paths, 'a', good('a', xid=2))
    put(paths, 'b', good('b', xid=3, colour='red'))      # broken, xid readable
    put(paths, 'c', good('c', xid='4'))                   # broken, string xid still names 4
    put(paths, 'd', '[1]')                                # broken, no xid at all
    put(paths, 'e', good('e', xid=70000))                 # broken, xid out of range: nothing to reserve
    assert _config.xids_in_use(paths) == {2: 'a', 3: 'b', 4: 'c'}
    assert _config.free_xid(paths) == 5
    assert _config.xids_in_use(paths, exclude='b') == {2: 'a', 4: 'c'}


def test_creating_a_guest_next_to_broken_configs_takes_a_free_xid(paths):
    put(paths, 'b', good('b', xid=2, colour='red'))
    taken = _config.xids_in_use(paths, exclude='new')
    doc = _mgr_context._desired(paths, _mgr_context.validate({'name': 'new'}), None)
    assert doc['xid'] == 3 and 2 in taken
    with pytest.raises(VServerError) as err:
        _mgr_context._desired(paths, _mgr_context.validate({'name': 'new', 'xid': 2}), None)
    assert 'xid 2 is taken by guest b' in str(err.value)


def test_info_lists_good_and_broken_guests(paths):
    put(paths, 'db', good('db', xid=102))
    put(paths, 'web', good(xid='101'))
    put(paths, 'zz', 'null')
    rows = {row['name']: row for row in _mgr_context.info(paths, with_processes=False)['guests']}
    assert sorted(rows) == ['db', 'web', 'zz']
    assert rows['db']['state'] == 'stopped' and rows['db']['xid'] == 102 and 'error' not in rows['db']
    assert rows['web']['state'] == 'broken' and rows['web']['xid'] == 101
    assert rows['web']['runtime_state'] == 'stopped' and rows['web']['config'] == paths.config_file('web')
    assert rows['web']['error'] == paths.config_file('web') + ": xid must be stored as the number 101 (got the " \
        "string '101')"
    assert rows['zz']['state'] == 'broken' and rows['zz']['xid'] is None and 'holds null' in rows['zz']['error']
    only = _mgr_context.info(paths, names=['zz'], with_processes=False)['guests']
    assert [row['name'] for row in only] == ['zz']
    with pytest.raises(VServerError) as err:
        _mgr_context.info(paths, names=['nope'])
    assert 'no such guest: nope' in str(err.value)


def test_stat_table_shows_a_broken_guest_without_xid():
    from ansible_collections.vserver.core.plugins.module_utils import _runtime_views
    lines = _runtime_views.stat_table([{'name': 'zz', 'xid': None, 'state': 'broken', 'nproc': 2},
                                       {'name': 'db', 'xid': 102, 'state': 'stopped'}]).splitlines()
    assert lines[1].split() == ['-', '2', '-', '-', '-', '-', 'broken', 'zz', '-']
    assert lines[2].split()[0] == '102'


def test_unify_names_a_broken_guest_and_skips_it_for_all(paths):
    """The unify manager reads the configs with their unify sections checked (only it does: ``LISTED`` leaves
    them out) and passes them to the concern's ``select``."""
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_unify, _unify
    put(paths, 'a', good('a', xid=2))
    put(paths, 'b', good('b', xid=3, unify={'state': 'bogus'}))
    put(paths, 'c', '[]')
    for name, words in (('b', 'unify: state must be one of'), ('c', 'holds a JSON list')):
        with pytest.raises(VServerError) as err:
            _mgr_unify.select(paths, _unify.validate({'guests': [name]}))
        assert str(err.value).startswith('guests: %s: ' % paths.config_file(name)) and words in str(err.value)
    assert 'b' in _config.scan(paths)[0]          # a listing does not check the unify section
    docs, selected, sources, roots = _mgr_unify.select(paths, _unify.validate({'guests': 'all'}))
    assert selected == ['a'] and sorted(docs) == ['a']
