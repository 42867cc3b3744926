"""IPv6 from a guest, seen by a capture on the host end of its veth: a guest without an IPv6 address sends no IPv6
packet at all, whatever source it picks; a dual-stack guest sends only from its own addresses.

The probes are unprivileged socket tricks (IPV6_FREEBIND, scoped link-local and multicast addresses), run with
the guest's own credentials (``as_guest``); the capture is an AF_PACKET socket on the host end, bounded in time.
"""
import errno
import ipaddress
import socket
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _netns
from helpers import guest_sh
from test_address import IPV6_FREEBIND, Net, as_guest, ensure, free_port, http_get, serve, veths_gone


ETH_P_ALL = 3
PACKET_OUTGOING = 4
SPOOFED = ('2001:db8::bad', 'fe80::bad', None)   # None: no bind, the kernel picks the source


@pytest.fixture
def net():
    tn = Net()
    yield tn
    tn.cleanup()
    assert veths_gone('vst' + tn.tag), 'links left behind'


class Capture:
    """IPv6 frames entering the host from ``ifname`` (sent by the guest): [(source, destination, next header)]."""

    def __init__(self, ifname):
        # ETH_P_ALL: a tap sees the frame before the bridge takes it (a per-protocol socket would not)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.settimeout(0.3)

    def frames(self, quiet=0.3, limit=3.0):
        out = []
        deadline = time.monotonic() + limit
        with self.sock:
            while time.monotonic() < deadline:
                try:
                    data, addr = self.sock.recvfrom(65535)
                except socket.timeout:
                    break
                if addr[2] == PACKET_OUTGOING or len(data) < 54 or data[12:14] != b'\x86\xdd':
                    continue
                ip6 = data[14:]
                out.append((str(ipaddress.ip_address(ip6[8:24])), str(ipaddress.ip_address(ip6[24:40])), ip6[6]))
        return out


def send_tries(paths, doc, targets, sources=SPOOFED):
    """From the guest, one UDP datagram (port 9) per (source, target); returns {(source, target): outcome}."""
    def probe():
        index = socket.if_nametoindex('eth0')
        results = []
        for source in sources:
            for target in targets:
                scope = index if ipaddress.ip_address(target).is_link_local or \
                    ipaddress.ip_address(target).is_multicast else 0
                try:
                    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                except OSError as exc:
                    results.append('socket:' + errno.errorcode[exc.errno])
                    continue
                with sock:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
                    try:
                        if source:
                            sock.bind((source, 0, 0, index if source.startswith('fe80') else 0))
                        sock.sendto(b'vserver-spoof', (target, 9, 0, scope))
                        results.append('sent')
                    except OSError as exc:
                        results.append(errno.errorcode[exc.errno])
        return ','.join(results)
    outcomes = as_guest(paths, doc, probe).split(',')
    pairs = [(s, t) for s in sources for t in targets]
    return dict(zip(pairs, outcomes))


def _host_end(net, doc):
    return _netns.host_ifname(net.bridge, doc['xid'])


def test_ipv4_only_guest_sends_no_ipv6(net, host_paths, make_guest):
    make_guest('v4only', start=True)
    ensure(host_paths, name='v4only', address=net.cidr4(2), bridge=net.bridge, gateway=[net.ip4(1)])
    doc = _config.load(host_paths, 'v4only')
    cap = Capture(_host_end(net, doc))
    tried = send_tries(host_paths, doc, ('ff02::1', 'fe80::1', net.ip6(1)))
    seen = cap.frames()
    assert seen == [], (seen, tried)
    assert 'sent' not in tried.values(), tried
    # IPv6 is off on its link, on by default nowhere else; its loopback keeps ::1
    out = guest_sh(host_paths, 'v4only', 'cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 '
                   '/proc/sys/net/ipv6/conf/default/disable_ipv6 /proc/sys/net/ipv6/conf/lo/disable_ipv6; ip -o addr')
    assert out.stdout.split()[:3] == ['1', '1', '0'], out.stdout
    assert '::1/128' in out.stdout and 'inet6' not in out.stdout.split('::1/128')[1], out.stdout
    # IPv4 works as before
    port = free_port()
    assert serve(host_paths, 'v4only', '%s:%d' % (net.ip4(2), port), 'four').returncode == 0
    assert http_get(net.ip4(2), port) == 'four\n'


def test_dual_stack_guest_sends_only_from_its_own_addresses(net, host_paths, make_guest):
    make_guest('dual', start=True)
    ensure(host_paths, name='dual', addresses=[net.cidr4(2), net.cidr6(2)], bridge=net.bridge,
           gateway=[net.ip4(1), net.ip6(1)])
    doc = _config.load(host_paths, 'dual')
    own, gw = net.ip6(2), net.ip6(1)
    cap = Capture(_host_end(net, doc))
    spoofed = send_tries(host_paths, doc, ('ff02::1', 'fe80::1', gw),
                         sources=(net.ip6(3), '2001:db8::bad', 'fe80::bad'))
    mine = send_tries(host_paths, doc, ('ff02::1', gw), sources=(own, None))
    seen = cap.frames()
    # the guest's kernel sends its MLD reports (ICMPv6 behind a hop-by-hop header) from :: (its link has no
    # link-local address); everything else must come from its own address
    sources = {src for src, _dst, nh in seen if not (src == '::' and nh in (0, 58))}
    assert sources <= {own}, (seen, spoofed)
    udp = {(src, dst) for src, dst, nh in seen if nh == 17}
    assert (own, gw) in udp and (own, 'ff02::1') in udp, (seen, mine)
    assert set(mine.values()) == {'sent'}, mine
    assert 'sent' not in spoofed.values(), spoofed

    # losing its last IPv6 address turns IPv6 off on its link; gaining one turns it back on
    ensure(host_paths, name='dual', address=net.cidr6(2), state='absent')
    out = guest_sh(host_paths, 'dual', 'cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6').stdout.strip()
    assert out == '1'
    cap = Capture(_host_end(net, doc))
    tried = send_tries(host_paths, doc, ('ff02::1', gw), sources=(own, '2001:db8::bad', None))
    assert cap.frames() == [] and 'sent' not in tried.values(), tried
    ensure(host_paths, name='dual', address=net.cidr6(2))
    assert guest_sh(host_paths, 'dual', 'cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6').stdout.strip() == '0'
    assert send_tries(host_paths, doc, (gw,), sources=(own,)) == {(own, gw): 'sent'}
