"""limits and capabilities: a task's options are merged over the stored section (None keeps the stored value,
an explicit value removes); the guests module's whole-section form is ``replace``."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _cgroup, _limits
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

from test_limits_validate import FakeHost

V2 = _cgroup.Layout(2, unified='/nonexistent')
STORED = {'memory': 512 << 20, 'nproc': 64, 'cpu': {'quota': 25000, 'period': 100000}, 'cpu_weight': 200,
          'cpuset': '0-1', 'io': {'weight': 300}, 'rlimits': {'core': {'soft': 0, 'hard': 0}}}
# module params as Ansible passes them: every option present, None when the task does not give it
NONE = dict.fromkeys(_limits.KEYS)


def _after(tmp_path, stored, given):
    host = FakeHost(tmp_path / str(len(list(tmp_path.iterdir()))))
    return _limits.validate(_limits.merge(stored, dict(NONE, **given)), host, V2)


@pytest.mark.parametrize('given,expected', [
    ({}, STORED),
    ({'memory': '1G'}, dict(STORED, memory=1 << 30)),
    ({'memory': 'max'}, dict(STORED, memory='max')),
    ({'memory': 'unlimited'}, dict(STORED, memory='max')),
    ({'nproc': 'max'}, dict(STORED, nproc='max')),
    ({'cpu': {'quota': 'max'}}, {k: v for k, v in STORED.items() if k != 'cpu'}),
    ({'cpu': {'fill_rate': 1, 'interval': 2}}, dict(STORED, cpu={'quota': 50000, 'period': 100000})),
    ({'cpu_weight': 100}, dict(STORED, cpu_weight=100)),
    ({'cpuset': 'all'}, {k: v for k, v in STORED.items() if k != 'cpuset'}),
    ({'cpuset': ' ALL '}, {k: v for k, v in STORED.items() if k != 'cpuset'}),
    ({'cpuset': '2'}, dict(STORED, cpuset='2')),
    ({'io': {}}, {k: v for k, v in STORED.items() if k != 'io'}),
    ({'io': {'weight': None, 'devices': None}}, {k: v for k, v in STORED.items() if k != 'io'}),
    ({'rlimits': {}}, {k: v for k, v in STORED.items() if k != 'rlimits'}),
    ({'rlimits': {'nofile': 512}}, dict(STORED, rlimits={'nofile': {'soft': 512, 'hard': 512}})),
])
def test_limits_merge(tmp_path, given, expected):
    assert _after(tmp_path, STORED, given) == expected


def test_limits_merge_keeps_disk_and_removes_it_with_none(tmp_path):
    stored = {'disk': {'size': 64 << 20, 'backend': 'loop', 'fstype': 'ext4'}}
    given = {'memory': '1G', 'disk_backend': 'auto', 'disk_fstype': 'ext4'}
    assert _after(tmp_path, stored, given) == dict(stored, memory=1 << 30)
    assert _after(tmp_path, stored, dict(given, disk='none')) == {'memory': 1 << 30}


def test_limits_merge_checks_the_merged_section(tmp_path):
    """memory_high above a stored memory is refused although the task gives only memory_high."""
    with pytest.raises(VServerError) as exc:
        _after(tmp_path, {'memory': 512 << 20}, {'memory_high': '1G'})
    assert exc.value.field == 'memory_high'


@pytest.mark.parametrize('given,field,words', [
    ({'cpuset': 'none'}, 'cpuset', 'or all'),
    ({'cpuset': 'max'}, 'cpuset', 'or all'),
    ({'memory': 'none'}, 'memory', 'max/unlimited'),
    ({'nproc': 'none'}, 'nproc', 'or max'),
    ({'disk': 'unlimited'}, 'disk', 'give none to remove'),
    ({'disk': 'max'}, 'disk', 'give none to remove'),
    ({'cpu': {'quota': 'none'}}, 'cpu.quota', 'or max'),
    ({'cpu_weight': 'default'}, 'cpu_weight', 'from 1 to 10000'),
])
def test_limits_bad_removal_values(tmp_path, given, field, words):
    with pytest.raises(VServerError) as exc:
        _after(tmp_path, STORED, given)
    assert exc.value.field == field and words in str(exc.value)


def test_limits_replace_is_the_given_section(tmp_path):
    """What the guests module passes (replace): an option left out is not taken from the stored section."""
    assert _limits.validate(dict(NONE, memory='1G'), FakeHost(tmp_path), V2) == {'memory': 1 << 30}


CAPS = {'bcaps_drop': ['CAP_NET_RAW'], 'ccaps': ['raw_icmp'], 'no_new_privs': True, 'seccomp': {'deny': ['keyctl']}}
CNONE = dict.fromkeys(('bcaps', 'bcaps_add', 'bcaps_drop', 'ccaps', 'no_new_privs', 'seccomp'))


@pytest.mark.parametrize('given,expected', [
    ({}, CAPS),
    ({'ccaps': []}, {k: v for k, v in CAPS.items() if k != 'ccaps'}),
    ({'no_new_privs': False}, {k: v for k, v in CAPS.items() if k != 'no_new_privs'}),
    ({'seccomp': {'mode': 'default'}}, {k: v for k, v in CAPS.items() if k != 'seccomp'}),
    ({'bcaps_drop': []}, {k: v for k, v in CAPS.items() if k != 'bcaps_drop'}),
    ({'bcaps_add': ['SYS_TIME']}, dict(CAPS, bcaps_add=['CAP_SYS_TIME'])),
    ({'bcaps': ['CHOWN', 'KILL']}, dict({k: v for k, v in CAPS.items() if k != 'bcaps_drop'},
                                        bcaps=['CAP_CHOWN', 'CAP_KILL'])),
])
def test_caps_merge(given, expected):
    after = _caps.validate(_caps.merge(CAPS, dict(CNONE, **given)))
    assert _caps.validate(expected) == after


@pytest.mark.parametrize('bcaps', ['default', ['default'], ['Default ']])
def test_caps_bcaps_default_lifts_a_stored_set(bcaps):
    stored = {'bcaps': ['CAP_CHOWN'], 'ccaps': ['raw_icmp']}
    after = _caps.validate(_caps.merge(stored, dict(CNONE, bcaps=bcaps)))
    assert after == {'ccaps': ['raw_icmp']}
    assert _caps.resolve(after) == _caps.resolve({})


def test_caps_drop_form_replaces_a_stored_bcaps():
    after = _caps.validate(_caps.merge({'bcaps': ['CAP_CHOWN']}, dict(CNONE, bcaps_drop=['NET_RAW'])))
    assert after == _caps.validate({'bcaps_drop': ['CAP_NET_RAW']}) and 'bcaps' not in after


@pytest.mark.parametrize('given,field', [
    ({'bcaps': ['none']}, 'bcaps'), ({'bcaps': 'none'}, 'bcaps'), ({'ccaps': 'none'}, 'ccaps'),
    ({'bcaps_drop': 'all'}, 'bcaps_drop'),
])
def test_caps_bad_removal_values(given, field):
    with pytest.raises(VServerError) as exc:
        _caps.validate(_caps.merge(CAPS, dict(CNONE, **given)))
    assert exc.value.field == field


NET = {'addresses': ['10.0.0.5/24'], 'mode': 'bridge', 'interface': 'eth1', 'bridge': 'vsbr1', 'mtu': 1400,
       'gateway': ['10.0.0.9']}


@pytest.mark.parametrize('given,expected', [
    ({'address': '10.0.0.6/24'}, dict(NET, addresses=['10.0.0.5/24', '10.0.0.6/24'])),
    ({'address': '10.0.0.6/24', 'exclusive': True}, dict(NET, addresses=['10.0.0.6/24'])),
    ({'address': '10.0.0.5/24', 'mtu': 1500}, dict(NET, mtu=1500)),
    ({'address': '10.0.0.5/24', 'gateway': []}, dict(NET, gateway=[])),
    ({'address': '10.0.0.5/24', 'bridge': 'vsbr2'}, dict(NET, bridge='vsbr2')),
])
def test_address_unspecified_options_keep_stored_values(given, expected):
    """address: the address list is the module's own; mtu, gateway, bridge, interface left out are kept."""
    from ansible_collections.vserver.core.plugins.module_utils import _netns
    assert _netns.desired(NET, _netns.validate(dict(given, name='g'))) == expected
