"""The network mechanism (_netlink): rtnetlink parsing, and typed operations rendered once, as an `ip` line and,
for the simple ones, as the rtnetlink request `ip` would send (parsed back here with the same parsers)."""
import ipaddress
import socket
import struct

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _netlink as NL
from ansible_collections.vserver.core.plugins.module_utils._netlink import (
    Addr, DefaultRoute, LinkAdd, LinkDel, LinkSet, Rule)

I, A = ipaddress.ip_interface, ipaddress.ip_address


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
    msgs = NL.parse_messages(nlmsg(16, link) + nlmsg(20, addr) + nlmsg(24, route) + nlmsg(3, b'\0' * 4))
    assert [m[0] for m in msgs] == [16, 20, 24, 3]
    assert NL.parse_link(msgs[0][1]) == {'index': 5, 'name': 'eth0', 'up': True, 'mtu': 1400, 'link': 9,
                                         'master': None, 'kind': 'veth'}
    parsed = NL.parse_addr(msgs[1][1])
    assert parsed['index'] == 5 and str(parsed['iface']) == 'fd00:8::5/64'
    assert NL.parse_route(msgs[2][1]) == {'family': socket.AF_INET, 'dst_len': 0, 'table': 254, 'oif': 5,
                                          'gateway': '10.0.0.1', 'dst': None}


def test_rule_parser():
    body = struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 128, 0, 254, 0, 0, 1, 0) + \
        rta(6, struct.pack('=I', 101)) + rta(2, socket.inet_pton(socket.AF_INET6, 'fd00:8::5'))
    assert NL.parse_rule(body) == {'family': socket.AF_INET6, 'src_len': 128, 'table': 254, 'action': 1,
                                   'priority': 101, 'src': A('fd00:8::5'), 'dst_len': 0,
                                   'invert': False, 'iif': None, 'find_saddr': False}
    inbound = struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 0, 0, 255, 0, 0, 1, 2) + \
        rta(6, struct.pack('=I', 1)) + rta(3, b'lo\0')
    assert NL.parse_rule(inbound)['invert'] and NL.parse_rule(inbound)['iif'] == 'lo'


def test_simple_operations_become_rtnetlink_requests():
    op = Addr(True, I('fd00:8::5/64'), 'eth0', nodad=True)
    msg, flags, body = op.request(7)
    assert op.simple and op.dev == 'eth0' and msg == NL.RTM_NEWADDR and flags & NL.NLM_F_EXCL
    parsed = NL.parse_addr(body)
    assert parsed['index'] == 7 and str(parsed['iface']) == 'fd00:8::5/64'
    assert NL.parse_attrs(body, 8)[NL.IFA_FLAGS] == struct.pack('=I', NL.IFA_F_NODAD)
    msg, flags, body = Addr(False, I('10.0.0.5/24'), 'eth0').request(3)
    assert msg == NL.RTM_DELADDR and str(NL.parse_addr(body)['iface']) == '10.0.0.5/24'
    msg, flags, body = DefaultRoute(True, A('fd00:8::1'), 'eth0').request(4)
    assert msg == NL.RTM_NEWROUTE and flags & NL.NLM_F_REPLACE
    assert NL.parse_route(body) == {'family': socket.AF_INET6, 'dst_len': 0, 'table': 254, 'oif': 4,
                                    'gateway': 'fd00:8::1', 'dst': None}
    msg, flags, body = DefaultRoute(False, A('10.0.0.1'), 'eth0').request(4)
    assert msg == NL.RTM_DELROUTE and NL.parse_route(body)['gateway'] == '10.0.0.1'
    msg, _flags, body = LinkSet('eth0', up=True).request(2)
    assert msg == NL.RTM_NEWLINK and NL.parse_link(body)['up'] is True and NL.parse_link(body)['index'] == 2


@pytest.mark.parametrize('op', [LinkSet('eth0', addrgen_off=True), LinkSet('eth0', mtu=1400),
                                LinkSet('eth0', master='br0'), LinkDel('eth0'),
                                LinkAdd('veth', 'x', peer='eth0', pid=1), Rule(True, 101, 'main', src=A('fd00::5'))])
def test_everything_else_goes_through_ip_batch(op):
    assert not op.simple
    assert NL.send([Addr(True, I('10.0.0.5/24'), 'eth0'), op], None) is False   # nothing sent, not even the first


def test_every_operation_renders_one_ip_line():
    assert NL.render([
        LinkAdd('bridge', 'br0'), LinkAdd('vlan', 'eth1.5', lower='eth1', vid=5),
        LinkAdd('veth', 'br0-7', peer='eth0', pid=42), LinkAdd('macvlan', 'eth0', lower='eth1', pid=42, mtu=9000),
        LinkDel('eth0'), LinkSet('eth0', up=True), LinkSet('eth0', master='br0'), LinkSet('eth0', mtu=1280),
        LinkSet('eth0', addrgen_off=True), Addr(True, I('fd00::5/64'), 'eth0', nodad=True),
        Addr(False, I('10.0.0.5/24'), 'eth0'), DefaultRoute(True, A('10.0.0.1'), 'eth0'),
        DefaultRoute(False, A('fd00::1'), 'eth0'), Rule(True, 1, 'local', not_iif='lo'),
        Rule(False, 100, 'local', src=A('fd00::5'), find_saddr=True), Rule(True, 200)]) == [
        'link add br0 type bridge', 'link add link eth1 name eth1.5 type vlan id 5',
        'link add br0-7 type veth peer name eth0 netns 42',
        'link add link eth1 name eth0 mtu 9000 netns 42 type macvlan mode bridge',
        'link del eth0', 'link set eth0 up', 'link set eth0 master br0', 'link set eth0 mtu 1280',
        'link set eth0 addrgenmode none', 'addr add fd00::5/64 dev eth0 nodad', 'addr del 10.0.0.5/24 dev eth0',
        'route replace 0.0.0.0/0 via 10.0.0.1 dev eth0', 'route del ::/0 via fd00::1 dev eth0',
        'rule add not iif lo lookup local pref 1', 'rule del from fd00::5/128 lookup local pref 100',
        'rule add unreachable pref 200']


def test_per_address_rules_carry_find_saddr_over_rtnetlink():
    msg, flags, body = Rule(True, 100, 'local', src=A('fd00:8::5'), find_saddr=True).request()
    assert msg == NL.RTM_NEWRULE and flags & NL.NLM_F_EXCL
    assert NL.parse_rule(body) == {'family': socket.AF_INET6, 'src_len': 128, 'table': 255, 'action': 1,
                                   'priority': 100, 'src': A('fd00:8::5'), 'dst_len': 0, 'invert': False,
                                   'iif': None, 'find_saddr': True}
    msg, flags, body = Rule(False, 100, 'local', src=A('fd00:8::5'), find_saddr=True).request()
    assert msg == NL.RTM_DELRULE and NL.parse_rule(body)['find_saddr']   # deleted by the same selector


def test_rules_alternate_between_batch_and_rtnetlink_in_order(monkeypatch):
    calls = []
    monkeypatch.setattr(NL, 'run_batch', lambda ops, handle=None, family6=False: calls.append(
        ('batch6' if family6 else 'batch', NL.render(ops))))
    monkeypatch.setattr(NL, 'send_rule', lambda rule, handle: calls.append(('rtnetlink', NL.render([rule]))))
    own = Rule(True, 100, 'local', src=A('fd00::5'), find_saddr=True)
    NL.apply_rules6([Rule(True, 1, 'local', not_iif='lo'), own, Rule(True, 200)], '/run/h')
    assert calls == [('batch6', ['rule add not iif lo lookup local pref 1']),
                     ('rtnetlink', ['rule add from fd00::5/128 lookup local pref 100']),
                     ('batch6', ['rule add unreachable pref 200'])]


def test_reads_this_namespace():
    """No root needed: the loopback of the namespace the test runs in, as rtnetlink shows it."""
    state = NL.NetState(routes=False)
    assert state.links['lo']['index'] == 1 and state.by_index[1]['name'] == 'lo'
    assert state.holder(A('127.0.0.1')) == 'lo' and state.holder(A('192.0.2.77')) is None
