#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: address
short_description: Bind a guest to its IPv4/IPv6 addresses (VServer network context on a network namespace)
version_added: 0.1.0
description:
  - Gives a guest one interface (O(interface), default C(eth0)) in its own network namespace carrying the
    addresses it was given, its default route(s), its own loopback and its own netfilter tables.
  - A guest is reachable on, and can only use, its own addresses; it has no C(CAP_NET_ADMIN), so it cannot add
    addresses or links, change routes or its firewall. IPv6 autoconfiguration (SLAAC, router advertisements,
    link-local addresses) is off in every guest namespace.
  - A guest with IPv6 addresses gets policy rules in its namespace so that it cannot send from any other IPv6
    source address, even with C(IPV6_FREEBIND) (IPv4 refuses that by itself).
  - Changes apply live to a running guest (no restart) and are stored in the C(network) section of the guest's
    config, re-applied at every start.
  - The addresses are the module's list (O(state) and O(exclusive) say how the given ones combine with the
    stored ones). Every other option a task does not give keeps its stored value, as the C(limits) and
    C(capabilities) modules do; these options always have an effective value (a mode, a bridge, an interface
    name, an MTU), so changing one back means giving the value wanted - there is no separate remove value, except
    O(gateway) (an empty list). M(vserver.core.guests) passes a guest's whole address list (exclusive).
  - The host's IP forwarding and NAT are never changed. When the guest's gateway is the host and the host does
    not forward, RV(forwarding_needed) says so; the C(host) role's C(host_ip_forward) variable turns forwarding
    on explicitly. NAT for private guest subnets is left to the host's own firewall.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux 5.6 or newer (time namespace; C(pidfd_open) 5.3), run as root; network namespaces (C(CONFIG_NET_NS)), veth and
    bridge (or macvlan, ipvlan, VLAN) drivers
  - iproute2 (C(ip))
  - util-linux (C(nsenter))
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  name:
    description: Guest name (it must already have a config, see M(vserver.core.context)).
    type: str
    required: true
  address:
    description:
      - One address in CIDR form, IPv4 or IPv6, for example C(10.8.0.2/24) or C(fd00:8::2/64).
      - Refused before anything changes if malformed, the network or broadcast address of its subnet, not a
        unicast host address, or already held by another guest (config) or by the host.
    type: str
  addresses:
    description: Several addresses in CIDR form (added to O(address)).
    type: list
    elements: str
  state:
    description:
      - C(present) adds the addresses (an address given with another prefix length replaces the old one).
      - C(absent) removes the given addresses from the guest, live; without any address it removes the guest's
        whole network config and interface.
    type: str
    choices: [present, absent]
    default: present
  exclusive:
    description: With O(state=present), the given addresses become the guest's only addresses.
    type: bool
    default: false
  mode:
    description:
      - C(bridge) (default) a veth pair, host end C(BRIDGE-XID) on the host bridge O(bridge), guest end O(interface).
      - C(macvlan) a macvlan on the host device O(parent) (or its VLAN O(vlan)), for guests that sit on the host's
        LAN. As with every macvlan, the host itself cannot reach the guest through O(parent); other machines on
        the LAN and other macvlan guests can.
      - Unspecified - left as it is (C(bridge) for a new network config).
    type: str
    choices: [bridge, macvlan]
  bridge:
    description:
      - Host bridge of C(bridge) mode, default C(vsbr0). Created if missing. It gets the gateway address (with
        the guest subnet's prefix length) when it has no address in that subnet yet.
      - Unspecified - left as it is.
    type: str
  parent:
    description:
      - C(macvlan) mode, the host device the guest's macvlan sits on. Must exist.
      - C(bridge) mode with O(vlan), the device whose 802.1Q sub-interface C(PARENT.VLAN) becomes the bridge's uplink
        (one bridge per VLAN). An existing host device is never enslaved to a bridge.
      - Unspecified - left as it is while O(mode) stays the same; a change of O(mode) drops it unless given.
    type: str
  vlan:
    description:
      - 802.1Q VLAN id (1-4094). The module creates C(PARENT.VLAN) if missing (needs the kernel's 8021q support;
        refused before anything changes when the kernel has none).
      - Unspecified - left as it is while O(mode) stays the same; a change of O(mode) drops it unless given.
    type: int
  gateway:
    description:
      - Default gateway(s), at most one IPv4 and one IPv6 address, each inside one of the guest's subnets.
      - Default, per family, the bridge's address in the guest's subnet, else the first host address of that
        subnet (which the bridge then gets). C(macvlan) guests get no default route unless given one.
      - An empty list means no default route; it is kept until a gateway is given again.
      - Unspecified - left as it is (the stored gateway, or the default above for a new config). To remove the
        default route, give an empty list.
    type: list
    elements: str
  mtu:
    description:
      - MTU of the guest interface (and of the host end of its veth). At least 1280 with IPv6.
      - Unspecified - left as it is (the kernel's default for a new interface). To change, give the MTU wanted.
    type: int
  interface:
    description:
      - Name of the interface inside the guest. Default C(eth0).
      - Unspecified - left as it is.
    type: str
notes:
  - Run as root. Needs iproute2 and util-linux (C(nsenter)) on the host.
  - Stopping a guest removes its interface (the kernel deletes the veth pair with the namespace); the bridge stays.
seealso:
  - module: vserver.core.context
'''

EXAMPLES = r'''
- name: Guest web on the default bridge vsbr0 (created with 10.8.0.1/24 if missing)
  vserver.core.address:
    name: web
    address: 10.8.0.2/24

- name: Dual stack, explicit gateways, on a bridge of our own
  vserver.core.address:
    name: web
    addresses: [10.8.0.2/24, fd00:8::2/64]
    gateway: [10.8.0.1, fd00:8::1]
    bridge: vsbr1

- name: A guest on the LAN, VLAN 20 of eth1
  vserver.core.address:
    name: mail
    mode: macvlan
    parent: eth1
    vlan: 20
    address: 192.0.2.25/24
    gateway: 192.0.2.1

- name: Remove one address, live
  vserver.core.address:
    name: web
    address: fd00:8::2/64
    state: absent
'''

RETURN = r'''
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [create network config, create bridge vsbr0, add address 10.8.0.2/24, set default route via 10.8.0.1]
network:
  description: The guest's network config section after the run.
  returned: always
  type: dict
  sample: {mode: bridge, bridge: vsbr0, interface: eth0, addresses: [10.8.0.2/24], gateway: [10.8.0.1]}
live_addresses:
  description: The addresses on the guest's interface as the kernel shows them (running guests only).
  returned: when the guest runs
  type: list
  elements: str
  sample: [10.8.0.2/24, fd00:8::2/64]
running:
  description: Whether the guest runs (changes were applied live).
  returned: always
  type: bool
  sample: true
forwarding_needed:
  description:
    - Per family (C(ipv4), C(ipv6)), true when the guest's gateway is the host and the host does not forward
      packets, so the guest reaches only its own subnet. Never changed by this module.
  returned: always
  type: dict
  sample: {ipv4: true}
restart_required:
  description: Always false; every change applies live.
  returned: always
  type: bool
  sample: false
diff:
  description: Before and after of the guest's network config section.
  returned: always
  type: dict
  sample: {before: {}, after: {mode: bridge, bridge: vsbr0, interface: eth0, addresses: [10.8.0.2/24]}}
'''

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _mgr_address, _netns


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(**copy.deepcopy(_netns.ARGUMENT_SPEC)),
        supports_check_mode=True,
    )
    paths = _ansible.paths_from(module)
    _ansible.run(module, lambda: _mgr_address.ensure(paths, module.params['name'], module.params, module.check_mode))


if __name__ == '__main__':
    main()
