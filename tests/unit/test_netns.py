"""Pure logic of _netns: validation, the config section, gateway defaults, live plans, rtnetlink parsing."""
import ipaddress
import os
import socket
import struct

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _netns as N
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


def fake_state(links=(), addrs=(), routes=(), rules=(), ipv6_off=None):
    """A NetState built from tables instead of the kernel."""
    st = object.__new__(N.NetState)
    st.links = {}
    for i, link in enumerate(links, start=1):
        entry = {'index': i, 'up': True, 'mtu': 1500, 'link': None, 'master': None, 'kind': None}
        entry.update(link)
        st.links[entry['name']] = entry
    st.by_index = {link['index']: link for link in st.links.values()}
    st.addrs = [{'index': st.links[dev]['index'], 'iface': ipaddress.ip_interface(a), 'scope': 0} for dev, a in addrs]
    st.routes = [dict(r, table=254, dst_len=0, dst=None) for r in routes]
    st.rules6 = [dict({'table': 254, 'invert': False, 'iif': None, 'dst_len': 0}, family=socket.AF_INET6, **r)
                 for r in rules]
    # IPv6 is on only where the link has an IPv6 address, unless told otherwise
    st.ipv6_off = ipv6_off if ipv6_off is not None else {
        name: not any(a['iface'].version == 6 for a in st.addrs if a['index'] == link['index'])
        for name, link in st.links.items() if name != 'lo'}
    return st


@pytest.mark.parametrize('value', ['10.8.0.2/24', '198.18.0.1/31', '198.18.0.9/32', 'fd00:5653::2/64',
                                   '2001:db8::1/128', ' 10.8.0.2/24 '])
def test_addresses_accepted(value):
    assert N.parse_address(value).ip == ipaddress.ip_interface(value.strip()).ip


@pytest.mark.parametrize('value,word', [
    ('10.8.0.2', 'CIDR'), ('10.8.0.300/24', 'CIDR'), ('nonsense', 'CIDR'), ('10.8.0.2/33', 'CIDR'), (None, 'CIDR'),
    ('10.8.0.0/24', 'network address'), ('10.8.0.255/24', 'broadcast address'), ('fd00:5653::/64', 'network'),
    ('127.0.0.2/8', 'unicast'), ('0.0.0.0/0', 'unicast'), ('224.0.0.5/24', 'unicast'), ('fe80::1/64', 'unicast'),
    ('::1/128', 'unicast'), ('240.0.0.1/24', 'unicast'),
])
def test_addresses_refused_with_field_and_form(value, word):
    with pytest.raises(VServerError) as err:
        N.parse_address(value, 'addresses')
    assert err.value.field == 'addresses' and word in str(err.value)


@pytest.mark.parametrize('params,field', [
    (dict(state='gone'), 'state'), (dict(mode='ipvlan'), 'mode'), (dict(vlan=0), 'vlan'), (dict(vlan=4095), 'vlan'),
    (dict(mtu=67), 'mtu'), (dict(mtu=70000), 'mtu'), (dict(bridge='a' * 16), 'bridge'), (dict(parent='a/b'), 'parent'),
    (dict(interface='lo'), 'interface'), (dict(gateway=['10.0.0.1', '10.0.0.2']), 'gateway'),
    (dict(gateway=['10.0.0.1/24']), 'gateway'), (dict(addresses=['10.0.0.2/24', '10.0.0.2/16']), 'addresses'),
    (dict(name='../x'), 'name'),
])
def test_validate_refuses(params, field):
    full = dict(name='g', address='10.0.0.5/24')
    full.update(params)
    with pytest.raises(VServerError) as err:
        N.validate(full)
    assert err.value.field == field


def test_validate_normalizes():
    opts = N.validate(dict(name='g', address='10.0.0.5/24', addresses=['fd00:8::5/64', '10.0.0.5/24'],
                           gateway='10.0.0.1,fd00:8::1', vlan='7', mtu=1400))
    assert [str(a) for a in opts['addresses']] == ['10.0.0.5/24', 'fd00:8::5/64']
    assert [str(g) for g in opts['gateway']] == ['10.0.0.1', 'fd00:8::1']
    assert opts['vlan'] == 7 and opts['mtu'] == 1400 and opts['state'] == 'present'


def desired(current, **params):
    return N.desired(current, N.validate(dict(dict(name='g'), **params)))


def test_desired_merges_replaces_and_removes():
    one = desired(None, address='10.0.0.5/24')
    assert one == {'addresses': ['10.0.0.5/24'], 'mode': 'bridge', 'interface': 'eth0', 'bridge': 'vsbr0'}
    two = desired(one, address='fd00:8::5/64', mtu=1400)
    assert two['addresses'] == ['10.0.0.5/24', 'fd00:8::5/64'] and two['mtu'] == 1400
    replaced = desired(two, address='10.0.0.5/16')
    assert replaced['addresses'] == ['fd00:8::5/64', '10.0.0.5/16']
    exclusive = desired(two, address='10.0.0.6/24', exclusive=True)
    assert exclusive['addresses'] == ['10.0.0.6/24'] and exclusive['mtu'] == 1400
    assert desired(two, address='fd00:8::5/64', state='absent')['addresses'] == ['10.0.0.5/24']
    assert desired(one, address='10.0.0.5/24', state='absent') is None
    assert desired(two, state='absent') is None
    assert desired(None, address='10.0.0.5/24', state='absent') is None


def test_desired_mode_rules():
    with pytest.raises(VServerError) as err:
        desired(None, address='10.0.0.5/24', mode='macvlan')
    assert err.value.field == 'parent'
    mac = desired(None, address='10.0.0.5/24', mode='macvlan', parent='eth1', vlan=20)
    assert mac == {'addresses': ['10.0.0.5/24'], 'mode': 'macvlan', 'interface': 'eth0', 'parent': 'eth1', 'vlan': 20}
    back = desired(mac, mode='bridge', address='10.0.0.5/24')
    assert 'parent' not in back and 'vlan' not in back and back['bridge'] == 'vsbr0'
    with pytest.raises(VServerError) as err:
        desired(None, address='10.0.0.5/24', parent='eth0')
    assert err.value.field == 'parent'
    with pytest.raises(VServerError) as err:
        desired(None, address='10.0.0.5/24', vlan=3)
    assert err.value.field == 'vlan'
    with pytest.raises(VServerError) as err:
        desired(None, address='10.0.0.5/24', mode='macvlan', parent='eth1', bridge='br0')
    assert err.value.field == 'bridge'
    with pytest.raises(VServerError) as err:
        desired(None, address='fd00:8::5/64', mtu=1000)
    assert err.value.field == 'mtu'


def resolve(section, explicit=False, host=None):
    return N.resolve_gateways(dict(section), explicit, host or fake_state())


def test_gateway_defaults_and_refusals():
    base = {'mode': 'bridge', 'bridge': 'vsbr0', 'addresses': ['10.0.0.5/24', 'fd00:8::5/64']}
    # no bridge yet: the first host address of each subnet
    assert resolve(base)['gateway'] == ['10.0.0.1', 'fd00:8::1']
    # an existing bridge address in the subnet wins
    host = fake_state([{'name': 'vsbr0', 'kind': 'bridge'}], [('vsbr0', '10.0.0.254/24')])
    assert resolve(base, host=host)['gateway'] == ['10.0.0.254', 'fd00:8::1']
    # explicit ones must be inside a guest subnet and not the guest's own address
    assert resolve(dict(base, gateway=['10.0.0.9']), True)['gateway'] == ['10.0.0.9', 'fd00:8::1']
    for bad in (['10.1.0.1'], ['10.0.0.5'], ['2001:db8::1']):
        with pytest.raises(VServerError) as err:
            resolve(dict(base, gateway=bad), True)
        assert err.value.field == 'gateway'
    with pytest.raises(VServerError):
        resolve({'mode': 'bridge', 'bridge': 'b', 'addresses': ['10.0.0.5/24'], 'gateway': ['fd00::1']}, True)
    # an explicit empty list: no default route; a stored gateway outside the new subnet is re-chosen
    assert resolve(dict(base, gateway=[]), True)['gateway'] == []
    assert resolve(dict(base, gateway=[]))['gateway'] == []      # kept until a gateway is given
    assert desired({'addresses': ['10.0.0.5/24'], 'gateway': []}, address='10.0.0.6/24')['gateway'] == []
    assert resolve(dict(base, gateway=['10.9.0.1']))['gateway'] == ['10.0.0.1', 'fd00:8::1']
    # macvlan: no default unless given; a guest holding .1 gets no automatic gateway
    assert 'gateway' not in resolve({'mode': 'macvlan', 'parent': 'eth0', 'addresses': ['10.0.0.5/24']})
    assert 'gateway' not in resolve({'mode': 'bridge', 'bridge': 'b', 'addresses': ['10.0.0.1/24']})


def test_interface_names_fit_ifnamsiz():
    assert N.host_ifname('vsbr0', 101) == 'vsbr0-101'
    assert N.host_ifname('abcdefghijklmno', 49151) == 'abcdefghi-49151'
    assert len(N.host_ifname('abcdefghijklmno', 2)) == 15
    assert N.vlan_ifname('eth1', 20) == 'eth1.20'
    assert N.vlan_ifname('enp0s31f6abcdef', 4094) == 'enp0s31f6a.4094'


BRIDGE_SECTION = {'mode': 'bridge', 'bridge': 'vstb', 'interface': 'eth0', 'addresses': ['10.0.0.5/24'],
                  'gateway': ['10.0.0.1']}


def test_plan_for_a_fresh_guest_creates_bridge_veth_address_route():
    plan = N.plan_live(BRIDGE_SECTION, 7, 4242, fake_state([{'name': 'eth0'}]), fake_state([{'name': 'lo'}]))
    assert plan.host == ['link add vstb type bridge', 'link set vstb up', 'addr add 10.0.0.1/24 dev vstb',
                         'link add vstb-7 type veth peer name eth0 netns 4242', 'link set vstb-7 addrgenmode none',
                         'link set vstb-7 master vstb', 'link set vstb-7 up']
    assert plan.guest == ['link set eth0 addrgenmode none', 'addr add 10.0.0.5/24 dev eth0', 'link set eth0 up',
                          'route replace 0.0.0.0/0 via 10.0.0.1 dev eth0']
    assert plan.created == ['vstb', 'vstb-7'] and plan.guest_pre == []


def synced_states(mtu=1500, guest_addrs=('10.0.0.5/24',), gw='10.0.0.1'):
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}, {'name': 'vstb-7', 'kind': 'veth', 'link': 2, 'master': 1,
                                                            'mtu': mtu}],
                      [('vstb', '10.0.0.1/24')])
    guest = fake_state([{'name': 'lo'}, {'name': 'eth0', 'kind': 'veth', 'link': 2, 'mtu': mtu}],
                       [('eth0', a) for a in guest_addrs],
                       [{'family': socket.AF_INET, 'gateway': gw, 'oif': 2}] if gw else [])
    return host, guest


def test_plan_is_empty_when_in_sync():
    host, guest = synced_states()
    plan = N.plan_live(BRIDGE_SECTION, 7, 4242, host, guest)
    assert (plan.host, plan.guest, plan.actions) == ([], [], [])


def test_plan_changes_only_what_differs():
    host, guest = synced_states(guest_addrs=('10.0.0.5/24', '10.0.0.6/24'), gw='10.0.0.9')
    plan = N.plan_live(dict(BRIDGE_SECTION, mtu=1400, addresses=['10.0.0.5/24', 'fd00:8::5/64'],
                            gateway=['10.0.0.1', 'fd00:8::1']), 7, 4242, host, guest)
    assert plan.guest == ['link set eth0 mtu 1400', 'addr del 10.0.0.6/24 dev eth0',
                          'addr add fd00:8::5/64 dev eth0 nodad', 'route replace 0.0.0.0/0 via 10.0.0.1 dev eth0',
                          'route replace ::/0 via fd00:8::1 dev eth0']
    assert plan.host == ['addr add fd00:8::1/64 dev vstb nodad', 'link set vstb-7 mtu 1400']
    assert plan.ipv6 == ('eth0', False) and 'turn IPv6 on on eth0' in plan.actions
    removal = N.plan_live(None, 7, 4242, host, guest)
    assert removal.guest == ['link del eth0'] and removal.host == []


def test_plan_replaces_an_interface_of_another_mode_first():
    host, guest = synced_states()
    host.links['eth9'] = {'index': 9, 'name': 'eth9', 'up': True, 'mtu': 1500, 'link': None, 'master': None,
                          'kind': None}
    section = {'mode': 'macvlan', 'parent': 'eth9', 'interface': 'eth0', 'addresses': ['10.0.0.5/24']}
    plan = N.plan_live(section, 7, 4242, host, guest)
    assert plan.guest_pre == ['link del eth0']
    assert plan.host == ['link add link eth9 name eth0 netns 4242 type macvlan mode bridge']
    assert plan.guest == ['link set eth0 addrgenmode none', 'addr add 10.0.0.5/24 dev eth0', 'link set eth0 up']


def test_plan_refuses_a_foreign_host_interface_and_non_bridge():
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}, {'name': 'vstb-7', 'kind': 'veth', 'link': 99}])
    with pytest.raises(VServerError) as err:
        N.plan_live(BRIDGE_SECTION, 7, 4242, host, fake_state([{'name': 'lo'}]))
    assert err.value.field == 'bridge' and 'vstb-7' in str(err.value)
    with pytest.raises(VServerError):
        N.plan_live(BRIDGE_SECTION, 7, 4242, fake_state([{'name': 'vstb', 'kind': 'veth'}]), fake_state())


def nlmsg(kind, body):
    return struct.pack('=IHHII', 16 + len(body), kind, 2, 1, 0) + body + b'\0' * (-len(body) % 4)


def rta(kind, data):
    return struct.pack('=HH', 4 + len(data), kind) + data + b'\0' * (-len(data) % 4)


def test_netlink_parsers():
    link = struct.pack('=BxHiII', 0, 1, 5, 1, 0) + rta(3, b'eth0\0') + rta(4, struct.pack('=I', 1400)) + \
        rta(5, struct.pack('=I', 9)) + rta(18 | 0x8000, rta(1, b'veth\0'))
    addr = struct.pack('=BBBBI', socket.AF_INET6, 64, 0, 0, 5) + rta(1, socket.inet_pton(socket.AF_INET6, 'fd00:8::5'))
    route = struct.pack('=BBBBBBBBI', socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0) + \
        rta(4, struct.pack('=I', 5)) + rta(5, socket.inet_aton('10.0.0.1'))
    msgs = N.parse_messages(nlmsg(16, link) + nlmsg(20, addr) + nlmsg(24, route) + nlmsg(3, b'\0' * 4))
    assert [m[0] for m in msgs] == [16, 20, 24, 3]
    assert N.parse_link(msgs[0][1]) == {'index': 5, 'name': 'eth0', 'up': True, 'mtu': 1400, 'link': 9,
                                        'master': None, 'kind': 'veth'}
    parsed = N.parse_addr(msgs[1][1])
    assert parsed['index'] == 5 and str(parsed['iface']) == 'fd00:8::5/64'
    assert N.parse_route(msgs[2][1]) == {'family': socket.AF_INET, 'dst_len': 0, 'table': 254, 'oif': 5,
                                         'gateway': '10.0.0.1', 'dst': None}


def test_vlan_support_detection(tmp_path):
    proc, sys_, mods = tmp_path / 'proc', tmp_path / 'sys', tmp_path / 'lib'
    release = os.uname().release
    (mods / release).mkdir(parents=True)
    assert N.vlan_supported(str(proc), str(sys_), str(mods)) is False
    (mods / release / 'modules.dep').write_text('kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko\n')
    assert N.vlan_supported(str(proc), str(sys_), str(mods)) is True
    (mods / release / 'modules.dep').write_text('kernel/drivers/net/veth.ko:\n')
    (proc / 'net' / 'vlan').mkdir(parents=True)
    assert N.vlan_supported(str(proc), str(sys_), str(mods)) is True


def test_forwarding_needed_is_reported_not_changed(tmp_path):
    (tmp_path / 'sys/net/ipv4').mkdir(parents=True)
    (tmp_path / 'sys/net/ipv6/conf/all').mkdir(parents=True)
    (tmp_path / 'sys/net/ipv4/ip_forward').write_text('0\n')
    (tmp_path / 'sys/net/ipv6/conf/all/forwarding').write_text('1\n')
    section = {'mode': 'bridge', 'bridge': 'vstb', 'addresses': ['10.0.0.5/24', 'fd00:8::5/64'],
               'gateway': ['10.0.0.1', 'fd00:8::1']}
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}], [('vstb', '10.0.0.1/24'), ('vstb', 'fd00:8::1/64')])
    assert N.forwarding(section, host, str(tmp_path)) == {'ipv4': True, 'ipv6': False}
    # a gateway that is another router on the bridge: the host does not route for the guest
    other = fake_state([{'name': 'vstb', 'kind': 'bridge'}], [('vstb', '10.0.0.254/24')])
    assert N.forwarding(dict(section, addresses=['10.0.0.5/24'], gateway=['10.0.0.1']), other,
                        str(tmp_path)) == {}
    assert N.forwarding({'mode': 'macvlan', 'addresses': ['10.0.0.5/24']}, host, str(tmp_path)) == {}


def test_display_helpers():
    assert N.addresses({'name': 'g'}) == []
    assert N.addresses({'name': 'g', 'network': {'addresses': ['10.0.0.5/24']}}) == ['10.0.0.5/24']


def test_simple_live_changes_become_rtnetlink_requests():
    msg, flags, body, dev = N.netlink_request('addr add fd00:8::5/64 dev eth0 nodad')
    assert (msg, dev) == (N.RTM_NEWADDR, 'eth0') and flags & N.NLM_F_EXCL
    parsed = N.parse_addr(body(7))
    assert parsed['index'] == 7 and str(parsed['iface']) == 'fd00:8::5/64'
    assert N.parse_attrs(body(7), 8)[N.IFA_FLAGS] == struct.pack('=I', N.IFA_F_NODAD)
    msg, flags, body, dev = N.netlink_request('addr del 10.0.0.5/24 dev eth0')
    assert msg == N.RTM_DELADDR and str(N.parse_addr(body(3))['iface']) == '10.0.0.5/24'
    msg, flags, body, dev = N.netlink_request('route replace ::/0 via fd00:8::1 dev eth0')
    assert msg == N.RTM_NEWROUTE and flags & N.NLM_F_REPLACE
    assert N.parse_route(body(4)) == {'family': socket.AF_INET6, 'dst_len': 0, 'table': 254, 'oif': 4,
                                      'gateway': 'fd00:8::1', 'dst': None}
    msg, _flags, body, dev = N.netlink_request('link set eth0 up')
    assert msg == N.RTM_NEWLINK and N.parse_link(body(2))['up'] is True
    for line in ('link set eth0 addrgenmode none', 'link del eth0', 'route replace 10.0.0.0/8 via 10.0.0.1 dev eth0',
                 'link add x type veth peer name eth0 netns 1'):
        assert N.netlink_request(line) is None       # everything else goes through `ip -batch`


def test_plan_renames_the_interface_without_leaving_the_old_one():
    host, guest = synced_states()
    plan = N.plan_live(dict(BRIDGE_SECTION, interface='net0'), 7, 4242, host, guest, BRIDGE_SECTION)
    assert plan.guest_pre == ['link del eth0']
    assert 'link add vstb-7 type veth peer name net0 netns 4242' in plan.host


def test_ipv6_duplicate_address_detection_stays_on_for_lan_guests():
    host = fake_state([{'name': 'eth9'}])
    section = {'mode': 'macvlan', 'parent': 'eth9', 'interface': 'eth0', 'addresses': ['fd00:8::5/64']}
    plan = N.plan_live(section, 7, 4242, host, fake_state([{'name': 'lo'}]))
    assert 'addr add fd00:8::5/64 dev eth0' in plan.guest
    bridged = N.plan_live(dict(BRIDGE_SECTION, addresses=['fd00:8::5/64'], gateway=[]), 7, 4242, host,
                          fake_state([{'name': 'lo'}]))
    assert 'addr add fd00:8::5/64 dev eth0 nodad' in bridged.guest


def test_ipv6_source_rules_follow_the_guest_addresses():
    host, guest = synced_states()
    section = dict(BRIDGE_SECTION, addresses=['10.0.0.5/24', 'fd00:8::5/64', 'fd00:9::5/64'], gateway=[])
    plan = N.plan_live(section, 7, 4242, host, guest)
    kernel_rule = {'priority': 0, 'src_len': 0, 'src': None, 'action': 1, 'table': 255}
    guest.rules6 = [dict(kernel_rule, invert=False, iif=None, dst_len=0, family=socket.AF_INET6)]
    plan = N.plan_live(section, 7, 4242, host, guest)
    # the kernel's catch-all local rule is replaced (inbound, outbound but multicast) before it goes
    assert plan.guest6 == ['rule add not iif lo lookup local pref 1', 'rule add not to ff00::/8 lookup local pref 2',
                           'rule del pref 0 lookup local',
                           'rule add from fd00:8::5/128 lookup local pref 100',
                           'rule add from fd00:9::5/128 lookup local pref 100',
                           'rule add from fd00:8::5/128 lookup main pref 101',
                           'rule add from fd00:9::5/128 lookup main pref 101', 'rule add unreachable pref 200']
    assert plan.ipv6 == ('eth0', False)
    ruled = fake_state(guest.links.values(), [('eth0', '10.0.0.5/24'), ('eth0', 'fd00:8::5/64')], rules=[
        {'priority': 1, 'src_len': 0, 'src': None, 'action': 1, 'table': 255, 'invert': True, 'iif': 'lo'},
        {'priority': 2, 'src_len': 0, 'src': None, 'action': 1, 'table': 255, 'invert': True, 'dst_len': 8},
        {'priority': 100, 'src_len': 128, 'src': ipaddress.ip_address('fd00:8::5'), 'action': 1, 'table': 255,
         'find_saddr': True},
        {'priority': 101, 'src_len': 128, 'src': ipaddress.ip_address('fd00:8::5'), 'action': 1},
        {'priority': 101, 'src_len': 128, 'src': ipaddress.ip_address('fd00:7::5'), 'action': 1},
        {'priority': 200, 'src_len': 0, 'src': None, 'action': 7}])
    ruled.links = guest.links
    ruled.by_index = guest.by_index
    plan = N.plan_live(dict(section, addresses=['10.0.0.5/24', 'fd00:8::5/64']), 7, 4242, host, ruled)
    assert plan.guest6 == ['rule del from fd00:7::5/128 lookup main pref 101']
    assert plan.ipv6 is None    # already on
    v4only = N.plan_live(dict(BRIDGE_SECTION), 7, 4242, host, guest)
    assert v4only.guest6 == [] and v4only.ipv6 is None   # IPv4 only: no rules, IPv6 stays off
    # losing the last IPv6 address turns IPv6 off on the link (after the address lines)
    plan = N.plan_live(dict(BRIDGE_SECTION), 7, 4242, host, ruled)
    assert plan.ipv6 == ('eth0', True) and 'turn IPv6 off on eth0' in plan.actions
    assert 'addr del fd00:8::5/64 dev eth0' in plan.guest


def test_a_new_interface_gets_ipv6_only_with_an_ipv6_address():
    host = fake_state([{'name': 'vstb', 'kind': 'bridge'}])
    plan = N.plan_live(dict(BRIDGE_SECTION), 7, 4242, host, fake_state([{'name': 'lo'}]))
    assert plan.ipv6 == ('eth0', True)
    plan = N.plan_live(dict(BRIDGE_SECTION, addresses=['fd00:8::5/64'], gateway=[]), 7, 4242, host,
                       fake_state([{'name': 'lo'}]))
    assert plan.ipv6 == ('eth0', False)


def test_rule_parser():
    body = struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 128, 0, 254, 0, 0, 1, 0) + \
        rta(6, struct.pack('=I', 101)) + rta(2, socket.inet_pton(socket.AF_INET6, 'fd00:8::5'))
    assert N.parse_rule(body) == {'family': socket.AF_INET6, 'src_len': 128, 'table': 254, 'action': 1,
                                  'priority': 101, 'src': ipaddress.ip_address('fd00:8::5'), 'dst_len': 0,
                                  'invert': False, 'iif': None, 'find_saddr': False}
    inbound = struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 0, 0, 255, 0, 0, 1, 2) + \
        rta(6, struct.pack('=I', 1)) + rta(3, b'lo\0')
    assert N.parse_rule(inbound)['invert'] and N.parse_rule(inbound)['iif'] == 'lo'
