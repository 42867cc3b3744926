# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the live plan of a guest's network (floor 3, part of the network concern).

``plan_live`` compares a ``network`` section with what the kernel shows (``_netlink.NetState`` of the host and of
the guest's namespace) and returns a ``Plan``: typed operations (``_netlink.LinkAdd``, ``Addr``...) in the order
they run, grouped by the namespace they run in, plus the sentences reported as ``actions``. ``execute`` carries a
plan to the kernel (``_netlink`` renders each operation once, as an rtnetlink request or an ``ip -batch`` line)
and rolls back the host links it created when a step fails. Nothing here reads the config or the runtime: the
caller passes the guest's init pid and netns handle.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, NamedTuple, Optional

from ansible_collections.vserver.core.plugins.module_utils import _netlink as NL
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._netlink import (
    Addr, DefaultRoute, LinkAdd, LinkDel, LinkSet, NetState, Rule, cached_iface as _iface, cached_ip as _ip)

DEFAULT_BRIDGE = 'vsbr0'
DEFAULT_INTERFACE = 'eth0'


def host_ifname(bridge: str, xid: int) -> str:
    """The host end of a guest's veth: '<bridge>-<xid>', cut to 15 characters."""
    suffix = '-%d' % int(xid)
    return bridge[:15 - len(suffix)] + suffix


def vlan_ifname(parent: str, vlan: int) -> str:
    suffix = '.%d' % vlan
    return parent[:15 - len(suffix)] + suffix


class Ipv6Switch(NamedTuple):
    """IPv6 on one link of the guest: turned on before the guest's operations, or off (``off``) after them."""
    dev: str
    off: bool


@dataclasses.dataclass
class Plan:
    guest_pre: List[NL.Op] = dataclasses.field(default_factory=list)  # guest namespace, before the host side
    host: List[NL.Op] = dataclasses.field(default_factory=list)       # host namespace
    guest: List[NL.Op] = dataclasses.field(default_factory=list)      # guest namespace
    guest6: List[Rule] = dataclasses.field(default_factory=list)      # guest namespace: IPv6 source address rules
    ipv6: Optional[Ipv6Switch] = None
    actions: List[str] = dataclasses.field(default_factory=list)      # human readable
    created: List[str] = dataclasses.field(default_factory=list)      # host links created (rolled back on failure)
    bridge_addrs: List[Addr] = dataclasses.field(default_factory=list)  # added to an existing bridge (rolled back)

    def rollback_ops(self) -> List[NL.Op]:
        """What undoes the host side: created links deleted (last first), bridge addresses removed."""
        return ([LinkDel(name) for name in reversed(self.created)]
                + [Addr(False, op.iface, op.dev) for op in self.bridge_addrs])


class Target(NamedTuple):
    """What one plan aims at: the section and where it goes (computed once by ``plan_live``)."""
    section: dict
    xid: int
    pid: int
    ifname: str          # the guest's interface
    old: str             # the name it had (previous section)
    host_end: Optional[str]  # bridge mode: the host end of the veth
    wanted: list         # the addresses, as ipaddress interfaces


# --- planning -----------------------------------------------------------------------------------------------


def plan_live(section, xid, pid, host, guest, previous=None) -> Plan:
    """What must change so the running guest (netns state ``guest``) matches ``section``.

    ``previous`` is the section it had, so an interface given a new name does not stay behind."""
    plan = Plan()
    ifname = (section or {}).get('interface') or DEFAULT_INTERFACE
    old = (previous or {}).get('interface') or DEFAULT_INTERFACE
    if section and old != ifname and old in guest.links:
        plan.guest_pre.append(LinkDel(old))
        plan.actions.append('remove interface %s from the guest' % old)
    if not section:
        if ifname in guest.links:
            plan.guest.append(LinkDel(ifname))
            plan.actions.append('remove interface %s from the guest' % ifname)
        plan_source_rules(plan, [], guest)
        return plan
    bridged = section['mode'] == 'bridge'
    target = Target(section, xid, pid, ifname, old, host_ifname(section['bridge'], xid) if bridged else None,
                    [_iface(a) for a in section['addresses']])
    if bridged:
        ok, lower = _plan_bridge(plan, target, host, guest), None
    else:
        ok, lower = _plan_macvlan_lower(plan, target, host, guest)
    if ok:
        current, up, gws = _plan_existing_link(plan, target, host, guest)
    else:
        _plan_new_link(plan, target, host, guest, lower)
        current, up, gws = [], False, {}
    plan_ipv6_switch(plan, ifname, target.wanted, guest.ipv6_off.get(ifname) if ok else None)
    _plan_addresses(plan, target, current, up)
    _plan_default_routes(plan, target, gws)
    plan_source_rules(plan, target.wanted, guest)
    return plan


def _plan_bridge(plan, target, host, guest) -> bool:
    """Bridge mode, host side: the bridge, its gateway addresses, its VLAN uplink. True when the guest's veth is
    already in place (guest end ``ifname``, host end on the bridge)."""
    bridge = target.section['bridge']
    have = guest.links.get(target.ifname)
    hl = host.links.get(target.host_end)
    br = host.links.get(bridge)
    ok = (have is not None and have['kind'] == 'veth' and hl is not None and hl['kind'] == 'veth'
          and hl['link'] == have['index'] and br is not None and hl['master'] == br['index'])
    if br is None:
        plan.host += [LinkAdd('bridge', bridge), LinkSet(bridge, up=True)]
        plan.created.append(bridge)
        plan.actions.append('create bridge %s' % bridge)
    elif br['kind'] != 'bridge':
        raise VServerError('bridge %s exists on the host and is not a bridge (%s)' % (bridge, br['kind']), 'bridge')
    elif not br['up']:
        plan.host.append(LinkSet(bridge, up=True))
        plan.actions.append('set bridge %s up' % bridge)
    _plan_bridge_gateways(plan, target.section, host, br)
    if target.section.get('vlan'):
        _plan_vlan_uplink(plan, target.section, host, br)
    return ok


def _plan_bridge_gateways(plan, section, host, br):
    """The bridge gets each gateway address (with the guest subnet's prefix) it has no address of that subnet for."""
    bridge = section['bridge']
    bridge_ips = [a['iface'] for a in host.addrs_of(bridge)]
    for gw in section.get('gateway') or []:
        gw = _ip(gw)
        nets = [_iface(a).network for a in section['addresses']
                if _iface(a).network.version == gw.version and gw in _iface(a).network]
        if not nets or any(b.ip in nets[0] for b in bridge_ips):
            continue  # the bridge already has an address in this subnet
        if host.holder(gw):
            continue
        op = Addr(True, _iface('%s/%d' % (gw, nets[0].prefixlen)), bridge, nodad=gw.version == 6)
        plan.host.append(op)
        if br is not None:
            plan.bridge_addrs.append(op)
        plan.actions.append('add gateway address %s to bridge %s' % (op.iface.with_prefixlen, bridge))


def _plan_vlan_uplink(plan, section, host, br):
    bridge, parent, vid = section['bridge'], section['parent'], section['vlan']
    uplink = vlan_ifname(parent, vid)
    up = host.links.get(uplink)
    if up is None:
        # a VLAN link cannot come up while its parent is down (ENETDOWN): the parent comes up first
        plan.host += [LinkAdd('vlan', uplink, lower=parent, vid=vid), LinkSet(uplink, master=bridge),
                      LinkSet(parent, up=True), LinkSet(uplink, up=True)]
        plan.created.append(uplink)
        plan.actions.append('create VLAN %d uplink %s on bridge %s' % (vid, uplink, bridge))
    elif br is None or up['master'] != br['index']:
        plan.host.append(LinkSet(uplink, master=bridge))
        plan.actions.append('attach %s to bridge %s' % (uplink, bridge))


def _plan_macvlan_lower(plan, target, host, guest):
    """Macvlan mode, host side: the device the macvlan sits on (a VLAN sub-interface made if missing).
    Returns (the guest's macvlan is already in place, that device)."""
    parent, vid = target.section['parent'], target.section.get('vlan')
    lower = parent
    if vid:
        lower = vlan_ifname(parent, vid)
        if lower not in host.links:
            plan.host += [LinkAdd('vlan', lower, lower=parent, vid=vid), LinkSet(parent, up=True),
                          LinkSet(lower, up=True)]
            plan.created.append(lower)
            plan.actions.append('create VLAN %d sub-interface %s on %s' % (vid, lower, parent))
    have = guest.links.get(target.ifname)
    low = host.links.get(lower)
    return have is not None and have['kind'] == 'macvlan' and low is not None and have['link'] == low['index'], lower


def _plan_new_link(plan, target, host, guest, lower):
    """The guest's interface made anew (a wrong one deleted first): a veth pair or a macvlan, moved into the
    guest's namespace at creation, without IPv6 address generation."""
    ifname, mtu = target.ifname, target.section.get('mtu')
    if ifname in guest.links:
        plan.guest_pre.append(LinkDel(ifname))
        plan.actions.append('replace interface %s in the guest' % ifname)
    if target.host_end is not None:
        bridge, host_end = target.section['bridge'], target.host_end
        stale = host.links.get(host_end)
        doomed = {guest.links[n]['index'] for n in (ifname, target.old) if n in guest.links}  # deleted first
        if stale is not None and stale.get('link') not in doomed:
            raise VServerError('host interface %s (for guest xid %d on bridge %s) already exists and belongs '
                               'to something else; remove it or use another bridge' % (host_end, target.xid, bridge),
                               'bridge')
        plan.host += [LinkAdd('veth', host_end, peer=ifname, pid=target.pid, mtu=mtu),
                      LinkSet(host_end, addrgen_off=True), LinkSet(host_end, master=bridge), LinkSet(host_end, up=True)]
        plan.created.append(host_end)
        plan.actions.append('create veth %s (host, on %s) <-> %s (guest)' % (host_end, bridge, ifname))
    else:
        plan.host.append(LinkAdd('macvlan', ifname, lower=lower, pid=target.pid, mtu=mtu))
        plan.actions.append('create macvlan %s on %s in the guest' % (ifname, lower))
    plan.guest.append(LinkSet(ifname, addrgen_off=True))


def _plan_existing_link(plan, target, host, guest):
    """An interface in place: its MTU (both ends of a veth), its host end up. Returns what the guest side has:
    (addresses, up, default gateways by family)."""
    ifname, mtu = target.ifname, target.section.get('mtu')
    have = guest.links[ifname]
    if mtu and have['mtu'] != mtu:
        plan.guest.append(LinkSet(ifname, mtu=mtu))
        if target.host_end is not None:
            plan.host.append(LinkSet(target.host_end, mtu=mtu))
        plan.actions.append('set mtu %d' % mtu)
    if target.host_end is not None and not host.links[target.host_end]['up']:
        plan.host.append(LinkSet(target.host_end, up=True))
    current = [a['iface'] for a in guest.addrs_of(ifname) if not a['iface'].ip.is_link_local]
    return current, have['up'], guest.default_gateways(ifname)


def _plan_addresses(plan, target, current, up):
    # On a host bridge the module knows every address (config), so IPv6 addresses are usable at once; on a LAN
    # (macvlan) duplicate address detection runs as usual.
    bridged = target.host_end is not None
    for iface in current:
        if iface not in target.wanted:
            plan.guest.append(Addr(False, iface, target.ifname))
            plan.actions.append('remove address %s' % iface.with_prefixlen)
    for iface in target.wanted:
        if iface not in current:
            plan.guest.append(Addr(True, iface, target.ifname, nodad=iface.version == 6 and bridged))
            plan.actions.append('add address %s' % iface.with_prefixlen)
    if not up:
        plan.guest.append(LinkSet(target.ifname, up=True))


def _plan_default_routes(plan, target, gws: Dict[int, str]):
    desired = {_ip(g).version: _ip(g) for g in target.section.get('gateway') or []}
    for version in (4, 6):
        want = desired.get(version)
        got = _ip(gws[version]) if gws.get(version) else None
        if want and got != want:
            plan.guest.append(DefaultRoute(True, want, target.ifname))
            plan.actions.append('set default route via %s' % want)
        elif not want and got:
            plan.guest.append(DefaultRoute(False, got, target.ifname))
            plan.actions.append('remove default route via %s' % got)


def plan_ipv6_switch(plan, ifname, wanted, off):
    """IPv6 on the guest's link only while it has an IPv6 address (``off``: the link's current setting, None for
    a link created by this plan or one the kernel shows no setting for). Without IPv6 on its link a guest sends
    no IPv6 packet at all, whatever source it binds to; its loopback keeps ::1 (never leaves the namespace)."""
    want_off = not any(i.version == 6 for i in wanted)
    if off is None:
        plan.ipv6 = Ipv6Switch(ifname, want_off)
    elif off != want_off:
        plan.ipv6 = Ipv6Switch(ifname, want_off)
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


def _local_rules(rules):
    """Which of the local-table rules the guest's namespace has: the kernel's, the inbound one, the outbound one."""
    local = [r for r in rules if r['table'] == NL.RT_TABLE_LOCAL and r['action'] == NL.FR_ACT_TO_TBL
             and not r['src_len']]
    kernel = any(r['priority'] == 0 and not r.get('invert') for r in local)
    inbound = any(r['priority'] == RULE_LOCAL_IN_PREF and r.get('invert') and r.get('iif') == 'lo' for r in local)
    outbound = any(r['priority'] == RULE_LOCAL_OUT_PREF and r.get('invert') and r.get('dst_len') == 8 for r in local)
    return kernel, inbound, outbound


def plan_source_rules(plan, wanted, guest):
    own = {i.ip for i in wanted if i.version == 6}
    rules = guest.rules6
    have = {r['src'] for r in rules if r['priority'] == RULE_OWN_PREF and r['src_len'] == 128}
    have_local = {r['src'] for r in rules if r['priority'] == RULE_OWN_LOCAL_PREF and r['src_len'] == 128
                  and r.get('find_saddr')}
    blocked = any(r['priority'] == RULE_BLOCK_PREF and r['action'] == NL.FR_ACT_UNREACHABLE for r in rules)
    kernel, inbound, outbound = _local_rules(rules)
    out = plan.guest6
    if own:  # the replacements first: local delivery never stops
        if not inbound:
            out.append(Rule(True, RULE_LOCAL_IN_PREF, 'local', not_iif='lo'))
        if not outbound:
            out.append(Rule(True, RULE_LOCAL_OUT_PREF, 'local', not_to='ff00::/8'))
        if kernel:
            out.append(Rule(False, 0, 'local'))
    out += [Rule(False, RULE_OWN_LOCAL_PREF, 'local', src=ip, find_saddr=True) for ip in sorted(have_local - own)]
    out += [Rule(False, RULE_OWN_PREF, 'main', src=ip) for ip in sorted(have - own)]
    out += [Rule(True, RULE_OWN_LOCAL_PREF, 'local', src=ip, find_saddr=True) for ip in sorted(own - have_local)]
    out += [Rule(True, RULE_OWN_PREF, 'main', src=ip) for ip in sorted(own - have)]
    if own and not blocked:
        out.append(Rule(True, RULE_BLOCK_PREF))
    if out:
        plan.actions.append('set IPv6 source address rules (%s)' % (', '.join(map(str, sorted(own))) or 'none'))


# --- execution ----------------------------------------------------------------------------------------------


def execute(plan: Plan, handle: str) -> None:
    """Run a plan: host side first (bridge, veth/macvlan), then the guest side. Rolls back created host links."""
    try:
        NL.run_batch(plan.guest_pre, handle)
        NL.run_batch(plan.host)
        if plan.ipv6 and not plan.ipv6.off:
            NL.set_ipv6_off(handle, plan.ipv6.dev, False)  # before its IPv6 addresses are added
        # the common live change (addresses, routes, link up on an existing interface) goes over rtnetlink, in
        # process; a guest side following host changes (a link just moved in) goes through `ip -batch`
        if plan.guest and (plan.host or not NL.send(plan.guest, handle)):
            NL.run_batch(plan.guest, handle)
        if plan.ipv6 and plan.ipv6.off:
            NL.set_ipv6_off(handle, plan.ipv6.dev, True)   # after its IPv6 addresses are removed
        NL.apply_rules6(plan.guest6, handle)
    except BaseException:
        NL.undo(plan.rollback_ops(), quiet=True)
        raise


def undo_live(plan: Plan, current, section, xid: int, pid: int, handle: str):
    """Bring a running guest's network back to ``current`` after ``plan`` ran (or failed half-way): the guest side
    planned against the kernel again, then the host links and bridge addresses the plan created are removed.
    Returns None, or the error that kept the guest side from being undone."""
    error = None
    try:
        execute(plan_live(current, xid, pid, NetState(), NetState(handle), section), handle)
    except Exception as exc:  # reported by the caller; the created host links are still removed below
        error = exc
    NL.undo(plan.rollback_ops())
    return error


def undo_outcome(plan: Optional[Plan], error) -> str:
    if plan is None or not plan.actions:
        return 'nothing was changed on the guest'
    if error is not None:
        return ('undoing the live change failed (%s): the guest\'s network differs from its config until this task '
                'runs again (it plans against the kernel) or the guest restarts' % error)
    return 'the live change was undone: the guest keeps its previous network'


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
