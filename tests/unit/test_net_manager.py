"""The address manager's contract without root: a guest that does not run (config only). Live changes are tested
as root in tests/integration/test_address*.py."""
import secrets

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _mgr_address, _netns
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError
from ansible_collections.vserver.core.plugins.module_utils._result import Result

BRIDGE = 'vstu' + secrets.token_hex(3)   # no such host bridge: gateways are not taken from the host


@pytest.fixture
def paths(tmp_path):
    p = Paths(config_dir=str(tmp_path / 'etc'), run_dir=str(tmp_path / 'run'), tree_dir=str(tmp_path / 'trees'),
              log_dir=str(tmp_path / 'log'), cgroup_parent='vstest-unit', defaults_file=None)
    _config.save(p, {'name': 'g', 'xid': 7, 'root': str(tmp_path / 'trees/g'), 'init': ['/sbin/init']})
    return p


def test_result_of_a_stopped_guest_and_a_second_run(paths):
    params = dict(_netns.DEFAULTS, address='203.0.113.5/24', bridge=BRIDGE)
    res = _mgr_address.ensure(paths, 'g', params, check_mode=True)
    assert isinstance(res, Result) and res.changed and res.actions == ['create network config']
    assert _config.load(paths, 'g').get('network') is None                   # check mode writes nothing
    res = _mgr_address.ensure(paths, 'g', params)
    section = {'addresses': ['203.0.113.5/24'], 'mode': 'bridge', 'interface': 'eth0', 'bridge': BRIDGE,
               'gateway': ['203.0.113.1']}
    assert (res.before, res.after, res.restart_required) == ({}, section, False)
    assert res.extra == {'running': False, 'network': section, 'forwarding_needed': res.extra['forwarding_needed']}
    assert _config.load(paths, 'g')['network'] == section
    again = _mgr_address.ensure(paths, 'g', params)
    assert not again.changed and again.actions == [] and again.before == again.after == section


def test_replace_makes_the_given_addresses_the_whole_set(paths):
    _mgr_address.ensure(paths, 'g', {'addresses': ['203.0.113.5/24', '203.0.113.6/24'], 'bridge': BRIDGE})
    kept = _mgr_address.ensure(paths, 'g', {'address': '203.0.113.7/24'})
    assert kept.after['addresses'] == ['203.0.113.5/24', '203.0.113.6/24', '203.0.113.7/24']
    whole = _mgr_address.ensure(paths, 'g', {'addresses': ['203.0.113.6/24']}, replace=True)
    assert whole.after['addresses'] == ['203.0.113.6/24'] and whole.actions == ['update config']
    assert whole.after['bridge'] == BRIDGE          # options not given keep their stored values


def test_old_signature_returns_the_module_dict(paths):
    out = _mgr_address.ensure_params(paths, {'name': 'g', 'address': '203.0.113.5/24', 'bridge': BRIDGE})
    assert out['changed'] and out['diff']['before'] == {} and out['network']['addresses'] == ['203.0.113.5/24']
    keys = {'changed', 'actions', 'running', 'restart_required', 'network', 'diff', 'forwarding_needed'}
    if out['forwarding_needed'].get('ipv4'):       # this host does not forward: said once, as a warning
        keys.add('warnings')
        assert 'does not forward ipv4' in out['warnings'][0]
    assert set(out) == keys
    gone = _mgr_address.ensure_params(paths, {'name': 'g', 'state': 'absent'})
    assert gone['actions'] == ['remove network config'] and gone['diff']['after'] == {} and gone['network'] == {}
    assert _mgr_address.describe(paths, _config.load(paths, 'g')) == {'addresses': []}


def test_refusals_name_the_field(paths):
    with pytest.raises(VServerError) as err:
        _mgr_address.ensure(paths, 'nosuch', {'address': '203.0.113.5/24'})
    assert err.value.field == 'name' and 'vserver.core.context' in str(err.value)
    with pytest.raises(VServerError) as err:
        _mgr_address.ensure(paths, 'g', {'address': '127.0.0.2/8'})
    assert err.value.field == 'address'


def test_the_manager_passes_the_other_guests_configs_to_the_conflict_check(paths, tmp_path):
    """_mgr_address reads every guest's config (a broken one is left out) and _netns.check_conflicts refuses an
    address another guest holds."""
    _config.save(paths, {'name': 'db', 'xid': 8, 'root': str(tmp_path / 'trees/db'), 'init': ['/sbin/init'],
                         'network': {'mode': 'bridge', 'bridge': BRIDGE, 'interface': 'eth0',
                                     'addresses': ['203.0.113.6/24'], 'gateway': ['203.0.113.1']}})
    with open(paths.config_file('zz'), 'w') as handle:
        handle.write('[]')
    with pytest.raises(VServerError) as err:
        _mgr_address.ensure(paths, 'g', {'address': '203.0.113.6/24', 'bridge': BRIDGE}, check_mode=True)
    assert (str(err.value), err.value.field) == ('address 203.0.113.6 is already held by guest db', 'address')
    with pytest.raises(VServerError) as err:
        _mgr_address.ensure(paths, 'g', {'address': '203.0.113.5/24', 'gateway': '203.0.113.6', 'bridge': BRIDGE},
                            check_mode=True)
    assert (str(err.value), err.value.field) == ('gateway 203.0.113.6 is the address of guest db', 'gateway')
    assert _mgr_address.ensure(paths, 'g', {'address': '203.0.113.5/24', 'bridge': BRIDGE}, check_mode=True).changed
