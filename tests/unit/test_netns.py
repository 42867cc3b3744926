"""Pure logic of _netns: validation, the options, the config section, gateway defaults, host checks.

The live planner is tested in test_net_plan.py, rtnetlink parsing and requests in test_netlink.py."""
import ipaddress
import os
import socket

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _netlink as NL, _netns as N
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


def fake_state(links=(), addrs=(), routes=(), rules=(), ipv6_off=None):
    """A NetState built from tables instead of the kernel."""
    st = object.__new__(NL.NetState)
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


def conflicts(section, others, host=None, name='g'):
    """The VServerError check_conflicts raises for ``section`` of guest ``name`` (None if it accepts it)."""
    section = dict({'mode': 'bridge', 'bridge': 'vsbr0', 'interface': 'eth0'}, **section)
    try:
        N.check_conflicts(name, section, host or fake_state([{'name': 'lo'}, {'name': 'eth0'}]), others)
    except VServerError as exc:
        return exc
    return None


def test_conflicts_with_the_other_guests_documents():
    """The manager passes every guest's document in (its own too: skipped); the concern reads no config."""
    others = {'g': {'network': {'addresses': ['10.0.0.5/24']}},
              'db': {'network': {'addresses': ['10.0.0.6/24', 'fd00:8::6/64']}},
              'bare': {}, 'nulled': {'network': None}}
    assert conflicts({'addresses': ['10.0.0.5/24'], 'gateway': ['10.0.0.1']}, others) is None
    assert conflicts({'addresses': ['10.0.0.5/24']}, {}) is None
    err = conflicts({'addresses': ['10.0.0.5/24', 'fd00:8::6/64']}, others)
    assert (str(err), err.field) == ('address fd00:8::6 is already held by guest db', 'address')
    err = conflicts({'addresses': ['10.0.0.6/16']}, others)           # the same IP in another subnet
    assert (str(err), err.field) == ('address 10.0.0.6 is already held by guest db', 'address')
    err = conflicts({'addresses': ['10.0.0.5/24'], 'gateway': ['10.0.0.6']}, others)
    assert (str(err), err.field) == ('gateway 10.0.0.6 is the address of guest db', 'gateway')
    err = conflicts({'addresses': ['10.0.0.6/24']}, others, name='db2')
    assert 'held by guest db' in str(err)
    assert conflicts({'addresses': ['10.0.0.6/24']}, others, name='db') is None   # its own addresses


def test_conflicts_with_the_host():
    host = fake_state([{'name': 'lo'}, {'name': 'eth0'}, {'name': 'eth0.7', 'kind': 'vlan'},
                       {'name': 'vsbr0', 'kind': 'veth'}], [('eth0', '192.0.2.10/24')])
    err = conflicts({'addresses': ['192.0.2.10/24']}, {}, host)
    assert (str(err), err.field) == ('address 192.0.2.10 is already held by the host (interface eth0)', 'address')
    err = conflicts({'addresses': ['10.0.0.5/24']}, {}, host)
    assert (str(err), err.field) == ('bridge vsbr0 exists on the host and is not a bridge (veth)', 'bridge')
    macvlan = {'mode': 'macvlan', 'bridge': None, 'addresses': ['10.0.0.5/24']}
    assert conflicts(dict(macvlan, parent='eth0'), {}, host) is None
    assert conflicts(dict(macvlan, parent='eth0', vlan=7), {}, host) is None     # the sub-interface exists
    err = conflicts(dict(macvlan, parent='eth9'), {}, host)
    assert (str(err), err.field) == ('parent device eth9 does not exist on the host (existing: eth0, eth0.7, lo, '
                                     'vsbr0)', 'parent')
    err = conflicts(dict(macvlan, parent='lo'), {}, host)
    assert (str(err), err.field) == ('parent must be a real host device, not lo', 'parent')


def test_interface_names_fit_ifnamsiz():
    assert N.host_ifname('vsbr0', 101) == 'vsbr0-101'
    assert N.host_ifname('abcdefghijklmno', 49151) == 'abcdefghi-49151'
    assert len(N.host_ifname('abcdefghijklmno', 2)) == 15
    assert N.vlan_ifname('eth1', 20) == 'eth1.20'
    assert N.vlan_ifname('enp0s31f6abcdef', 4094) == 'enp0s31f6a.4094'


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


def test_one_source_for_the_options():
    """The module's spec is the concern's (plus the host path options); DEFAULTS are what an absent option means."""
    import ast
    assert N.DEFAULTS == {'address': None, 'addresses': None, 'state': 'present', 'exclusive': False, 'mode': None,
                          'bridge': None, 'parent': None, 'vlan': None, 'gateway': None, 'mtu': None,
                          'interface': None}
    assert N.ARGUMENT_SPEC['state']['choices'] == list(N.STATES) and N.ARGUMENT_SPEC['mode']['choices'] == list(N.MODES)
    assert N.ARGUMENT_SPEC['name'] == {'type': 'str', 'required': True}
    # the module spells no option of its own: it passes the concern's spec
    source = open(os.path.join(os.path.dirname(N.__file__), '..', 'modules', 'address.py')).read()
    main = next(node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == 'main')
    own = [k.arg for k in ast.walk(main) if isinstance(k, ast.keyword) and k.arg in N.ARGUMENT_SPEC]
    assert 'ARGUMENT_SPEC' in ast.dump(main) and own == []
    # every default validates as "nothing given"
    opts = N.validate(dict(N.DEFAULTS, name='g', address='10.0.0.5/24'))
    assert opts['state'] == 'present' and opts['gateway'] is None and opts['exclusive'] is False


class FakeRuntime:
    def __init__(self, answer=(None, None)):
        self.answer, self.calls = answer, []

    def netns_handle(self, repair=False):
        self.calls.append(repair)
        return self.answer


def test_start_step_needs_addresses_and_a_running_init():
    rt = FakeRuntime()
    N.on_started(None, {'name': 'g'}, rt)
    N.on_started(None, {'name': 'g', 'network': {'addresses': []}}, rt)
    assert rt.calls == []                    # nothing to give: the runtime is not even asked
    N.on_started(None, {'name': 'g', 'network': {'addresses': ['10.0.0.5/24'], 'mode': 'bridge'}}, rt)
    assert rt.calls == [True]                # start holds the host lock: a lost handle is repaired
