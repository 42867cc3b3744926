# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: guest networking (VServer's network context on a network namespace), floor 3.

Each guest gets one interface (default ``eth0``) in its own network namespace carrying the addresses it was
given: the guest end of a veth pair whose host end is a port of a host bridge (``bridge`` mode), or a macvlan
on a host device (``macvlan`` mode), optionally on an 802.1Q sub-interface (``vlan``). Guests have no
CAP_NET_ADMIN, so everything is configured from the host.

Config lives in the guest document's ``network`` section::

    {"mode": "bridge", "bridge": "vsbr0", "interface": "eth0",
     "addresses": ["10.8.0.2/24", "fd00:8::2/64"], "gateway": ["10.8.0.1", "fd00:8::1"],
     "mtu": null, "vlan": null, "parent": null}

This file is the concern: the options (``ARGUMENT_SPEC``, ``DEFAULTS``), their validation, the section they make
(``desired``, ``resolve_gateways``) and the host checks. ``_netns_plan`` turns a section into typed operations
against what the kernel shows; ``_netlink`` (floor 2) carries them to the kernel. The runtime calls two steps at
every start: ``on_netns`` in the guest's new namespace, ``on_started`` once init runs. The manager behind the
``address`` module is ``_mgr_address`` (floor 6): it reads the guests' configs (``_config``, floor 4) and passes
them in (``check_conflicts``); this floor never reads a config.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from typing import Any, Dict, List, Optional

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError, check_name
from ansible_collections.vserver.core.plugins.module_utils._netlink import (
    NetState, cached_iface as _iface, cached_ip as _ip)
from ansible_collections.vserver.core.plugins.module_utils._netns_plan import (
    DEFAULT_BRIDGE, DEFAULT_INTERFACE, execute, host_ifname, plan_live, settle, vlan_ifname)

# What other files use (host_ifname and NetState are the plan's and the mechanism's, named here for callers).
__all__ = ['ARGUMENT_SPEC', 'DEFAULTS', 'DEFAULT_BRIDGE', 'DEFAULT_INTERFACE', 'MODES', 'SECTION_KEYS', 'STATES',
           'NetState', 'addresses', 'check_conflicts', 'desired', 'forwarding',
           'host_ifname', 'live_addresses', 'on_netns', 'on_started', 'parse_address',
           'parse_gateway', 'resolve_gateways', 'section_view', 'validate', 'vlan_ifname', 'vlan_supported']

MODES = ('bridge', 'macvlan')
STATES = ('present', 'absent')
IFNAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$')
SECTION_KEYS = ('mode', 'bridge', 'parent', 'vlan', 'mtu', 'interface', 'addresses', 'gateway')

# The address module's options (without the host path options every module shares): the module, the guests
# manager and the CLI derive theirs from here.
ARGUMENT_SPEC = dict(
    name=dict(type='str', required=True),
    address=dict(type='str'),
    addresses=dict(type='list', elements='str'),
    state=dict(type='str', default='present', choices=list(STATES)),
    exclusive=dict(type='bool', default=False),
    mode=dict(type='str', choices=list(MODES)),
    bridge=dict(type='str'),
    parent=dict(type='str'),
    vlan=dict(type='int'),
    gateway=dict(type='list', elements='str'),
    mtu=dict(type='int'),
    interface=dict(type='str'),
)
# What a task that does not give an option means (the guests manager fills a guest entry with these).
DEFAULTS = {key: spec.get('default') for key, spec in ARGUMENT_SPEC.items() if key != 'name'}

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


def validate(params: Dict[str, Any]) -> Dict[str, Any]:
    """Check every option before anything is touched; return normalized options."""
    opts = {'name': check_name(params.get('name'))}
    state = params.get('state') or DEFAULTS['state']
    if state not in STATES:
        raise VServerError('state must be present or absent (got %r)' % (state,), 'state')
    opts['state'] = state
    opts['addresses'] = _validate_addresses(params)
    mode = params.get('mode')
    if mode is not None and mode not in MODES:
        raise VServerError('mode must be bridge or macvlan (got %r)' % (mode,), 'mode')
    opts['mode'] = mode
    for key in ('bridge', 'parent', 'interface'):
        opts[key] = check_ifname(params[key], key) if params.get(key) is not None else None
    if opts['interface'] == 'lo':
        raise VServerError('interface must not be lo (the guest keeps its own loopback)', 'interface')
    opts['vlan'] = _int_in(params.get('vlan'), 1, 4094, 'vlan', 'vlan must be an 802.1Q VLAN id from 1 to 4094')
    opts['mtu'] = _int_in(params.get('mtu'), 68, 65535, 'mtu', 'mtu must be an integer from 68 to 65535')
    opts['gateway'] = _validate_gateways(params.get('gateway'))
    opts['exclusive'] = bool(params.get('exclusive'))
    return opts


def _validate_addresses(params):
    """``address`` then ``addresses``, parsed, without repeats; one address with two prefixes is refused."""
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
    return addresses


def _int_in(value, low, high, field, message):
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).isdigit() or not low <= int(value) <= high:
        raise VServerError('%s (got %r)' % (message, value), field)
    return int(value)


def _validate_gateways(gateways):
    """None (not given), or at most one gateway per family ([]: no default route)."""
    if isinstance(gateways, str):
        gateways = [g for g in gateways.split(',') if g.strip()]
    parsed = [parse_gateway(g) for g in gateways or []]
    if len({g.version for g in parsed}) != len(parsed):
        raise VServerError('gateway takes at most one IPv4 and one IPv6 address (got %s)'
                           % ', '.join(map(str, parsed)), 'gateway')
    return parsed if gateways is not None else None


def section_view(section: Optional[dict]) -> Dict[str, Any]:
    """The keys of a ``network`` section that are set (the module's ``network`` and diff)."""
    if not section:
        return {}
    return {key: section.get(key) for key in SECTION_KEYS if section.get(key) is not None}


def desired(current: Optional[dict], opts: Dict[str, Any]) -> Optional[dict]:
    """The new ``network`` section from the current one and validated options (None: no networking).

    Gateways are resolved later (``resolve_gateways``) because defaults depend on the host's bridge."""
    current = dict(current or {})
    have = _desired_addresses([_iface(a) for a in current.get('addresses') or []], opts)
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
    _check_mode_rules(new, have)
    if opts['gateway'] is not None:
        new['gateway'] = [str(g) for g in opts['gateway']]
    elif current.get('gateway') is not None:
        new['gateway'] = list(current['gateway'])  # [] stays: "no default route" until a gateway is given
    return new


def _desired_addresses(have, opts):
    """The address list after ``state``/``exclusive``: given ones replace a stored one of the same IP."""
    if opts['state'] == 'absent':
        if not opts['addresses']:
            return []
        drop = {i.ip for i in opts['addresses']}
        return [i for i in have if i.ip not in drop]
    if opts['exclusive']:
        return list(opts['addresses'])
    for iface in opts['addresses']:
        have = [i for i in have if i.ip != iface.ip] + [iface]
    return have


def _check_mode_rules(new, have):
    mode = new['mode']
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


def _first_host(network):
    return next(iter(network.hosts()), None) if network.num_addresses > 2 else None


def resolve_gateways(section: dict, explicit: bool, host: NetState) -> dict:
    """Pick one gateway per address family present; explicit ones must lie inside a guest subnet."""
    ifaces = [_iface(a) for a in section['addresses']]
    own = {i.ip for i in ifaces}
    wanted = [_ip(g) for g in section.get('gateway') or []]
    if not wanted and section.get('gateway') == []:  # gateway: [] -- no default route at all
        return section
    out = []
    for version in (4, 6):
        nets = [i.network for i in ifaces if i.version == version]
        gw = _chosen_gateway(version, nets, [g for g in wanted if g.version == version], own, explicit)
        if gw is None and nets and section['mode'] == 'bridge':
            gw = _default_gateway(section['bridge'], nets, own, host)
        if gw is not None:
            out.append(str(gw))
    if out:
        section['gateway'] = out
    else:
        section.pop('gateway', None)
    return section


def _chosen_gateway(version, nets, chosen, own, explicit):
    """The gateway given (``explicit``) or stored for one family, if it fits the guest's subnets of that family; a
    stored one that no longer fits is dropped (None: the default applies), a given one is refused."""
    if not chosen:
        return None
    gw = chosen[0]
    if not nets:
        if explicit:
            raise VServerError('gateway %s is outside every guest subnet (the guest has no IPv%d address)'
                               % (gw, version), 'gateway')
        return None
    if not any(gw in net for net in nets):
        if explicit:
            raise VServerError('gateway %s is outside every guest subnet (%s); give an address inside one'
                               % (gw, ', '.join(map(str, nets))), 'gateway')
        return None
    if gw in own:
        raise VServerError('gateway %s is one of the guest\'s own addresses' % gw, 'gateway')
    return gw


def _default_gateway(bridge, nets, own, host):
    """Bridge mode: the bridge's address in a guest subnet, else the first host address of the first subnet."""
    found = [a['iface'].ip for a in host.addrs_of(bridge) for net in nets
             if a['iface'].ip in net and a['iface'].ip not in own]
    if found:
        return found[0]
    first = _first_host(nets[0])
    return first if first is not None and first not in own else None


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


def check_conflicts(name: str, section: dict, host: NetState, others: Dict[str, dict]) -> None:
    """Refuse addresses held by another guest (config) or by the host; parents that do not exist.

    ``others``: the guests' config documents by name (the manager reads them; ``name``'s own is skipped)."""
    held = {}
    for other, doc in others.items():
        if other == name:
            continue
        for addr in (doc.get('network') or {}).get('addresses') or []:
            held[_iface(addr).ip] = other
    for addr in section['addresses']:
        ip = _iface(addr).ip
        if ip in held:
            raise VServerError('address %s is already held by guest %s' % (ip, held[ip]), 'address')
        holder = host.holder(ip)
        if holder:
            raise VServerError('address %s is already held by the host (interface %s)' % (ip, holder), 'address')
    for gw in section.get('gateway') or []:
        if _ip(gw) in held:
            raise VServerError('gateway %s is the address of guest %s' % (gw, held[_ip(gw)]),
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
            raise VServerError('bridge %s exists on the host and is not a bridge (%s)'
                               % (section['bridge'], br['kind']), 'bridge')


def _sysctl(path, default=None):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def forwarding(section: Optional[dict], host: NetState, proc: str = '/proc') -> Dict[str, bool]:
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


def live_addresses(handle: str, interface: str = DEFAULT_INTERFACE) -> List[str]:
    """Addresses (CIDR) on the guest's interface as the kernel sees them."""
    state = NetState(handle, routes=False)
    return [a['iface'].with_prefixlen for a in state.addrs_of(interface) if not a['iface'].ip.is_link_local]


def addresses(doc: dict) -> List[str]:
    """The addresses a guest is configured with (CIDR strings), for listings."""
    return list((doc.get('network') or {}).get('addresses') or [])


# --- what the runtime calls at every start ----------------------------------------------------------------


def on_netns(doc: dict) -> None:
    """In the guest's new network namespace: no IPv6 autoconfiguration (SLAAC, RA, link-local), so the guest
    holds only the addresses it was given; IPv6 off on every link made later (the guest's interface gets it
    back when it has an IPv6 address). The loopback, made with the namespace, keeps ::1."""
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


def on_started(paths, doc: dict, runtime) -> None:
    """Once the guest's init runs: give it its interface, addresses and routes from its config. ``runtime`` is the
    guest's ``_runtime.Runtime`` (its ``netns_handle(repair=True)``: start holds the host lock)."""
    section = doc.get('network')
    if not section or not section.get('addresses'):
        return
    pid, handle = runtime.netns_handle(repair=True)
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
