"""The live planner of the network concern (_netns_plan): which typed operations a section and the kernel's state
make, in which namespace and order; and how execute() carries them (rtnetlink or `ip -batch`, rollback)."""
import ipaddress
import socket

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _netlink as NL, _netns_plan as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._netlink import (
    Addr, DefaultRoute, LinkAdd, LinkDel, LinkSet, Rule)
from test_netns import fake_state

I, A = ipaddress.ip_interface, ipaddress.ip_address
BRIDGE_SECTION = {'mode': 'bridge', 'bridge': 'vstb', 'interface': 'eth0', 'addresses': ['10.0.0.5/24'],
                  'gateway': ['10.0.0.1']}
MACVLAN_SECTION = {'mode': 'macvlan', 'parent': 'eth9', 'interface': 'eth0', 'addresses': ['10.0.0.5/24']}


def plan(section, host, guest, previous=None):
    return P.plan_live(section, 7, 4242, host, guest, previous)


def fresh_guest():
    return fake_state([{'name': 'lo'}])


def synced_states(mtu=1500, guest_addrs=('10.0.0.5/24',), gw='10.0.0.1', host_up=True):
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}, {'name': 'vstb-7', 'kind': 'veth', 'link': 2, 'master': 1,
                                                            'mtu': mtu, 'up': host_up}],
                      [('vstb', '10.0.0.1/24')])
    guest = fake_state([{'name': 'lo'}, {'name': 'eth0', 'kind': 'veth', 'link': 2, 'mtu': mtu}],
                       [('eth0', a) for a in guest_addrs],
                       [{'family': socket.AF_INET, 'gateway': gw, 'oif': 2}] if gw else [])
    return host, guest


def macvlan_states(lower='eth9'):
    host = fake_state([{'name': 'eth9'}] + ([{'name': lower}] if lower != 'eth9' else []))
    guest = fake_state([{'name': 'lo'}, {'name': 'eth0', 'kind': 'macvlan', 'link': host.links[lower]['index']}],
                       [('eth0', '10.0.0.5/24')])
    return host, guest


# --- a new guest interface -----------------------------------------------------------------------------------


def test_fresh_bridged_guest_gets_bridge_veth_address_route():
    p = plan(BRIDGE_SECTION, fake_state([{'name': 'eth0'}]), fresh_guest())
    assert p.host == [LinkAdd('bridge', 'vstb'), LinkSet('vstb', up=True), Addr(True, I('10.0.0.1/24'), 'vstb'),
                      LinkAdd('veth', 'vstb-7', peer='eth0', pid=4242), LinkSet('vstb-7', addrgen_off=True),
                      LinkSet('vstb-7', master='vstb'), LinkSet('vstb-7', up=True)]
    assert p.guest == [LinkSet('eth0', addrgen_off=True), Addr(True, I('10.0.0.5/24'), 'eth0'),
                       LinkSet('eth0', up=True), DefaultRoute(True, A('10.0.0.1'), 'eth0')]
    assert p.created == ['vstb', 'vstb-7'] and p.guest_pre == [] and p.guest6 == []
    assert p.bridge_addrs == []   # the bridge is new: it goes as a whole on rollback
    assert p.actions == ['create bridge vstb', 'add gateway address 10.0.0.1/24 to bridge vstb',
                         'create veth vstb-7 (host, on vstb) <-> eth0 (guest)', 'add address 10.0.0.5/24',
                         'set default route via 10.0.0.1']


def test_operations_render_once_to_the_ip_lines():
    p = plan(BRIDGE_SECTION, fake_state([{'name': 'eth0'}]), fresh_guest())
    assert NL.render(p.host) == ['link add vstb type bridge', 'link set vstb up', 'addr add 10.0.0.1/24 dev vstb',
                                 'link add vstb-7 type veth peer name eth0 netns 4242',
                                 'link set vstb-7 addrgenmode none', 'link set vstb-7 master vstb',
                                 'link set vstb-7 up']
    assert NL.render(p.guest) == ['link set eth0 addrgenmode none', 'addr add 10.0.0.5/24 dev eth0',
                                  'link set eth0 up', 'route replace 0.0.0.0/0 via 10.0.0.1 dev eth0']


def test_fresh_veth_carries_the_mtu_on_both_ends():
    p = plan(dict(BRIDGE_SECTION, mtu=1400), fake_state([{'name': 'vstb', 'kind': 'bridge'}]), fresh_guest())
    assert LinkAdd('veth', 'vstb-7', peer='eth0', pid=4242, mtu=1400) in p.host
    assert NL.render([p.host[1]]) == ['link add vstb-7 mtu 1400 type veth peer name eth0 mtu 1400 netns 4242']


def test_fresh_macvlan_on_a_new_vlan_keeps_dad_and_adds_no_route_of_its_own():
    section = dict(MACVLAN_SECTION, vlan=20, mtu=1400, addresses=['10.0.0.5/24', 'fd00:8::5/64'])
    p = plan(section, fake_state([{'name': 'eth9'}]), fresh_guest())
    assert p.host == [LinkAdd('vlan', 'eth9.20', lower='eth9', vid=20), LinkSet('eth9', up=True),
                      LinkSet('eth9.20', up=True), LinkAdd('macvlan', 'eth0', lower='eth9.20', pid=4242, mtu=1400)]
    assert NL.render(p.host)[-1] == 'link add link eth9.20 name eth0 mtu 1400 netns 4242 type macvlan mode bridge'
    assert p.created == ['eth9.20']   # the macvlan itself lives in the guest: it goes with the namespace
    assert Addr(True, I('fd00:8::5/64'), 'eth0', nodad=False) in p.guest       # on a LAN: duplicate detection runs
    assert not [op for op in p.guest if isinstance(op, DefaultRoute)]
    assert 'create VLAN 20 sub-interface eth9.20 on eth9' in p.actions


def test_macvlan_on_an_existing_vlan_or_in_sync():
    host, guest = macvlan_states('eth9.20')
    assert plan(dict(MACVLAN_SECTION, vlan=20), host, guest).actions == []
    host, guest = macvlan_states()
    p = plan(MACVLAN_SECTION, host, guest)
    assert (p.host, p.guest, p.guest_pre, p.actions) == ([], [], [], [])
    # the same macvlan, now wanted on a VLAN: made anew on the sub-interface
    p = plan(dict(MACVLAN_SECTION, vlan=20), host, guest)
    assert p.guest_pre == [LinkDel('eth0')] and p.host[-1] == LinkAdd('macvlan', 'eth0', lower='eth9.20', pid=4242)


def test_vlan_uplink_of_a_bridge():
    section = dict(BRIDGE_SECTION, parent='eth9', vlan=5)
    p = plan(section, fake_state([{'name': 'eth9'}]), fresh_guest())
    # a VLAN link cannot come up while its parent is down: the parent comes up first
    assert p.host[3:7] == [LinkAdd('vlan', 'eth9.5', lower='eth9', vid=5), LinkSet('eth9.5', master='vstb'),
                           LinkSet('eth9', up=True), LinkSet('eth9.5', up=True)]
    assert p.created == ['vstb', 'eth9.5', 'vstb-7']
    host, guest = synced_states()
    host.links['eth9.5'] = {'index': 20, 'name': 'eth9.5', 'up': True, 'mtu': 1500, 'link': None, 'master': None,
                            'kind': 'vlan'}
    p = plan(section, host, guest)
    assert p.host == [LinkSet('eth9.5', master='vstb')] and p.actions == ['attach eth9.5 to bridge vstb']
    host.links['eth9.5']['master'] = 1
    assert plan(section, host, guest).actions == []


def test_a_bridge_that_is_down_comes_up_and_a_foreign_one_is_refused():
    host, guest = synced_states(host_up=False)
    host.links['vstb']['up'] = False
    p = plan(BRIDGE_SECTION, host, guest)
    assert p.host == [LinkSet('vstb', up=True), LinkSet('vstb-7', up=True)]
    assert p.actions == ['set bridge vstb up']   # the host end follows silently
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}, {'name': 'vstb-7', 'kind': 'veth', 'link': 99}])
    with pytest.raises(VServerError) as err:
        plan(BRIDGE_SECTION, host, fresh_guest())
    assert err.value.field == 'bridge' and 'vstb-7' in str(err.value)
    with pytest.raises(VServerError):
        plan(BRIDGE_SECTION, fake_state([{'name': 'vstb', 'kind': 'veth'}]), fake_state())


def test_gateway_addresses_on_an_existing_bridge_are_rolled_back_alone():
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}, {'name': 'eth1'}], [('eth1', 'fd00:8::1/64')])
    section = dict(BRIDGE_SECTION, addresses=['10.0.0.5/24', 'fd00:8::5/64'], gateway=['10.0.0.1', 'fd00:8::1'])
    p = plan(section, host, fresh_guest())
    # fd00:8::1 is held by the host elsewhere: the host routes for the guest already, the bridge gets no copy
    assert p.bridge_addrs == [Addr(True, I('10.0.0.1/24'), 'vstb')]
    assert p.rollback_ops() == [LinkDel('vstb-7'), Addr(False, I('10.0.0.1/24'), 'vstb')]
    assert Addr(True, I('fd00:8::5/64'), 'eth0', nodad=True) in p.guest   # on the host's bridge: usable at once


def test_a_veth_on_another_bridge_is_replaced_and_its_stale_host_end_allowed():
    host, guest = synced_states()
    host.links['vstb-7']['master'] = None     # the host end left the bridge
    p = plan(BRIDGE_SECTION, host, guest)
    assert p.guest_pre == [LinkDel('eth0')] and 'replace interface eth0 in the guest' in p.actions
    assert LinkAdd('veth', 'vstb-7', peer='eth0', pid=4242) in p.host   # the old pair goes with its guest end


# --- an interface in place: only what differs ----------------------------------------------------------------


def test_plan_is_empty_when_in_sync():
    host, guest = synced_states()
    p = plan(BRIDGE_SECTION, host, guest)
    assert (p.host, p.guest, p.guest6, p.ipv6, p.actions) == ([], [], [], None, [])


def test_plan_changes_only_what_differs():
    host, guest = synced_states(guest_addrs=('10.0.0.5/24', '10.0.0.6/24'), gw='10.0.0.9')
    p = plan(dict(BRIDGE_SECTION, mtu=1400, addresses=['10.0.0.5/24', 'fd00:8::5/64'],
                  gateway=['10.0.0.1', 'fd00:8::1']), host, guest)
    assert p.guest == [LinkSet('eth0', mtu=1400), Addr(False, I('10.0.0.6/24'), 'eth0'),
                       Addr(True, I('fd00:8::5/64'), 'eth0', nodad=True), DefaultRoute(True, A('10.0.0.1'), 'eth0'),
                       DefaultRoute(True, A('fd00:8::1'), 'eth0')]
    assert p.host == [Addr(True, I('fd00:8::1/64'), 'vstb', nodad=True), LinkSet('vstb-7', mtu=1400)]
    assert p.ipv6 == ('eth0', False) and 'turn IPv6 on on eth0' in p.actions
    assert p.actions[:4] == ['add gateway address fd00:8::1/64 to bridge vstb', 'set mtu 1400', 'turn IPv6 on on eth0',
                             'remove address 10.0.0.6/24']


def test_a_new_prefix_is_a_removal_and_an_addition():
    host, guest = synced_states()
    p = plan(dict(BRIDGE_SECTION, addresses=['10.0.0.5/16'], gateway=['10.0.0.1']), host, guest)
    assert p.guest == [Addr(False, I('10.0.0.5/24'), 'eth0'), Addr(True, I('10.0.0.5/16'), 'eth0')]


def test_default_route_removed_when_no_gateway_is_wanted():
    host, guest = synced_states()
    p = plan(dict(BRIDGE_SECTION, gateway=[]), host, guest)
    assert p.guest == [DefaultRoute(False, A('10.0.0.1'), 'eth0')]
    assert p.actions == ['remove default route via 10.0.0.1']
    assert NL.render(p.guest) == ['route del 0.0.0.0/0 via 10.0.0.1 dev eth0']


def test_removal_deletes_the_interface_and_the_source_rules():
    host, guest = synced_states(guest_addrs=('10.0.0.5/24', 'fd00:8::5/64'))
    guest.rules6 = [{'priority': 101, 'src_len': 128, 'src': A('fd00:8::5'), 'action': 1, 'table': 254},
                    {'priority': 100, 'src_len': 128, 'src': A('fd00:8::5'), 'action': 1, 'table': 255,
                     'find_saddr': True}]
    p = plan(None, host, guest)
    assert p.guest == [LinkDel('eth0')] and p.host == [] and p.created == []
    assert p.guest6 == [Rule(False, 100, 'local', src=A('fd00:8::5'), find_saddr=True),
                        Rule(False, 101, 'main', src=A('fd00:8::5'))]
    assert p.actions == ['remove interface eth0 from the guest', 'set IPv6 source address rules (none)']
    assert plan(None, host, fresh_guest()).actions == []


# --- what the guest had before (previous section) -----------------------------------------------------------


def test_plan_renames_the_interface_without_leaving_the_old_one():
    host, guest = synced_states()
    p = plan(dict(BRIDGE_SECTION, interface='net0'), host, guest, BRIDGE_SECTION)
    assert p.guest_pre == [LinkDel('eth0')] and p.actions[0] == 'remove interface eth0 from the guest'
    assert LinkAdd('veth', 'vstb-7', peer='net0', pid=4242) in p.host   # its host end was the old pair's: allowed
    # an old name the guest no longer has: nothing to remove
    p = plan(dict(BRIDGE_SECTION, interface='net0'), fake_state([{'name': 'vstb', 'kind': 'bridge'}]), fresh_guest(),
             dict(BRIDGE_SECTION, interface='old0'))
    assert p.guest_pre == [] and not [a for a in p.actions if 'remove interface' in a]


def test_plan_replaces_an_interface_of_another_mode_first():
    host, guest = synced_states()
    host.links['eth9'] = {'index': 9, 'name': 'eth9', 'up': True, 'mtu': 1500, 'link': None, 'master': None,
                          'kind': None}
    p = plan(MACVLAN_SECTION, host, guest, BRIDGE_SECTION)
    assert p.guest_pre == [LinkDel('eth0')]
    assert p.host == [LinkAdd('macvlan', 'eth0', lower='eth9', pid=4242)]
    assert p.guest == [LinkSet('eth0', addrgen_off=True), Addr(True, I('10.0.0.5/24'), 'eth0'),
                       LinkSet('eth0', up=True)]


# --- IPv6 on the link, and the source address rules ----------------------------------------------------------


def test_ipv6_duplicate_address_detection_stays_on_for_lan_guests():
    host = fake_state([{'name': 'eth9'}])
    p = plan(dict(MACVLAN_SECTION, addresses=['fd00:8::5/64']), host, fresh_guest())
    assert Addr(True, I('fd00:8::5/64'), 'eth0') in p.guest
    bridged = plan(dict(BRIDGE_SECTION, addresses=['fd00:8::5/64'], gateway=[]), host, fresh_guest())
    assert Addr(True, I('fd00:8::5/64'), 'eth0', nodad=True) in bridged.guest


def test_a_new_interface_gets_ipv6_only_with_an_ipv6_address():
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}])
    p = plan(dict(BRIDGE_SECTION), host, fresh_guest())
    assert p.ipv6 == P.Ipv6Switch('eth0', True) and not [a for a in p.actions if 'IPv6' in a]  # set, not reported
    p = plan(dict(BRIDGE_SECTION, addresses=['fd00:8::5/64'], gateway=[]), host, fresh_guest())
    assert p.ipv6 == ('eth0', False)


def test_ipv6_source_rules_follow_the_guest_addresses():
    host, guest = synced_states()
    section = dict(BRIDGE_SECTION, addresses=['10.0.0.5/24', 'fd00:8::5/64', 'fd00:9::5/64'], gateway=[])
    kernel_rule = {'priority': 0, 'src_len': 0, 'src': None, 'action': 1, 'table': 255}
    guest.rules6 = [dict(kernel_rule, invert=False, iif=None, dst_len=0, family=socket.AF_INET6)]
    p = plan(section, host, guest)
    # the kernel's catch-all local rule is replaced (inbound, outbound but multicast) before it goes
    assert p.guest6 == [Rule(True, 1, 'local', not_iif='lo'), Rule(True, 2, 'local', not_to='ff00::/8'),
                        Rule(False, 0, 'local'),
                        Rule(True, 100, 'local', src=A('fd00:8::5'), find_saddr=True),
                        Rule(True, 100, 'local', src=A('fd00:9::5'), find_saddr=True),
                        Rule(True, 101, 'main', src=A('fd00:8::5')), Rule(True, 101, 'main', src=A('fd00:9::5')),
                        Rule(True, 200)]
    assert NL.render(p.guest6) == [
        'rule add not iif lo lookup local pref 1', 'rule add not to ff00::/8 lookup local pref 2',
        'rule del lookup local pref 0', 'rule add from fd00:8::5/128 lookup local pref 100',
        'rule add from fd00:9::5/128 lookup local pref 100', 'rule add from fd00:8::5/128 lookup main pref 101',
        'rule add from fd00:9::5/128 lookup main pref 101', 'rule add unreachable pref 200']
    assert p.ipv6 == ('eth0', False)
    assert p.actions[-1] == 'set IPv6 source address rules (fd00:8::5, fd00:9::5)'
    ruled = fake_state(guest.links.values(), [('eth0', '10.0.0.5/24'), ('eth0', 'fd00:8::5/64')], rules=[
        {'priority': 1, 'src_len': 0, 'src': None, 'action': 1, 'table': 255, 'invert': True, 'iif': 'lo'},
        {'priority': 2, 'src_len': 0, 'src': None, 'action': 1, 'table': 255, 'invert': True, 'dst_len': 8},
        {'priority': 100, 'src_len': 128, 'src': A('fd00:8::5'), 'action': 1, 'table': 255, 'find_saddr': True},
        {'priority': 101, 'src_len': 128, 'src': A('fd00:8::5'), 'action': 1},
        {'priority': 101, 'src_len': 128, 'src': A('fd00:7::5'), 'action': 1},
        {'priority': 200, 'src_len': 0, 'src': None, 'action': 7}])
    ruled.links = guest.links
    ruled.by_index = guest.by_index
    p = plan(dict(section, addresses=['10.0.0.5/24', 'fd00:8::5/64']), host, ruled)
    assert p.guest6 == [Rule(False, 101, 'main', src=A('fd00:7::5'))]
    assert p.ipv6 is None    # already on
    v4only = plan(dict(BRIDGE_SECTION), host, guest)
    assert v4only.guest6 == [] and v4only.ipv6 is None   # IPv4 only: no rules, IPv6 stays off
    # losing the last IPv6 address turns IPv6 off on the link (after the address operations)
    p = plan(dict(BRIDGE_SECTION), host, ruled)
    assert p.ipv6 == ('eth0', True) and 'turn IPv6 off on eth0' in p.actions
    assert Addr(False, I('fd00:8::5/64'), 'eth0') in p.guest
    # a local-table rule without FIB_RULE_FIND_SADDR (made by hand with `ip rule`) is not ours: added again
    ruled.rules6[2] = dict(ruled.rules6[2], find_saddr=False)
    p = plan(dict(section, addresses=['10.0.0.5/24', 'fd00:8::5/64']), host, ruled)
    assert Rule(True, 100, 'local', src=A('fd00:8::5'), find_saddr=True) in p.guest6


# --- execute: the order of the namespaces, rtnetlink or `ip -batch`, rollback -----------------------------------


@pytest.fixture
def kernel(monkeypatch):
    """Record what execute() asks of the mechanism instead of doing it."""
    calls = []
    monkeypatch.setattr(NL, 'run_batch', lambda ops, handle=None, family6=False: ops and calls.append(
        ('batch6' if family6 else 'batch', handle, NL.render(ops))))
    monkeypatch.setattr(NL, 'send', lambda ops, handle: calls.append(('netlink', handle, NL.render(ops))) or True)
    monkeypatch.setattr(NL, 'set_ipv6_off', lambda handle, dev, off: calls.append(('ipv6 off' if off else 'ipv6 on',
                                                                                  handle, dev)))
    monkeypatch.setattr(NL, 'send_rule', lambda rule, handle: calls.append(('rule', handle, NL.render([rule]))))
    monkeypatch.setattr(NL, 'undo', lambda ops, quiet=False: calls.append(('undo', quiet, NL.render(ops))))
    return calls


def test_execute_runs_host_side_first_and_the_guest_by_batch_after_host_changes(kernel):
    p = plan(dict(BRIDGE_SECTION, addresses=['fd00:8::5/64'], gateway=[]), fake_state(), fresh_guest(), None)
    P.execute(p, '/run/h')
    # IPv6 on before the addresses; plain rules by `ip -6 -batch`, the per-address local ones over rtnetlink
    assert [c[0] for c in kernel] == ['batch', 'ipv6 on', 'batch', 'batch6', 'rule', 'batch6']
    assert kernel[0][1] is None and kernel[2][1] == '/run/h'   # the host side in the host namespace


def test_execute_sends_a_guest_only_change_over_rtnetlink_and_turns_ipv6_off_last(kernel):
    host, guest = synced_states(guest_addrs=('10.0.0.5/24', 'fd00:8::5/64'))
    guest.ipv6_off = {'eth0': False}
    P.execute(plan(BRIDGE_SECTION, host, guest), '/run/h')
    assert kernel == [('netlink', '/run/h', ['addr del fd00:8::5/64 dev eth0']), ('ipv6 off', '/run/h', 'eth0')]


def test_execute_rolls_back_what_it_created_when_a_step_fails(kernel, monkeypatch):
    def refuse(ops, handle=None, family6=False):
        if handle:
            raise VServerError('network change failed: no')
    monkeypatch.setattr(NL, 'run_batch', refuse)
    p = plan(BRIDGE_SECTION, fake_state(), fresh_guest())
    with pytest.raises(VServerError):
        P.execute(p, '/run/h')
    assert kernel == [('undo', True, ['link del vstb-7', 'link del vstb'])]


def test_undo_outcome_sentences():
    assert P.undo_outcome(None, None) == 'nothing was changed on the guest'
    done = P.Plan(actions=['add address 10.0.0.5/24'])
    assert 'was undone' in P.undo_outcome(done, None) and 'failed (boom)' in P.undo_outcome(done, 'boom')
