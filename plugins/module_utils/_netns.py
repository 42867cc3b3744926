# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: guest networking (VServer's network context on a network namespace).

Each guest gets one interface (default ``eth0``) in its own network namespace carrying the addresses it was
given: the guest end of a veth pair whose host end is a port of a host bridge (``bridge`` mode), or a macvlan
on a host device (``macvlan`` mode), optionally on an 802.1Q sub-interface (``vlan``). Guests have no
CAP_NET_ADMIN, so everything is configured from the host: state is read over rtnetlink (stdlib sockets, in
process), changes are made with iproute2 (``ip -batch``, list argv, no shell), guest-side through
``nsenter --net=<handle>``.

Config lives in the guest document's ``network`` section::

    {"mode": "bridge", "bridge": "vsbr0", "interface": "eth0",
     "addresses": ["10.8.0.2/24", "fd00:8::2/64"], "gateway": ["10.8.0.1", "fd00:8::1"],
     "mtu": null, "vlan": null, "parent": null}

``ensure()`` is the manager behind the ``address`` module; ``apply_on_start`` (a ``started`` hook) re-applies
the section at every start; ``netns_defaults`` (a ``netns`` hook) turns off IPv6 autoconfiguration in every
new guest namespace so the guest only ever holds the addresses it was given.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import re
import socket
import struct
import time

from ansible_collections.vserver.core.plugins.module_utils import _config, _kernel as K
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, VServerError, check_name

MODES = ('bridge', 'macvlan')
STATES = ('present', 'absent')
DEFAULT_BRIDGE = 'vsbr0'
DEFAULT_INTERFACE = 'eth0'
IFNAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$')
SECTION_KEYS = ('mode', 'bridge', 'parent', 'vlan', 'mtu', 'interface', 'addresses', 'gateway')

# ipaddress objects are immutable and slow to build: parse each text once.
_iface = functools.lru_cache(maxsize=4096)(ipaddress.ip_interface)
_ip = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)

# --- validation ------------------------------------------------------------------------------------------


def parse_address(value, field='address'):
    """A guest address in CIDR form -> ipaddress interface. Refuses what cannot be a host's own address."""
    if not isinstance(value, str) or '/' not in value:
        raise VServerError('%s must be an IPv4 or IPv6 address with its prefix length in CIDR form, such as '
                           '10.8.0.2/24 or fd00:8::2/64 (got %r)' % (field, value), field)
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise VServerError('%s must be an IPv4 or IPv6 address with its prefix length in CIDR form, such as '
                           '10.8.0.2/24 or fd00:8::2/64 (got %r)' % (field, value), field)
    ip, net = iface.ip, iface.network
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local or \
            (ip.version == 4 and (ip.is_reserved or ip == ipaddress.IPv4Address('255.255.255.255'))):
        raise VServerError('%s: %s is not a unicast host address (unspecified, loopback, multicast, link-local '
                           'and reserved addresses cannot be given to a guest)' % (field, value), field)
    if ip.version == 4 and net.prefixlen <= 30:
        if ip == net.network_address:
            raise VServerError('%s: %s is the network address of %s; give a host address inside it'
                               % (field, value, net), field)
        if ip == net.broadcast_address:
            raise VServerError('%s: %s is the broadcast address of %s; give a host address inside it'
                               % (field, value, net), field)
    if ip.version == 6 and net.prefixlen <= 126 and ip == net.network_address:
        raise VServerError('%s: %s is the subnet-router anycast (network) address of %s; give a host address '
                           'inside it' % (field, value, net), field)
    return iface


def parse_gateway(value, field='gateway'):
    try:
        ip = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise VServerError('%s must be an IPv4 or IPv6 address without prefix length, such as 10.8.0.1 '
                           '(got %r)' % (field, value), field)
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise VServerError('%s: %s cannot be a gateway' % (field, value), field)
    return ip


def check_ifname(value, field):
    if not isinstance(value, str) or not IFNAME_RE.match(value) or value in ('.', '..'):
        raise VServerError('%s must be a network interface name of 1 to 15 letters, digits, "_", "." and "-" '
                           '(got %r)' % (field, value), field)
    return value


def validate(params):
    """Check every option before anything is touched; return normalized options."""
    opts = {'name': check_name(params.get('name'))}
    state = params.get('state') or 'present'
    if state not in STATES:
        raise VServerError('state must be present or absent (got %r)' % (state,), 'state')
    opts['state'] = state
    given = []
    if params.get('address') is not None:
        given.append(('address', params['address']))
    for item in params.get('addresses') or []:
        given.append(('addresses', item))
    addresses = []
    for field, value in given:
        iface = parse_address(value, field)
        if any(other.ip == iface.ip for other in addresses):
            if iface not in addresses:
                raise VServerError('%s: %s is given twice with different prefixes' % (field, iface.ip), field)
            continue
        addresses.append(iface)
    opts['addresses'] = addresses
    mode = params.get('mode')
    if mode is not None and mode not in MODES:
        raise VServerError('mode must be bridge or macvlan (got %r)' % (mode,), 'mode')
    opts['mode'] = mode
    for key in ('bridge', 'parent', 'interface'):
        opts[key] = check_ifname(params[key], key) if params.get(key) is not None else None
    if opts['interface'] == 'lo':
        raise VServerError('interface must not be lo (the guest keeps its own loopback)', 'interface')
    vlan = params.get('vlan')
    if vlan is not None:
        if isinstance(vlan, bool) or not str(vlan).isdigit() or not 1 <= int(vlan) <= 4094:
            raise VServerError('vlan must be an 802.1Q VLAN id from 1 to 4094 (got %r)' % (vlan,), 'vlan')
        vlan = int(vlan)
    opts['vlan'] = vlan
    mtu = params.get('mtu')
    if mtu is not None:
        if isinstance(mtu, bool) or not str(mtu).isdigit() or not 68 <= int(mtu) <= 65535:
            raise VServerError('mtu must be an integer from 68 to 65535 (got %r)' % (mtu,), 'mtu')
        mtu = int(mtu)
    opts['mtu'] = mtu
    gateways = params.get('gateway')
    if isinstance(gateways, str):
        gateways = [g for g in gateways.split(',') if g.strip()]
    parsed = [parse_gateway(g) for g in gateways or []]
    if len({g.version for g in parsed}) != len(parsed):
        raise VServerError('gateway takes at most one IPv4 and one IPv6 address (got %s)'
                           % ', '.join(map(str, parsed)), 'gateway')
    opts['gateway'] = parsed if gateways is not None else None
    opts['exclusive'] = bool(params.get('exclusive'))
    return opts


def _section_view(section):
    if not section:
        return {}
    return {key: section.get(key) for key in SECTION_KEYS if section.get(key) is not None}


def desired(current, opts):
    """The new ``network`` section from the current one and validated options (None: no networking).

    Gateways are resolved later (``resolve_gateways``) because defaults depend on the host's bridge."""
    current = dict(current or {})
    have = [_iface(a) for a in current.get('addresses') or []]
    if opts['state'] == 'absent':
        if not opts['addresses']:
            return None
        drop = {i.ip for i in opts['addresses']}
        have = [i for i in have if i.ip not in drop]
    elif opts['exclusive']:
        have = list(opts['addresses'])
    else:
        for iface in opts['addresses']:
            have = [i for i in have if i.ip != iface.ip] + [iface]
    if not have:
        return None
    new = {'addresses': [str(i) for i in have]}
    mode = opts['mode'] or current.get('mode') or 'bridge'
    new['mode'] = mode
    new['interface'] = opts['interface'] or current.get('interface') or DEFAULT_INTERFACE
    if mode == 'bridge':
        new['bridge'] = opts['bridge'] or current.get('bridge') or DEFAULT_BRIDGE
    elif opts['bridge']:
        raise VServerError('bridge applies to mode bridge only; macvlan guests sit on parent', 'bridge')
    same_mode = current.get('mode', 'bridge') == mode
    for key in ('parent', 'vlan', 'mtu'):
        value = opts[key] if opts[key] is not None else (current.get(key) if same_mode or key == 'mtu' else None)
        if value is not None:
            new[key] = value
    if mode == 'macvlan' and not new.get('parent'):
        raise VServerError('mode macvlan needs parent: the host device (for example eth0) the guest shares',
                           'parent')
    if mode == 'bridge' and new.get('parent') and not new.get('vlan'):
        raise VServerError('parent in mode bridge is only the uplink of a VLAN bridge: give vlan too (the '
                           'module never enslaves an existing host device to a bridge)', 'parent')
    if mode == 'bridge' and new.get('vlan') and not new.get('parent'):
        raise VServerError('vlan in mode bridge needs parent: the device whose 802.1Q sub-interface '
                           'PARENT.VLAN becomes the bridge uplink', 'vlan')
    if any(i.version == 6 for i in have) and new.get('mtu') and new['mtu'] < 1280:
        raise VServerError('mtu must be at least 1280 for a guest with IPv6 addresses (got %d)' % new['mtu'], 'mtu')
    if opts['gateway'] is not None:
        new['gateway'] = [str(g) for g in opts['gateway']]
    elif current.get('gateway') is not None:
        new['gateway'] = list(current['gateway'])  # [] stays: "no default route" until a gateway is given
    return new


def _first_host(network):
    return next(iter(network.hosts()), None) if network.num_addresses > 2 else None


def resolve_gateways(section, explicit, host):
    """Pick one gateway per address family present; explicit ones must lie inside a guest subnet."""
    ifaces = [_iface(a) for a in section['addresses']]
    own = {i.ip for i in ifaces}
    wanted = [_ip(g) for g in section.get('gateway') or []]
    out = []
    if not wanted and section.get('gateway') == []:  # gateway: [] -- no default route at all
        return section
    for version in (4, 6):
        nets = [i.network for i in ifaces if i.version == version]
        chosen = [g for g in wanted if g.version == version]
        if not nets:
            if chosen and explicit:
                raise VServerError('gateway %s is outside every guest subnet (the guest has no IPv%d address)'
                                   % (chosen[0], version), 'gateway')
            continue
        if chosen:
            gw = chosen[0]
            if not any(gw in net for net in nets):
                if explicit:
                    raise VServerError('gateway %s is outside every guest subnet (%s); give an address inside one'
                                       % (gw, ', '.join(map(str, nets))), 'gateway')
                gw = None
            elif gw in own:
                raise VServerError('gateway %s is one of the guest\'s own addresses' % gw, 'gateway')
            if gw is not None:
                out.append(str(gw))
                continue
        if section['mode'] != 'bridge':
            continue
        bridge_ips = [a['iface'] for a in host.addrs_of(section['bridge'])]
        found = [b.ip for b in bridge_ips for net in nets if b.ip in net and b.ip not in own]
        if found:
            out.append(str(found[0]))
            continue
        first = _first_host(nets[0])
        if first is not None and first not in own:
            out.append(str(first))
    if out:
        section['gateway'] = out
    else:
        section.pop('gateway', None)
    return section


def host_ifname(bridge, xid):
    """The host end of a guest's veth: '<bridge>-<xid>', cut to 15 characters."""
    suffix = '-%d' % int(xid)
    return bridge[:15 - len(suffix)] + suffix


def vlan_ifname(parent, vlan):
    suffix = '.%d' % vlan
    return parent[:15 - len(suffix)] + suffix


def vlan_supported(proc='/proc', sys='/sys', modules='/lib/modules'):
    """802.1Q is usable if loaded, or loadable (built-in or module) for this kernel."""
    if os.path.exists(os.path.join(proc, 'net/vlan')) or os.path.exists(os.path.join(sys, 'module/8021q')):
        return True
    base = os.path.join(modules, os.uname().release)
    try:
        with open(os.path.join(base, 'modules.builtin')) as handle:
            if any(line.strip().endswith('/8021q.ko') for line in handle):
                return True
    except OSError:
        pass
    try:
        with open(os.path.join(base, 'modules.dep')) as handle:
            return any('/8021q.ko' in line.split(':')[0] for line in handle)
    except OSError:
        return False


# --- rtnetlink reads (stdlib only, in process) ------------------------------------------------------------

RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETRULE = 18, 22, 26, 34
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 1
IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 3, 4, 5, 10, 18
IFLA_INFO_KIND = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN = 254


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


def parse_link(payload):
    _family, _type, index, flags, _change = struct.unpack_from('=BxHiII', payload, 0)
    attrs = parse_attrs(payload, 16)
    kind = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _cstr(info[IFLA_INFO_KIND])

    def u32(key):
        return struct.unpack('=I', attrs[key][:4])[0] if key in attrs else None
    return {'index': index, 'name': _cstr(attrs.get(IFLA_IFNAME, b'')), 'up': bool(flags & IFF_UP),
            'mtu': u32(IFLA_MTU), 'link': u32(IFLA_LINK), 'master': u32(IFLA_MASTER), 'kind': kind}


def parse_addr(payload):
    family, prefix, _flags, scope, index = struct.unpack_from('=BBBBI', payload, 0)
    attrs = parse_attrs(payload, 8)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None:
        return None
    ip = socket.inet_ntop(family, raw)
    return {'index': index, 'iface': _iface('%s/%d' % (ip, prefix)), 'scope': scope}


def parse_route(payload):
    family, dst_len, _src, _tos, table, _proto, _scope, _type, _flags = struct.unpack_from('=BBBBBBBBI', payload, 0)
    attrs = parse_attrs(payload, 12)
    if RTA_TABLE in attrs:
        table = struct.unpack('=I', attrs[RTA_TABLE][:4])[0]
    return {'family': family, 'dst_len': dst_len, 'table': table,
            'oif': struct.unpack('=I', attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else None,
            'gateway': socket.inet_ntop(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None,
            'dst': socket.inet_ntop(family, attrs[RTA_DST]) if RTA_DST in attrs else None}


FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_TABLE = 2, 3, 6, 15
FIB_RULE_INVERT, FIB_RULE_FIND_SADDR = 2, 0x10000


def parse_rule(payload):
    family, dst_len, src_len, _tos, table, _res1, _res2, action, flags = struct.unpack_from('=BBBBBBBBI', payload, 0)
    attrs = parse_attrs(payload, 12)
    if FRA_TABLE in attrs:
        table = struct.unpack('=I', attrs[FRA_TABLE][:4])[0]
    return {'family': family, 'src_len': src_len, 'table': table, 'action': action,
            'priority': struct.unpack('=I', attrs[FRA_PRIORITY][:4])[0] if FRA_PRIORITY in attrs else 0,
            'src': _ip(socket.inet_ntop(family, attrs[FRA_SRC])) if FRA_SRC in attrs else None,
            'dst_len': dst_len, 'invert': bool(flags & FIB_RULE_INVERT),
            'find_saddr': bool(flags & FIB_RULE_FIND_SADDR),
            'iif': _cstr(attrs[FRA_IIFNAME]) if FRA_IIFNAME in attrs else None}


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
    """Links, addresses and default routes of one network namespace, read over rtnetlink."""

    def __init__(self, netns=None, routes=True):
        with in_netns(netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.seq = 0
        try:
            sock.bind((0, 0))
            self.links = {}
            for kind, payload in self._dump(sock, RTM_GETLINK, struct.pack('=BxHiII', 0, 0, 0, 0, 0)):
                link = parse_link(payload)
                self.links[link['name']] = link
            self.addrs = [a for a in (parse_addr(p) for _kind, p in
                                      self._dump(sock, RTM_GETADDR, struct.pack('=BBBBI', 0, 0, 0, 0, 0))) if a]
            self.routes = [parse_route(p) for _kind, p in
                           self._dump(sock, RTM_GETROUTE, struct.pack('=BBBBBBBBI', 0, 0, 0, 0, 0, 0, 0, 0, 0))
                           ] if routes else []
            self.rules6 = [parse_rule(p) for _kind, p in self._dump(
                sock, RTM_GETRULE, struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0))
            ] if routes else []
        finally:
            sock.close()
        self.by_index = {link['index']: link for link in self.links.values()}
        self.ipv6_off = read_ipv6_off(netns, self.links) if netns is not None and routes else {}

    def _dump(self, sock, msg_type, body):
        self.seq += 1
        sock.send(struct.pack('=IHHII', 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0) + body)
        out = []
        while True:
            data = sock.recv(1 << 16)
            for kind, payload in parse_messages(data):
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from('=i', payload, 0)[0]
                    if code:
                        raise OSError(-code, 'rtnetlink dump: %s' % os.strerror(-code))
                    return out
                if kind == msg_type - 2:  # RTM_NEW* answers RTM_GET*
                    out.append((kind, payload))

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


# --- planning -------------------------------------------------------------------------------------------


class Plan:
    def __init__(self):
        self.guest_pre = []     # ip -batch lines in the guest namespace, before the host side
        self.host = []          # ip -batch lines in the host namespace
        self.guest = []         # ip -batch lines in the guest namespace
        self.guest6 = []        # ip -6 -batch lines in the guest namespace (source address policy rules)
        self.ipv6 = None        # (interface, off): IPv6 turned on before the guest lines, or off after them
        self.actions = []       # human readable
        self.created = []       # host links created (rolled back on failure)
        self.bridge_addrs = []  # (cidr, bridge) added to an existing bridge (rolled back on failure)


def _family_flag(iface, mode):
    # On a host bridge the module knows every address (config), so IPv6 addresses are usable at once; on a LAN
    # (macvlan) duplicate address detection runs as usual.
    return ' nodad' if iface.version == 6 and mode == 'bridge' else ''


def plan_live(section, xid, pid, host, guest, previous=None):
    """What must change so the running guest (netns state ``guest``) matches ``section``.

    ``previous`` is the section it had, so an interface given a new name does not stay behind."""
    plan = Plan()
    ifname = (section or {}).get('interface') or DEFAULT_INTERFACE
    have = guest.links.get(ifname)
    old = (previous or {}).get('interface') or DEFAULT_INTERFACE
    if section and old != ifname and old in guest.links:
        plan.guest_pre.append('link del %s' % old)
        plan.actions.append('remove interface %s from the guest' % old)
    if not section:
        if have is not None:
            plan.guest.append('link del %s' % ifname)
            plan.actions.append('remove interface %s from the guest' % ifname)
        plan_source_rules(plan, [], guest)
        return plan
    mode = section['mode']
    mtu = section.get('mtu')
    ok = False
    host_end = None
    if mode == 'bridge':
        bridge = section['bridge']
        host_end = host_ifname(bridge, xid)
        hl = host.links.get(host_end)
        br = host.links.get(bridge)
        if have is not None and have['kind'] == 'veth' and hl is not None and hl['kind'] == 'veth' \
                and hl['link'] == have['index'] and br is not None and hl['master'] == br['index']:
            ok = True
        if br is None:
            plan.host += ['link add %s type bridge' % bridge, 'link set %s up' % bridge]
            plan.created.append(bridge)
            plan.actions.append('create bridge %s' % bridge)
        elif br['kind'] != 'bridge':
            raise VServerError('bridge %s exists on the host and is not a bridge (%s)' % (bridge, br['kind']),
                               'bridge')
        elif not br['up']:
            plan.host.append('link set %s up' % bridge)
            plan.actions.append('set bridge %s up' % bridge)
        bridge_ips = [a['iface'] for a in host.addrs_of(bridge)]
        for gw in section.get('gateway') or []:
            gw = _ip(gw)
            nets = [_iface(a).network for a in section['addresses']
                    if _iface(a).network.version == gw.version and gw in _iface(a).network]
            if not nets or any(b.ip in nets[0] for b in bridge_ips):
                continue  # the bridge already has an address in this subnet
            holder = host.holder(gw)
            if holder:
                continue
            plan.host.append('addr add %s/%d dev %s%s' % (gw, nets[0].prefixlen, bridge,
                                                          ' nodad' if gw.version == 6 else ''))
            if br is not None:
                plan.bridge_addrs.append(('%s/%d' % (gw, nets[0].prefixlen), bridge))
            plan.actions.append('add gateway address %s/%d to bridge %s' % (gw, nets[0].prefixlen, bridge))
        if section.get('vlan'):
            uplink = vlan_ifname(section['parent'], section['vlan'])
            up = host.links.get(uplink)
            if up is None:
                # a VLAN link cannot come up while its parent is down (ENETDOWN): the parent comes up first
                plan.host += ['link add link %s name %s type vlan id %d' % (section['parent'], uplink, section['vlan']),
                              'link set %s master %s' % (uplink, bridge), 'link set %s up' % section['parent'],
                              'link set %s up' % uplink]
                plan.created.append(uplink)
                plan.actions.append('create VLAN %d uplink %s on bridge %s' % (section['vlan'], uplink, bridge))
            elif br is None or up['master'] != br['index']:
                plan.host.append('link set %s master %s' % (uplink, bridge))
                plan.actions.append('attach %s to bridge %s' % (uplink, bridge))
    else:
        parent = section['parent']
        if section.get('vlan'):
            lower = vlan_ifname(parent, section['vlan'])
            if lower not in host.links:
                plan.host += ['link add link %s name %s type vlan id %d' % (parent, lower, section['vlan']),
                              'link set %s up' % parent, 'link set %s up' % lower]
                plan.created.append(lower)
                plan.actions.append('create VLAN %d sub-interface %s on %s' % (section['vlan'], lower, parent))
        else:
            lower = parent
        low = host.links.get(lower)
        if have is not None and have['kind'] == 'macvlan' and low is not None and have['link'] == low['index']:
            ok = True
    fresh = not ok
    if fresh:
        if have is not None:
            plan.guest_pre.append('link del %s' % ifname)
            plan.actions.append('replace interface %s in the guest' % ifname)
        mtu_arg = ' mtu %d' % mtu if mtu else ''
        if mode == 'bridge':
            stale = host.links.get(host_end)
            doomed = {guest.links[n]['index'] for n in (ifname, old) if n in guest.links}  # deleted first
            if stale is not None and stale.get('link') not in doomed:
                raise VServerError('host interface %s (for guest xid %d on bridge %s) already exists and belongs '
                                   'to something else; remove it or use another bridge' % (host_end, xid, bridge),
                                   'bridge')
            plan.host += ['link add %s%s type veth peer name %s%s netns %d' % (host_end, mtu_arg, ifname, mtu_arg, pid),
                          'link set %s addrgenmode none' % host_end,
                          'link set %s master %s' % (host_end, section['bridge']),
                          'link set %s up' % host_end]
            plan.created.append(host_end)
            plan.actions.append('create veth %s (host, on %s) <-> %s (guest)' % (host_end, section['bridge'], ifname))
        else:
            plan.host.append('link add link %s name %s%s netns %d type macvlan mode bridge'
                             % (lower, ifname, mtu_arg, pid))
            plan.actions.append('create macvlan %s on %s in the guest' % (ifname, lower))
        plan.guest.append('link set %s addrgenmode none' % ifname)
        current = []
        up = False
        gws = {}
    else:
        if mtu and have['mtu'] != mtu:
            plan.guest.append('link set %s mtu %d' % (ifname, mtu))
            if mode == 'bridge':
                plan.host.append('link set %s mtu %d' % (host_end, mtu))
            plan.actions.append('set mtu %d' % mtu)
        current = [a['iface'] for a in guest.addrs_of(ifname) if not a['iface'].ip.is_link_local]
        up = have['up']
        gws = guest.default_gateways(ifname)
        if mode == 'bridge' and not host.links[host_end]['up']:
            plan.host.append('link set %s up' % host_end)
    wanted = [_iface(a) for a in section['addresses']]
    plan_ipv6_switch(plan, ifname, wanted, None if fresh else guest.ipv6_off.get(ifname))
    for iface in current:
        if iface not in wanted:
            plan.guest.append('addr del %s dev %s' % (iface.with_prefixlen, ifname))
            plan.actions.append('remove address %s' % iface.with_prefixlen)
    for iface in wanted:
        if iface not in current:
            plan.guest.append('addr add %s dev %s%s' % (iface.with_prefixlen, ifname, _family_flag(iface, mode)))
            plan.actions.append('add address %s' % iface.with_prefixlen)
    if not up:
        plan.guest.append('link set %s up' % ifname)
    desired_gws = {_ip(g).version: g for g in section.get('gateway') or []}
    for version in (4, 6):
        dst = '0.0.0.0/0' if version == 4 else '::/0'
        want = desired_gws.get(version)
        got = gws.get(version)
        if want and (got is None or _ip(got) != _ip(want)):
            plan.guest.append('route replace %s via %s dev %s' % (dst, want, ifname))
            plan.actions.append('set default route via %s' % want)
        elif not want and got:
            plan.guest.append('route del %s via %s dev %s' % (dst, got, ifname))
            plan.actions.append('remove default route via %s' % got)
    plan_source_rules(plan, wanted, guest)
    return plan


def plan_ipv6_switch(plan, ifname, wanted, off):
    """IPv6 on the guest's link only while it has an IPv6 address (``off``: the link's current setting, None for
    a link created by this plan or one the kernel shows no setting for). Without IPv6 on its link a guest sends
    no IPv6 packet at all, whatever source it binds to; its loopback keeps ::1 (never leaves the namespace)."""
    want_off = not any(i.version == 6 for i in wanted)
    if off is None:
        plan.ipv6 = (ifname, want_off)
    elif off != want_off:
        plan.ipv6 = (ifname, want_off)
        plan.actions.append('turn IPv6 %s on %s' % ('off' if want_off else 'on', ifname))


# IPv6 lets an unprivileged socket send from an address it does not hold (IPV6_FREEBIND); IPv4 does not (the
# route lookup fails without IP_TRANSPARENT). So the guest's namespace gets IPv6 policy rules: traffic from
# each of its own IPv6 addresses uses the main table, anything else from the guest is unreachable. Unbound
# sockets still work: the kernel picks a source address, then looks the route up again with it.
# The kernel's own rule (pref 0: everything looks up the local table) would let any source through to a
# multicast destination (ff00::/8 is a route of the local table): it is replaced by one rule for what the guest
# receives and one for what it sends to anything but multicast; multicast goes out from its own addresses only,
# through one local-table rule per address flagged FIB_RULE_FIND_SADDR (set over rtnetlink; `ip rule` cannot set
# it and does not show it): a socket without a source gets the address the kernel picks on the guest's link
# (without the flag it would pick ::1 for link-scope multicast and be refused).
RULE_LOCAL_IN_PREF, RULE_LOCAL_OUT_PREF, RULE_OWN_LOCAL_PREF, RULE_OWN_PREF, RULE_BLOCK_PREF = 1, 2, 100, 101, 200
FR_ACT_TO_TBL, FR_ACT_UNREACHABLE = 1, 7
RT_TABLE_LOCAL = 255
RTM_NEWRULE, RTM_DELRULE = 32, 33
_SADDR_RULE = re.compile(r'^rule (add|del) from (\S+)/128 lookup local pref %d$' % RULE_OWN_LOCAL_PREF)


def _local_rules(rules):
    """Which of the local-table rules the guest's namespace has: the kernel's, the inbound one, the outbound one."""
    local = [r for r in rules if r['table'] == RT_TABLE_LOCAL and r['action'] == FR_ACT_TO_TBL and not r['src_len']]
    kernel = any(r['priority'] == 0 and not r.get('invert') for r in local)
    inbound = any(r['priority'] == RULE_LOCAL_IN_PREF and r.get('invert') and r.get('iif') == 'lo' for r in local)
    outbound = any(r['priority'] == RULE_LOCAL_OUT_PREF and r.get('invert') and r.get('dst_len') == 8 for r in local)
    return kernel, inbound, outbound


def plan_source_rules(plan, wanted, guest):
    own = {i.ip for i in wanted if i.version == 6}
    have = {r['src'] for r in guest.rules6 if r['priority'] == RULE_OWN_PREF and r['src_len'] == 128}
    have_local = {r['src'] for r in guest.rules6 if r['priority'] == RULE_OWN_LOCAL_PREF and r['src_len'] == 128
                  and r.get('find_saddr')}
    blocked = any(r['priority'] == RULE_BLOCK_PREF and r['action'] == FR_ACT_UNREACHABLE for r in guest.rules6)
    kernel, inbound, outbound = _local_rules(guest.rules6)
    if own:  # the replacements first: local delivery never stops
        if not inbound:
            plan.guest6.append('rule add not iif lo lookup local pref %d' % RULE_LOCAL_IN_PREF)
        if not outbound:
            plan.guest6.append('rule add not to ff00::/8 lookup local pref %d' % RULE_LOCAL_OUT_PREF)
        if kernel:
            plan.guest6.append('rule del pref 0 lookup local')
    for ip in sorted(have_local - own):
        plan.guest6.append('rule del from %s/128 lookup local pref %d' % (ip, RULE_OWN_LOCAL_PREF))
    for ip in sorted(have - own):
        plan.guest6.append('rule del from %s/128 lookup main pref %d' % (ip, RULE_OWN_PREF))
    for ip in sorted(own - have_local):
        plan.guest6.append('rule add from %s/128 lookup local pref %d' % (ip, RULE_OWN_LOCAL_PREF))
    for ip in sorted(own - have):
        plan.guest6.append('rule add from %s/128 lookup main pref %d' % (ip, RULE_OWN_PREF))
    if own and not blocked:
        plan.guest6.append('rule add unreachable pref %d' % RULE_BLOCK_PREF)
    if plan.guest6:
        plan.actions.append('set IPv6 source address rules (%s)' % (', '.join(map(str, sorted(own))) or 'none'))


def _rules6(lines, handle):
    """IPv6 rule lines in order: through `ip -6 -batch`, the per-address local-table rules over rtnetlink."""
    chunk = []
    for line in list(lines) + [None]:
        m = _SADDR_RULE.match(line) if line is not None else None
        if line is not None and not m:
            chunk.append(line)
            continue
        _batch(chunk, handle, family6=True)
        chunk = []
        if m:
            _saddr_rule(m.group(1) == 'add', _ip(m.group(2)), handle, line)


def _saddr_rule(add, ip, handle, line):
    body = (struct.pack('=BBBBBBBBI', socket.AF_INET6, 0, 128, 0, RT_TABLE_LOCAL, 0, 0, FR_ACT_TO_TBL,
                        FIB_RULE_FIND_SADDR)
            + _rta(FRA_PRIORITY, struct.pack('=I', RULE_OWN_LOCAL_PREF)) + _rta(FRA_SRC, ip.packed))
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if add else 0)
    with in_netns(handle):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    with sock:
        sock.bind((0, 0))
        sock.send(struct.pack('=IHHII', 16 + len(body), RTM_NEWRULE if add else RTM_DELRULE, flags, 1, 0) + body)
        while True:
            answers = [p for k, p in parse_messages(sock.recv(1 << 16)) if k == NLMSG_ERROR]
            if answers:
                break
    code = struct.unpack_from('=i', answers[0], 0)[0]
    if code:
        raise VServerError('network change failed: %s: %s' % (line, os.strerror(-code)))


def _batch(lines, handle=None, family6=False):
    if not lines:
        return
    argv = ['ip'] + (['-6'] if family6 else []) + ['-batch', '-']
    if handle:
        argv = ['nsenter', '--net=%s' % handle] + argv
    try:
        K.run(argv, input='\n'.join(lines) + '\n')
    except OSError as exc:
        raise VServerError('network change failed: %s\ncommands: %s' % (exc, '; '.join(lines)))


# The common live change (addresses, default routes, link up on an existing interface) is sent over rtnetlink in
# process: the same requests `ip` would send, without two exec()s. Anything else goes through `ip -batch`.
RTM_NEWLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE = 16, 20, 21, 24, 25
NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 4, 0x100, 0x200, 0x400
IFA_FLAGS, IFA_F_NODAD = 8, 0x02
_SIMPLE = (
    ('addr', re.compile(r'^addr (add|del) (\S+) dev (\S+)( nodad)?$')),
    ('route', re.compile(r'^route (replace|del) (0\.0\.0\.0/0|::/0) via (\S+) dev (\S+)$')),
    ('up', re.compile(r'^link set (\S+) up$')),
)


def _rta(kind, data):
    return struct.pack('=HH', 4 + len(data), kind) + data + b'\0' * (-len(data) % 4)


def _addr_body(family, prefix, flags, raw, index):
    return (struct.pack('=BBBBI', family, prefix, flags, 0, index) + _rta(IFA_LOCAL, raw) + _rta(IFA_ADDRESS, raw)
            + _rta(IFA_FLAGS, struct.pack('=I', flags)))


def _route_body(head, gateway, index):
    return head + _rta(RTA_GATEWAY, gateway) + _rta(RTA_OIF, struct.pack('=I', index))


def _up_body(index):
    return struct.pack('=BxHiII', 0, 0, index, IFF_UP, IFF_UP)


def netlink_request(line):
    """(msg_type, flags, body, device) for a simple `ip` line, or None if it is not one."""
    for kind, regex in _SIMPLE:
        m = regex.match(line)
        if not m:
            continue
        if kind == 'addr':
            iface = _iface(m.group(2))
            family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
            raw = iface.ip.packed
            flags = IFA_F_NODAD if m.group(4) else 0
            body = functools.partial(_addr_body, family, iface.network.prefixlen, flags, raw)
            if m.group(1) == 'add':
                return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, m.group(3)
            return RTM_DELADDR, 0, body, m.group(3)
        if kind == 'route':
            gw = _ip(m.group(3))
            family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
            if m.group(1) == 'replace':
                head = struct.pack('=BBBBBBBBI', family, 0, 0, 0, RT_TABLE_MAIN, 3, 0, 1, 0)  # boot, universe, unicast
                flags = NLM_F_CREATE | NLM_F_REPLACE
                msg = RTM_NEWROUTE
            else:
                head = struct.pack('=BBBBBBBBI', family, 0, 0, 0, RT_TABLE_MAIN, 0, 253, 0, 0)  # scope nowhere
                flags = 0
                msg = RTM_DELROUTE
            body = functools.partial(_route_body, head, gw.packed)
            return msg, flags, body, m.group(4)
        return RTM_NEWLINK, 0, _up_body, m.group(1)
    return None


def _netlink_batch(lines, handle):
    """Send simple changes over rtnetlink inside the namespace at ``handle``; False if a line is not simple."""
    requests = [netlink_request(line) for line in lines]
    if not lines or any(r is None for r in requests):
        return False
    with in_netns(handle):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            indexes = {req[3]: socket.if_nametoindex(req[3]) for req in requests}
        except OSError as exc:
            sock.close()
            raise VServerError('network change failed: %s\ncommands: %s' % (exc, '; '.join(lines)))
    with sock:
        sock.bind((0, 0))
        for seq, (line, (msg, flags, body, dev)) in enumerate(zip(lines, requests), start=1):
            payload = body(indexes[dev])
            sock.send(struct.pack('=IHHII', 16 + len(payload), msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0)
                      + payload)
            while True:
                answers = [(k, p) for k, p in parse_messages(sock.recv(1 << 16)) if k == NLMSG_ERROR]
                if answers:
                    break
            code = struct.unpack_from('=i', answers[0][1], 0)[0]
            if code:
                raise VServerError('network change failed: %s: %s\ncommands: %s'
                                   % (line, os.strerror(-code), '; '.join(lines)))
    return True


def execute(plan, handle):
    """Run a plan: host side first (bridge, veth/macvlan), then the guest side. Rolls back created host links."""
    try:
        _batch(plan.guest_pre, handle)
        _batch(plan.host)
        if plan.ipv6 and not plan.ipv6[1]:
            set_ipv6_off(handle, plan.ipv6[0], False)  # before its IPv6 addresses are added
        if plan.guest and (plan.host or not _netlink_batch(plan.guest, handle)):
            _batch(plan.guest, handle)
        if plan.ipv6 and plan.ipv6[1]:
            set_ipv6_off(handle, plan.ipv6[0], True)   # after its IPv6 addresses are removed
        _rules6(plan.guest6, handle)
    except BaseException:
        for name in reversed(plan.created):
            try:
                K.run(['ip', 'link', 'del', name], check=False)
            except Exception:
                pass
        for cidr, bridge in plan.bridge_addrs:
            try:
                K.run(['ip', 'addr', 'del', cidr, 'dev', bridge], check=False)
            except Exception:
                pass
        raise


# --- host checks ----------------------------------------------------------------------------------------


def check_conflicts(paths, name, section, host):
    """Refuse addresses held by another guest (config) or by the host; parents that do not exist."""
    others = {}
    for other, doc in _config.load_all(paths).items():
        if other == name:
            continue
        for addr in (doc.get('network') or {}).get('addresses') or []:
            others[_iface(addr).ip] = other
    for addr in section['addresses']:
        ip = _iface(addr).ip
        if ip in others:
            raise VServerError('address %s is already held by guest %s' % (ip, others[ip]), 'address')
        holder = host.holder(ip)
        if holder:
            raise VServerError('address %s is already held by the host (interface %s)' % (ip, holder), 'address')
    for gw in section.get('gateway') or []:
        if _ip(gw) in others:
            raise VServerError('gateway %s is the address of guest %s' % (gw, others[_ip(gw)]),
                               'gateway')
    parent = section.get('parent')
    if parent and parent not in host.links:
        raise VServerError('parent device %s does not exist on the host (existing: %s)'
                           % (parent, ', '.join(sorted(host.links))), 'parent')
    if parent and parent == 'lo':
        raise VServerError('parent must be a real host device, not lo', 'parent')
    if section.get('vlan') and vlan_ifname(parent, section['vlan']) not in host.links and not vlan_supported():
        raise VServerError('vlan %d needs 802.1Q support (the 8021q kernel module), which this kernel (%s) does '
                           'not have' % (section['vlan'], os.uname().release), 'vlan')
    if section['mode'] == 'bridge':
        br = host.links.get(section['bridge'])
        if br is not None and br['kind'] != 'bridge':
            raise VServerError('bridge %s exists on the host and is not a bridge (%s)' % (section['bridge'], br['kind']),
                               'bridge')


def _sysctl(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def forwarding(section, host, proc='/proc'):
    """Whether the host must forward for the guest to reach beyond its subnet, per family (never turned on here)."""
    out = {}
    if not section or section['mode'] != 'bridge':
        return out
    bridge_ips = [a['iface'] for a in host.addrs_of(section['bridge'])]
    for gw in section.get('gateway') or []:
        ip = _ip(gw)
        nets = [_iface(a).network for a in section['addresses']]
        nets = [n for n in nets if n.version == ip.version and ip in n]
        on_host = host.holder(ip) is not None or not any(b.ip in n for b in bridge_ips for n in nets)
        if not on_host:
            continue  # the gateway is another router on the bridge: the host does not route for the guest
        key = 'ipv4' if ip.version == 4 else 'ipv6'
        path = '%s/sys/net/ipv4/ip_forward' % proc if ip.version == 4 else '%s/sys/net/ipv6/conf/all/forwarding' % proc
        out[key] = _sysctl(path, '0') != '1'
    return out


# --- the manager ----------------------------------------------------------------------------------------


def _live_runtime(paths, name, repair=False, actions=None):
    """``(init pid, netns handle)`` of a running guest, else ``(None, None)``. The handle is checked against
    init's network namespace; a lost one is bound again when ``repair`` (the caller holds the host lock; the
    action goes to ``actions``), else VServerError saying what repairs it."""
    from ansible_collections.vserver.core.plugins.module_utils import _runtime  # late: _runtime imports us
    rt = _runtime.Runtime(paths, name)
    pid, handle = rt.netns_handle(repair)
    if rt.repaired and actions is not None:
        actions.append('repair netns handle')
    return pid, handle


def live_addresses(handle, interface=DEFAULT_INTERFACE):
    """Addresses (CIDR) on the guest's interface as the kernel sees them."""
    state = NetState(handle, routes=False)
    return [a['iface'].with_prefixlen for a in state.addrs_of(interface) if not a['iface'].ip.is_link_local]


def ensure(paths, params, check_mode=False):
    """Bring a guest's network section (and a running guest's interface) to the requested state."""
    opts = validate(params)
    name = opts['name']
    with HostLock(paths):
        doc = _config.load(paths, name)
        if doc is None:
            raise VServerError('guest %s has no config; create it with vserver.core.context first' % name, 'name')
        current = doc.get('network') or None
        host = NetState(routes=False)
        section = desired(current, opts)
        if section is not None:
            resolve_gateways(section, opts['gateway'] is not None, host)
            check_conflicts(paths, name, section, host)
        actions = []
        pid, handle = _live_runtime(paths, name, repair=not check_mode, actions=actions)
        plan = None
        if pid:
            guest = NetState(handle)
            host = settle(section, doc.get('xid') or 0, host, guest)
            plan = plan_live(section, doc.get('xid') or 0, pid, host, guest, current)
            actions += plan.actions
        config_changed = _section_view(section) != _section_view(current)
        if config_changed:
            actions.insert(0, 'update config' if section and current else
                           ('remove network config' if not section else 'create network config'))
        result = {'changed': bool(actions), 'actions': actions, 'running': bool(pid),
                  'restart_required': False, 'network': _section_view(section),
                  'diff': {'before': _section_view(current), 'after': _section_view(section)}}
        result['forwarding_needed'] = forwarding(section, host)
        needed = sorted(k for k, v in result['forwarding_needed'].items() if v)
        if needed and actions:
            result['warnings'] = ['guest %s reaches only its own subnet and the host: its gateway is this host, '
                                  'which does not forward %s (left unchanged; the host role\'s host_ip_forward '
                                  'turns forwarding on)' % (name, ' and '.join(needed))]
        if not check_mode and actions:
            # The guest's namespace first, then the config; a config that cannot be saved undoes the live change
            # (docs/network.md, "Live changes and the config"). A run killed between the two leaves the kernel
            # ahead of the config: the next run plans against the kernel and only saves the config.
            if plan is not None:
                try:
                    execute(plan, handle)
                except BaseException:
                    _undo_live(plan, current, section, doc, pid, handle)
                    raise
            if config_changed:
                new = dict(doc)
                if section:
                    new['network'] = section
                else:
                    new.pop('network', None)
                try:
                    _config.save(paths, new)
                except BaseException as exc:
                    failed = _undo_live(plan, current, section, doc, pid, handle) if plan is not None else None
                    if not isinstance(exc, Exception):
                        raise
                    raise VServerError('address: saving the config of guest %s failed (%s); %s'
                                       % (name, exc, _undo_outcome(plan, failed))) from exc
        if pid:
            result['live_addresses'] = live_addresses(handle, (section or current or {}).get('interface')
                                                      or DEFAULT_INTERFACE)
        return result


def _undo_live(plan, current, section, doc, pid, handle):
    """Bring a running guest's network back to ``current`` after ``plan`` ran (or failed half-way): the guest side
    planned against the kernel again, then the host links and bridge addresses the plan created are removed.
    Returns None, or the error that kept the guest side from being undone."""
    error = None
    try:
        execute(plan_live(current, doc.get('xid') or 0, pid, NetState(), NetState(handle), section), handle)
    except Exception as exc:  # reported by the caller; the created host links are still removed below
        error = exc
    for link in reversed(plan.created):
        K.run(['ip', 'link', 'del', link], check=False)
    for cidr, bridge in plan.bridge_addrs:
        K.run(['ip', 'addr', 'del', cidr, 'dev', bridge], check=False)
    return error


def _undo_outcome(plan, error):
    if plan is None or not plan.actions:
        return 'nothing was changed on the guest'
    if error is not None:
        return ('undoing the live change failed (%s): the guest\'s network differs from its config until this task '
                'runs again (it plans against the kernel) or the guest restarts' % error)
    return 'the live change was undone: the guest keeps its previous network'


# --- hooks and display ----------------------------------------------------------------------------------


def settle(section, xid, host, guest, timeout=5.0):
    """The host state once a stale host end of this guest's veth is gone.

    When a guest stops, the kernel deletes its veth pair with its network namespace, asynchronously. A guest
    restarted at once may find its old host end (``BRIDGE-XID``) still there: wait for it (bounded)."""
    if not section or section.get('mode') != 'bridge':
        return host
    name = host_ifname(section['bridge'], xid)
    deadline = time.monotonic() + timeout
    while True:
        link = host.links.get(name)
        mine = guest.links.get(section.get('interface') or DEFAULT_INTERFACE)
        if link is None or (mine is not None and link.get('link') == mine['index']) or time.monotonic() > deadline:
            return host
        time.sleep(0.02)
        host = NetState(routes=False)


def apply_on_start(paths, doc, runtime):
    """``started`` hook: give a freshly started guest its interface, addresses and routes from its config."""
    section = doc.get('network')
    if not section or not section.get('addresses'):
        return
    pid, handle = runtime.netns_handle(repair=True)  # start holds the host lock
    if not pid:
        return
    host = NetState()
    for addr in section['addresses']:
        holder = host.holder(_iface(addr).ip)
        if holder:
            raise VServerError('address %s of guest %s is held by the host (interface %s)'
                               % (addr, doc['name'], holder), 'address')
    if section.get('parent') and section['parent'] not in host.links:
        raise VServerError('parent device %s of guest %s does not exist on the host' % (section['parent'], doc['name']),
                           'parent')
    guest = NetState(handle)
    host = settle(section, doc.get('xid') or 0, host, guest)
    execute(plan_live(section, doc.get('xid') or 0, pid, host, guest), handle)


def netns_defaults(doc):
    """``netns`` hook, in the guest's new namespace: no IPv6 autoconfiguration (SLAAC, RA, link-local),
    so the guest holds only the addresses it was given; IPv6 off on every link made later (the guest's
    interface gets it back when it has an IPv6 address). The loopback, made with the namespace, keeps ::1."""
    for key, value, scopes in (('addr_gen_mode', '1', ('default', 'all')), ('accept_ra', '0', ('default', 'all')),
                               ('autoconf', '0', ('default', 'all')), ('disable_ipv6', '1', ('default',))):
        for scope in scopes:
            path = '/proc/sys/net/ipv6/conf/%s/%s' % (scope, key)
            try:
                with open(path, 'w') as handle:
                    handle.write(value)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.EROFS):
                    raise


def addresses(doc):
    """The addresses a guest is configured with (CIDR strings), for listings."""
    return list((doc.get('network') or {}).get('addresses') or [])


def describe(paths, doc):
    """Network facts of one guest for context_info: config plus what the kernel shows when running."""
    section = doc.get('network') or {}
    out = dict(_section_view(section))
    out.setdefault('addresses', [])
    try:
        pid, handle = _live_runtime(paths, doc['name'])
    except VServerError as exc:  # a lost netns handle: say so, a listing repairs nothing
        out['live_addresses'] = None
        out['netns_error'] = str(exc)
        return out
    if pid:
        try:
            out['live_addresses'] = live_addresses(handle, section.get('interface') or DEFAULT_INTERFACE)
        except OSError:
            out['live_addresses'] = None
    return out
