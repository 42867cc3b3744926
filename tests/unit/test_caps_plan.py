"""The capabilities planner's decisions (_caps_plan.plan), without root: what is written live, what waits for a restart,
what the module reports; and the module's options come from the concern (_caps.ARGUMENT_SPEC)."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _caps_plan, _seccomp

LAST = 40
DOC = {'name': 'web', 'xid': 2, 'root': '/srv/web', 'init': ['/sbin/init']}


def status(names, nnp=False):
    return {'CapBnd': '%016x' % _caps.mask(names), 'NoNewPrivs': '1' if nnp else '0', 'Seccomp': '2'}


def running(section, sysctls=None, seccomp=None, **kw):
    """A guest that runs exactly as ``section`` asks, unless told otherwise."""
    names = kw.pop('bcaps', _caps.resolve(section))
    digest = seccomp or _seccomp.digest(_caps.seccomp_program(dict(DOC, capabilities=section)))
    return _caps_plan.Running(status=status(names, kw.pop('nnp', bool(section.get('no_new_privs')))), last_cap=LAST,
                              seccomp=digest, sysctls=sysctls)


def plan(stored, after, run=None, restart=False):
    return _caps_plan.plan(dict(DOC, capabilities=stored), _caps.validate(after), run, restart)


def test_a_stopped_guest_gets_its_config_only():
    todo = plan({}, {'bcaps_drop': ['kill'], 'ccaps': ['ping']})
    assert todo.actions == ['update config'] and todo.changed and not todo.needs_restart
    assert todo.observed is None and todo.live == {}


def test_nothing_to_do_when_config_and_guest_agree():
    section = _caps.validate({'ccaps': ['raw_icmp']})
    todo = plan(section, section, running(section, {_caps.PING_GROUP_RANGE: _caps.PING_ALL}))
    assert todo.actions == [] and not todo.changed and not todo.needs_restart
    assert todo.observed['no_new_privs'] is False and todo.observed['bcaps'] == _caps.DEFAULT_BCAPS


def test_ccaps_apply_live_and_remember_what_to_put_back():
    todo = plan({}, {'ccaps': ['raw_icmp']}, running({}, {_caps.PING_GROUP_RANGE: _caps.PING_NONE}))
    assert todo.live == {_caps.PING_GROUP_RANGE: _caps.PING_ALL}
    assert todo.previous == {_caps.PING_GROUP_RANGE: _caps.PING_NONE}
    assert todo.actions == ['update config', 'set net.ipv4.ping_group_range=0 2147483647 in the guest network namespace']
    assert not todo.needs_restart


def test_a_guest_without_a_netns_handle_gets_no_live_change():
    todo = plan({}, {'ccaps': ['raw_icmp']}, running({}, None))
    assert todo.live == {} and todo.actions == ['update config']


@pytest.mark.parametrize('after,kw', [
    ({'bcaps_drop': ['kill']}, {}),                      # the bounding set
    ({'no_new_privs': True}, {}),                        # no_new_privs
    ({'seccomp': {'allow': ['keyctl']}}, {}),            # the filter
    ({}, {'seccomp': 'unconfined'}),                     # started before the filter existed
    ({}, {'bcaps': ['chown']}),                          # a guest started with another set
])
def test_what_only_a_start_sets_reports_restart_required(after, kw):
    seccomp = kw.get('seccomp')
    run = running({}, seccomp=seccomp, bcaps=kw.get('bcaps', _caps.resolve({})))
    todo = plan({}, after, run)
    assert todo.needs_restart and not todo.restart and 'restart the guest' not in todo.actions
    again = plan({}, after, run, restart=True)
    assert again.restart and again.actions[-1] == 'restart the guest' and again.changed


def test_capabilities_the_kernel_lacks_are_not_a_difference():
    run = running({}, bcaps=[n for n in _caps.resolve({}) if _caps.CAP_BITS[n] <= 30])
    run.last_cap = 30
    assert not plan({}, {}, run).needs_restart


def test_the_module_spec_comes_from_the_concern():
    assert _caps.SECTION_KEYS == ('bcaps', 'bcaps_add', 'bcaps_drop', 'ccaps', 'no_new_privs', 'seccomp')
    assert _caps.ARGUMENT_SPEC['seccomp']['options']['mode']['choices'] == ['default', 'log', 'unconfined']
    assert set(_caps.DEFAULTS) == set(_caps.SECTION_KEYS)
    assert _caps.validate(_caps.DEFAULTS) == {}   # a whole section of defaults is the default section
