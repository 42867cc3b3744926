# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guest role's vserver_guests entries as vserver.core.guests items (built in Python, not by Jinja string
building, so every supported ansible-core renders the same data)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: guest_module_list
short_description: Turn the guest role's vserver_guests entries into vserver.core.guests items
version_added: 0.1.0
author: vserver.core contributors
description:
  - Used by the P(vserver.core.guest#role) role. Each entry keeps its keys for M(vserver.core.guests), except the
    keys the role handles itself (O(role_keys)); O(bootstrap) templates become C(none), since the role builds those
    trees itself.
  - Each entry gets a C(hostname) (its own, else its name plus O(domain)), a C(state) and an C(autostart).
  - Unless the entry's C(manage_files) (else O(manage_files)) is false, it also gets C(files) for C(/etc/hostname),
    C(/etc/hosts) (localhost lines, one line per address, then the entry's C(hosts_entries)) and
    C(/etc/resolv.conf) (a search line for the domain, then the entry's C(dns_servers), else O(dns_servers)), its
    C(root_password_hash), and its C(root_authorized_keys) when those are not null.
  - A bootstrapped entry whose C(packages) (else O(packages)) include C(sysvinit-core) also gets a container
    C(/etc/inittab) with its managed files. It has Debian's runlevels, no getty (a guest has no console or ttys),
    and a powerfail entry that runs C(/sbin/init 0), so that SIGPWR (the runtime's stop signal for a sysvinit
    guest) halts it through runlevel 0.
  - An entry's own key wins over the default given here, even when its value is null.
positional: _input
options:
  _input:
    description: The role's guest list (vserver_guests), a list of mappings with at least C(name).
    type: list
    elements: dict
    required: true
  domain:
    description: Default DNS domain of the guests (empty for none).
    type: str
    default: ''
  state:
    description: Default C(state) of a guest.
    type: str
    default: started
  autostart:
    description: Default C(autostart) of a guest.
    type: bool
    default: true
  manage_files:
    description: Default C(manage_files) of a guest.
    type: bool
    default: true
  dns_servers:
    description: Name servers of a guest that names none itself.
    type: list
    elements: str
    default: []
  root_password_hash:
    description: Default C(root_password_hash) of a guest (C(!) locks the root password).
    type: str
    default: '!'
  root_authorized_keys:
    description: Default C(root_authorized_keys) of a guest; null leaves the guest's file alone.
    type: list
    elements: str
  role_keys:
    description: Keys of an entry that the role handles itself and that are not passed on.
    type: list
    elements: str
    default: [template, suite, variant, mirror, tarball, dns_servers, domain, hosts_entries, root_password_hash,
              root_authorized_keys, manage_files, components, packages]
  packages:
    description: Default C(packages) of a bootstrapped guest (the guest role passes its C(guest_packages)).
    type: list
    elements: str
    default: []
  bootstrap:
    description: Templates whose trees the role builds itself (passed on as template C(none)).
    type: list
    elements: str
    default: [debootstrap, mmdebstrap, tarball]
"""

EXAMPLES = r"""
- name: Render the guests for the guests module
  ansible.builtin.set_fact:
    guest_items: "{{ vserver_guests | vserver.core.guest_module_list(domain='example.org', dns_servers=['192.0.2.53']) }}"
  no_log: true  # the items carry root_password_hash

# [{"name": "web", "addresses": ["198.18.0.2/24"]}] gives
# [{"name": "web", "addresses": ["198.18.0.2/24"], "template": "busybox", "hostname": "web.example.org",
#   "state": "started", "autostart": true, "root_password_hash": "!",
#   "files": {"/etc/hostname": "web\n",
#             "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n198.18.0.2\tweb.example.org web\n",
#             "/etc/resolv.conf": "search example.org\nnameserver 192.0.2.53\n"}}]
"""

RETURN = r"""
_value:
  description: One M(vserver.core.guests) item per entry, in the same order.
  type: list
  elements: dict
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence
from ansible.module_utils.parsing.convert_bool import boolean

ROLE_KEYS = ('template', 'suite', 'variant', 'mirror', 'tarball', 'dns_servers', 'domain', 'hosts_entries',
             'root_password_hash', 'root_authorized_keys', 'manage_files', 'components', 'packages')
BOOTSTRAP = ('debootstrap', 'mmdebstrap', 'tarball')
LOCALHOST = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback']
# sysvinit in a guest (docs/guests.md): Debian's runlevels without gettys, SIGPWR (the stop signal) halts
SYSV_INITTAB = '''# /etc/inittab of a vserver.core guest (written by the guest role, docs/guests.md): no getty (no console or
# ttys in a guest: enter with `vserver NAME enter`); SIGPWR, the guest's stop signal, goes to runlevel 0.
id:2:initdefault:
si::sysinit:/etc/init.d/rcS
~~:S:wait:/sbin/sulogin --force
l0:0:wait:/etc/init.d/rc 0
l1:1:wait:/etc/init.d/rc 1
l2:2:wait:/etc/init.d/rc 2
l3:3:wait:/etc/init.d/rc 3
l4:4:wait:/etc/init.d/rc 4
l5:5:wait:/etc/init.d/rc 5
l6:6:wait:/etc/init.d/rc 6
z6:6:respawn:/sbin/sulogin --force
p0::powerfail:/sbin/init 0
'''


def _own(entry, key, default):
    """The entry's value for ``key`` when it has the key (even null), else ``default``."""
    return entry[key] if key in entry else default


def _files(entry, hostname, domain, dns_servers):
    short = hostname.split('.', 1)[0]
    hosts = list(LOCALHOST)
    for addr in _own(entry, 'addresses', []) or []:
        hosts.append('%s\t%s%s' % (str(addr).split('/', 1)[0], hostname, ' ' + short if short != hostname else ''))
    hosts.extend(str(line) for line in _own(entry, 'hosts_entries', []) or [])
    resolv = (['search %s' % domain] if domain else []) + ['nameserver %s' % server for server in dns_servers or []]
    return {'/etc/hostname': short + '\n', '/etc/hosts': '\n'.join(hosts) + '\n',
            '/etc/resolv.conf': ''.join(line + '\n' for line in resolv)}


def _item(index, entry, opts):
    if not isinstance(entry, Mapping):
        raise AnsibleFilterError('vserver_guests[%d] must be a mapping, got %s' % (index, type(entry).__name__))
    if 'name' not in entry and 'hostname' not in entry:
        raise AnsibleFilterError('vserver_guests[%d] has no name' % index)
    template = _own(entry, 'template', 'busybox')
    domain = _own(entry, 'domain', opts['domain'])
    hostname = str(entry['hostname'] if 'hostname' in entry else '%s%s' % (entry['name'], '.%s' % domain if domain else ''))
    item = dict((key, value) for key, value in entry.items() if key not in opts['role_keys'])
    item.update(template='none' if template in opts['bootstrap'] else template, hostname=hostname,
                state=_own(entry, 'state', opts['state']), autostart=_own(entry, 'autostart', opts['autostart']))
    if boolean(_own(entry, 'manage_files', opts['manage_files']), strict=False):
        item['files'] = _files(entry, hostname, domain, _own(entry, 'dns_servers', opts['dns_servers']))
        packages = _own(entry, 'packages', opts['packages']) if template in opts['bootstrap'] else None
        if 'sysvinit-core' in [str(name) for name in packages or []]:
            item['files']['/etc/inittab'] = SYSV_INITTAB
        item['root_password_hash'] = _own(entry, 'root_password_hash', opts['root_password_hash'])
        keys = _own(entry, 'root_authorized_keys', opts['root_authorized_keys'])
        if keys is not None:
            item['root_authorized_keys'] = keys
    return item


def guest_module_list(guests, domain='', state='started', autostart=True, manage_files=True, dns_servers=None,
                      root_password_hash='!', root_authorized_keys=None, role_keys=ROLE_KEYS, bootstrap=BOOTSTRAP,
                      packages=None):
    """See DOCUMENTATION."""
    if not is_sequence(guests):
        raise AnsibleFilterError('vserver_guests must be a list, got %s' % type(guests).__name__)
    opts = dict(domain=domain, state=state, autostart=autostart, manage_files=manage_files,
                dns_servers=dns_servers or [], root_password_hash=root_password_hash,
                root_authorized_keys=root_authorized_keys, role_keys=role_keys, bootstrap=bootstrap,
                packages=packages or [])
    return [_item(index, entry, opts) for index, entry in enumerate(guests)]


class FilterModule:
    """vserver.core filters."""

    def filters(self):
        return {'guest_module_list': guest_module_list}
