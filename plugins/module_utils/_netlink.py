# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: rtnetlink and iproute2 for guest networking (floor 2, a mechanism).

Reads a network namespace's links, addresses, default routes and IPv6 policy rules over rtnetlink (stdlib
sockets, in process), and applies typed operations (``LinkAdd``, ``Addr``, ``DefaultRoute``, ``Rule``...). Each
operation renders itself once: as the argv of one ``ip`` command (a line of an ``ip -batch`` script; list argv,
no shell) and, for the common live changes (addresses, default routes, link up, per-address IPv6 rules), as the
rtnetlink request ``ip`` would send, sent in process without two exec()s. Nothing here knows about guests or
their config: the network concern (``_netns``) plans the operations, this file carries them to the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import socket
import struct
from typing import Iterable, List, NamedTuple, Optional, Sequence, Union

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

# ipaddress objects are immutable and slow to build: parse each text once.
cached_iface = functools.lru_cache(maxsize=4096)(ipaddress.ip_interface)
cached_ip = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 1
IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 3, 4, 5, 10, 18
IFLA_INFO_KIND = 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_F_NODAD = 1, 2, 8, 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_TABLE = 2, 3, 6, 15
FIB_RULE_INVERT, FIB_RULE_FIND_SADDR = 2, 0x10000
FR_ACT_TO_TBL, FR_ACT_UNREACHABLE = 1, 7
TABLES = {'main': RT_TABLE_MAIN, 'local': RT_TABLE_LOCAL}

# --- parsing what the kernel answers -----------------------------------------------------------------------


def parse_attrs(data, offset=0):
    out = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from('=HH', data, offset)
        if length < 4:
            break
        out[kind & 0x3fff] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def parse_messages(data):
    """Split a netlink buffer into (type, payload) pairs."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from('=IH', data, offset)
        if length < 16:
            break
        out.append((kind, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return out


def _cstr(raw):
    return raw.split(b'\0', 1)[0].decode()


def _u32(attrs, key):
    return struct.unpack('=I', attrs[key][:4])[0] if key in attrs else None


def parse_link(payload):
    _family, _type, index, flags, _change = struct.unpack_from('=BxHiII', payload, 0)
    attrs = parse_attrs(payload, 16)
    kind = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _cstr(info[IFLA_INFO_KIND])
    return {'index': index, 'name': _cstr(attrs.get(IFLA_IFNAME, b'')), 'up': bool(flags & IFF_UP),
            'mtu': _u32(attrs, IFLA_MTU), 'link': _u32(attrs, IFLA_LINK), 'master': _u32(attrs, IFLA_MASTER),
            'kind': kind}


def parse_addr(payload):
    family, prefix, _flags, scope, index = struct.unpack_from('=BBBBI', payload, 0)
    attrs = parse_attrs(payload, 8)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None:
        return None
    ip = socket.inet_ntop(family, raw)
    return {'index': index, 'iface': cached_iface('%s/%d' % (ip, prefix)), 'scope': scope}


def parse_route(payload):
    family, dst_len, _src, _tos, table, _proto, _scope, _type, _flags = struct.unpack_from('=BBBBBBBBI', payload, 0)
    attrs = parse_attrs(payload, 12)
    if RTA_TABLE in attrs:
        table = _u32(attrs, RTA_TABLE)
    return {'family': family, 'dst_len': dst_len, 'table': table, 'oif': _u32(attrs, RTA_OIF),
            'gateway': socket.inet_ntop(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
            'dst': socket.inet_ntop(family, attrs[RTA_DST]) if RTA_DST in attrs else None}


def parse_rule(payload):
    family, dst_len, src_len, _tos, table, _res1, _res2, action, flags = struct.unpack_from('=BBBBBBBBI', payload, 0)
    attrs = parse_attrs(payload, 12)
    if FRA_TABLE in attrs:
        table = _u32(attrs, FRA_TABLE)
    return {'family': family, 'src_len': src_len, 'table': table, 'action': action,
            'priority': _u32(attrs, FRA_PRIORITY) or 0,
            'src': cached_ip(socket.inet_ntop(family, attrs[FRA_SRC])) if FRA_SRC in attrs else None,
            'dst_len': dst_len, 'invert': bool(flags & FIB_RULE_INVERT),
            'find_saddr': bool(flags & FIB_RULE_FIND_SADDR),
            'iif': _cstr(attrs[FRA_IIFNAME]) if FRA_IIFNAME in attrs else None}


# --- namespaces and sockets ----------------------------------------------------------------------------------


@contextlib.contextmanager
def in_netns(handle):
    """Temporarily move this thread into the network namespace bound at ``handle`` (a path)."""
    if handle is None:
        yield
        return
    own = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(handle, os.O_RDONLY | os.O_CLOEXEC)
        try:
            K.setns(target, K.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            K.setns(own, K.CLONE_NEWNET)
    finally:
        os.close(own)


def _socket(handle):
    """A bound rtnetlink socket of the namespace at ``handle`` (None: this one); it stays in that namespace."""
    with in_netns(handle):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _header(length, msg_type, flags, seq):
    return struct.pack('=IHHII', 16 + length, msg_type, flags, seq, 0)


def _ack(sock):
    """The error code (0: done) of the kernel's answer to the last request sent with NLM_F_ACK."""
    while True:
        answers = [p for k, p in parse_messages(sock.recv(1 << 16)) if k == NLMSG_ERROR]
        if answers:
            return struct.unpack_from('=i', answers[0], 0)[0]


IPV6_OFF = '/proc/sys/net/ipv6/conf/%s/disable_ipv6'


def read_ipv6_off(handle, names):
    """{link name: IPv6 turned off} in the namespace at ``handle`` (links the kernel shows no setting for left out)."""
    out = {}
    with in_netns(handle):
        for name in names:
            try:
                with open(IPV6_OFF % name) as sysctl:
                    out[name] = sysctl.read().strip() != '0'
            except OSError:
                pass
    return out


def set_ipv6_off(handle, name, off):
    """Turn IPv6 off (addresses and routes go with it) or on for one link of the namespace at ``handle``."""
    try:
        with in_netns(handle):
            with open(IPV6_OFF % name, 'w') as sysctl:
                sysctl.write('1' if off else '0')
    except FileNotFoundError:
        if off and not os.path.exists('/proc/sys/net/ipv6'):
            return  # a kernel without IPv6: off already
        raise VServerError('network change failed: no IPv6 setting for interface %s in the guest' % name)
    except OSError as exc:
        raise VServerError('network change failed: IPv6 %s on %s: %s' % ('off' if off else 'on', name, exc))


class NetState:
    """Links, addresses, default routes and IPv6 rules of one network namespace, read over rtnetlink."""

    def __init__(self, netns=None, routes=True):
        self.seq = 0
        with contextlib.closing(_socket(netns)) as sock:
            self.links = {}
            for payload in self._dump(sock, RTM_GETLINK, struct.pack('=BxHiII', 0, 0, 0, 0, 0)):
                link = parse_link(payload)
                self.links[link['name']] = link
            addrs = self._dump(sock, RTM_GETADDR, struct.pack('=BBBBI', 0, 0, 0, 0, 0))
            self.addrs = [a for a in map(parse_addr, addrs) if a]
            self.routes = [parse_route(p) for p in self._dump(
                sock, RTM_GETROUTE, struct.pack('=BBBBBBBBI', 0, 0, 0, 0, 0, 0, 0, 0, 0))] if routes else []
            self.rules6 = [parse_rule(p) for p in self._dump(
                sock, RTM_GETRULE, struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0))
            ] if routes else []
        self.by_index = {link['index']: link for link in self.links.values()}
        self.ipv6_off = read_ipv6_off(netns, self.links) if netns is not None and routes else {}

    def _dump(self, sock, msg_type, body):
        self.seq += 1
        sock.send(_header(len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, self.seq) + body)
        out = []
        while True:
            for kind, payload in parse_messages(sock.recv(1 << 16)):
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from('=i', payload, 0)[0]
                    if code:
                        raise OSError(-code, 'rtnetlink dump: %s' % os.strerror(-code))
                    return out
                if kind == msg_type - 2:  # RTM_NEW* answers RTM_GET*
                    out.append(payload)

    def addrs_of(self, name):
        link = self.links.get(name)
        if link is None:
            return []
        return [a for a in self.addrs if a['index'] == link['index']]

    def holder(self, ip):
        """The link name holding ``ip`` in this namespace, or None."""
        for a in self.addrs:
            if a['iface'].ip == ip:
                link = self.by_index.get(a['index'])
                return link['name'] if link else '?'
        return None

    def default_gateways(self, name):
        link = self.links.get(name)
        out = {}
        for route in self.routes:
            if route['dst_len'] == 0 and route['table'] == RT_TABLE_MAIN and route['gateway'] and \
                    link and route['oif'] == link['index']:
                out[4 if route['family'] == socket.AF_INET else 6] = route['gateway']
        return out


# --- typed operations ---------------------------------------------------------------------------------------
# Each renders its `ip` argv (argv()); the simple ones (``simple``) also build their rtnetlink request for the
# index of their device (request(index) -> (message type, flags, body)).


def _rta(kind, data):
    return struct.pack('=HH', 4 + len(data), kind) + data + b'\0' * (-len(data) % 4)


class LinkAdd(NamedTuple):
    """A new link: ``bridge``; ``vlan`` ``vid`` on ``lower``; ``veth`` with its ``peer`` end moved into the
    namespace of ``pid``; ``macvlan`` (bridge mode) on ``lower``, moved into the namespace of ``pid``."""
    kind: str
    name: str
    lower: Optional[str] = None
    vid: Optional[int] = None
    peer: Optional[str] = None
    pid: Optional[int] = None
    mtu: Optional[int] = None
    simple = False

    def argv(self) -> List[str]:
        mtu = ['mtu', str(self.mtu)] if self.mtu else []
        if self.kind == 'bridge':
            return ['link', 'add', self.name, 'type', 'bridge']
        if self.kind == 'vlan':
            return ['link', 'add', 'link', self.lower, 'name', self.name, 'type', 'vlan', 'id', str(self.vid)]
        if self.kind == 'veth':
            return (['link', 'add', self.name] + mtu + ['type', 'veth', 'peer', 'name', self.peer] + mtu
                    + ['netns', str(self.pid)])
        return (['link', 'add', 'link', self.lower, 'name', self.name] + mtu
                + ['netns', str(self.pid), 'type', 'macvlan', 'mode', 'bridge'])


class LinkDel(NamedTuple):
    name: str
    simple = False

    def argv(self) -> List[str]:
        return ['link', 'del', self.name]


class LinkSet(NamedTuple):
    """One setting of an existing link: up, its bridge (``master``), its MTU, or no IPv6 address generation."""
    name: str
    up: bool = False
    master: Optional[str] = None
    mtu: Optional[int] = None
    addrgen_off: bool = False

    @property
    def simple(self):
        return self.up and self.master is None and self.mtu is None and not self.addrgen_off

    def argv(self) -> List[str]:
        out = ['link', 'set', self.name]
        if self.master is not None:
            out += ['master', self.master]
        if self.mtu is not None:
            out += ['mtu', str(self.mtu)]
        if self.addrgen_off:
            out += ['addrgenmode', 'none']
        if self.up:
            out.append('up')
        return out

    @property
    def dev(self):
        return self.name

    def request(self, index):
        return RTM_NEWLINK, 0, struct.pack('=BxHiII', 0, 0, index, IFF_UP, IFF_UP)


class Addr(NamedTuple):
    """An address added to (``add``) or removed from a link; ``nodad``: usable at once (no duplicate detection)."""
    add: bool
    iface: Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
    dev: str
    nodad: bool = False
    simple = True

    def argv(self) -> List[str]:
        return ['addr', 'add' if self.add else 'del', self.iface.with_prefixlen, 'dev', self.dev] + \
            (['nodad'] if self.nodad else [])

    def request(self, index):
        family = socket.AF_INET if self.iface.version == 4 else socket.AF_INET6
        raw = self.iface.ip.packed
        flags = IFA_F_NODAD if self.nodad else 0
        body = (struct.pack('=BBBBI', family, self.iface.network.prefixlen, flags, 0, index) + _rta(IFA_LOCAL, raw)
                + _rta(IFA_ADDRESS, raw) + _rta(IFA_FLAGS, struct.pack('=I', flags)))
        if self.add:
            return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body
        return RTM_DELADDR, 0, body


class DefaultRoute(NamedTuple):
    """The default route of ``gateway``'s family through ``dev``: set (``replace``) or removed."""
    replace: bool
    gateway: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    dev: str
    simple = True

    def argv(self) -> List[str]:
        return ['route', 'replace' if self.replace else 'del', '0.0.0.0/0' if self.gateway.version == 4 else '::/0',
                'via', str(self.gateway), 'dev', self.dev]

    def request(self, index):
        family = socket.AF_INET if self.gateway.version == 4 else socket.AF_INET6
        if self.replace:  # protocol boot, scope universe, type unicast
            head = struct.pack('=BBBBBBBBI', family, 0, 0, 0, RT_TABLE_MAIN, 3, 0, 1, 0)
            msg, flags = RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE
        else:  # scope nowhere: any route to that destination through that gateway
            head = struct.pack('=BBBBBBBBI', family, 0, 0, 0, RT_TABLE_MAIN, 0, 253, 0, 0)
            msg, flags = RTM_DELROUTE, 0
        return msg, flags, head + _rta(RTA_GATEWAY, self.gateway.packed) + _rta(RTA_OIF, struct.pack('=I', index))


class Rule(NamedTuple):
    """An IPv6 policy rule at priority ``pref``: look up ``table`` (or unreachable) for packets from ``src`` (/128),
    or not arriving on ``not_iif``, or not going to ``not_to``. ``find_saddr`` (FIB_RULE_FIND_SADDR) can only be
    set over rtnetlink: `ip rule` neither sets nor shows it."""
    add: bool
    pref: int
    table: Optional[str] = None
    src: Optional[ipaddress.IPv6Address] = None
    not_iif: Optional[str] = None
    not_to: Optional[str] = None
    find_saddr: bool = False
    simple = False

    def argv(self) -> List[str]:
        out = ['rule', 'add' if self.add else 'del']
        if self.not_iif:
            out += ['not', 'iif', self.not_iif]
        if self.not_to:
            out += ['not', 'to', self.not_to]
        if self.src is not None:
            out += ['from', '%s/128' % self.src]
        out += ['lookup', self.table] if self.table else ['unreachable']
        return out + ['pref', str(self.pref)]

    def request(self):
        """The rtnetlink request of a per-source rule (the only kind sent this way)."""
        body = (struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 128, 0, TABLES[self.table], 0, 0, FR_ACT_TO_TBL,
                            FIB_RULE_FIND_SADDR if self.find_saddr else 0)
                + _rta(FRA_PRIORITY, struct.pack('=I', self.pref)) + _rta(FRA_SRC, self.src.packed))
        if self.add:
            return RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, body
        return RTM_DELRULE, 0, body


Op = Union[LinkAdd, LinkDel, LinkSet, Addr, DefaultRoute, Rule]


def render(ops: Iterable[Op]) -> List[str]:
    """The `ip` lines of ``ops`` (an ``ip -batch`` script, and what error messages show)."""
    return [' '.join(op.argv()) for op in ops]


# --- carrying operations to the kernel ------------------------------------------------------------------------


def run_batch(ops: Sequence[Op], handle: Optional[str] = None, family6: bool = False) -> None:
    """``ops`` in order through one ``ip -batch`` (``ip -6`` for rules), in the namespace at ``handle``."""
    if not ops:
        return
    lines = render(ops)
    argv = ['ip'] + (['-6'] if family6 else []) + ['-batch', '-']
    if handle:
        argv = ['nsenter', '--net=%s' % handle] + argv
    try:
        K.run(argv, input='\n'.join(lines) + '\n')
    except OSError as exc:
        raise VServerError('network change failed: %s\ncommands: %s' % (exc, '; '.join(lines)))


def undo(ops: Iterable[Op], quiet: bool = False) -> None:
    """Run each operation alone in the host namespace, ignoring its failure (a rollback: each is tried)."""
    for op in ops:
        try:
            K.run(['ip'] + op.argv(), check=False)
        except Exception:
            if not quiet:
                raise


def send(ops: Sequence[Op], handle: Optional[str]) -> bool:
    """Send simple operations over rtnetlink in the namespace at ``handle``, in order; False (nothing sent) when
    one of them is not simple. A refused request raises VServerError naming its `ip` line."""
    if not ops or not all(op.simple for op in ops):
        return False
    with in_netns(handle):  # one trip into the namespace: the socket and the device indexes
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            indexes = {op.dev: socket.if_nametoindex(op.dev) for op in ops}
        except OSError as exc:
            sock.close()
            raise VServerError('network change failed: %s\ncommands: %s' % (exc, '; '.join(render(ops))))
    with sock:
        sock.bind((0, 0))
        for seq, op in enumerate(ops, start=1):
            msg, flags, body = op.request(indexes[op.dev])
            sock.send(_header(len(body), msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq) + body)
            code = _ack(sock)
            if code:
                raise VServerError('network change failed: %s: %s\ncommands: %s'
                                   % (' '.join(op.argv()), os.strerror(-code), '; '.join(render(ops))))
    return True


def send_rule(rule: Rule, handle: Optional[str]) -> None:
    """One per-source IPv6 rule over rtnetlink (FIB_RULE_FIND_SADDR, which `ip rule` cannot set)."""
    msg, flags, body = rule.request()
    with contextlib.closing(_socket(handle)) as sock:
        sock.send(_header(len(body), msg, NLM_F_REQUEST | NLM_F_ACK | flags, 1) + body)
        code = _ack(sock)
    if code:
        raise VServerError('network change failed: %s: %s' % (' '.join(rule.argv()), os.strerror(-code)))


def apply_rules6(rules: Sequence[Rule], handle: Optional[str]) -> None:
    """IPv6 rules in order: runs of plain ones through `ip -6 -batch`, ``find_saddr`` ones over rtnetlink."""
    chunk = []
    for rule in rules:
        if not rule.find_saddr:
            chunk.append(rule)
            continue
        run_batch(chunk, handle, family6=True)
        chunk = []
        send_rule(rule, handle)
    run_batch(chunk, handle, family6=True)
