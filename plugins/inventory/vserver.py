# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: vserver
short_description: The guests of vserver.core hosts as inventory hosts
description:
  - Adds the guests of the hosts of a group (O(hosts_group), the hosts the C(site) playbook deploys) as hosts reached
    with the C(vserver.core.vserver) connection (C(vserver NAME exec) on their host, locally or over ssh). The hosts
    come from the inventory sources read before this file (list it after them, for example C(hosts.yml) then
    C(guests.vserver.yml) in one inventory directory).
  - Online (the default) it asks each host for C(vserver list --json) over the host's own ssh settings
    (C(ansible_host), C(ansible_port), C(ansible_user), C(ansible_ssh_private_key_file), C(ansible_ssh_common_args));
    a host that is C(localhost) or has C(ansible_connection=local) is asked without ssh. O(offline=true) reads the
    hosts' C(vserver_guests) variables instead (no connection; the state is then the one the entry asks for).
  - Each guest gets the host variables C(vserver_guest_host), C(vserver_xid), C(vserver_state), C(vserver_hostname),
    C(vserver_addresses), C(vserver_limits), C(vserver_python), and the connection variables
    (C(ansible_connection), C(ansible_vserver_*), C(ansible_python_interpreter) when it has Python).
  - A guest name listed by more than one host (a migrated guest kept stopped on its old host) is added once under
    its name, for the host where it runs, and under C(NAME@HOST) for each other host.
  - Groups - C(vserver_guest) (every guest), C(vserver_host_HOST) (the guests of a host), C(vserver_state_STATE)
    (C(running), C(stopped), C(frozen), C(broken)), C(vserver_no_python) (guests without C(/usr/bin/python3); use
    C(raw) there); plus the constructed features (O(keyed_groups), O(groups), O(compose), O(strict)).
version_added: 0.1.0
author:
  - vserver.core contributors (@vserver-core)
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; the file is read only when it says so.
    type: str
    required: true
    choices: [vserver.core.vserver]
  hosts_group:
    description: The group whose hosts hold guests.
    type: str
    default: vserver_hosts
  offline:
    description:
      - Read the guests from the hosts' C(vserver_guests) variables instead of asking the hosts. A guest's Python is
        then assumed from its entry (C(packages) holding C(python3), or C(template) C(tarball), C(clone) or C(none) -
        unknown, taken as having it; C(busybox), the default - none).
    type: bool
    default: false
  vserver_command:
    description: The vserver command on the hosts (a shell-style string).
    type: str
    default: vserver
  guest_user:
    description:
      - The user inside each guest who runs the tasks (the guests' C(ansible_vserver_user), which wins over an
        C(ansible_user) meant for the hosts, for example in C(group_vars/all)). Empty - C(ansible_user) decides.
    type: str
    default: root
  timeout:
    description: Seconds for each host's answer (ssh connect and the listing).
    type: int
    default: 30
  ssh_executable:
    description: The OpenSSH client.
    type: str
    default: ssh
  use_vars_plugins:
    description:
      - Read the hosts' variables also from the vars plugins of the inventory sources (C(group_vars/), C(host_vars/)
        next to them), as the constructed plugin's option of that name does; without it only variables set in the
        inventory sources themselves are seen.
    type: bool
    default: true
  skip_unreachable:
    description:
      - A host that does not answer is left out with a warning (its guests are then not in the inventory). With
        C(false) it fails the inventory, naming the host.
    type: bool
    default: true
"""

EXAMPLES = r"""
# inventory/hosts.yml lists the hosts in vserver_hosts (with their vserver_guests for the guest role);
# inventory/guests.vserver.yml:
plugin: vserver.core.vserver
hosts_group: vserver_hosts
keyed_groups:
  - key: vserver_hostname.split('.')[-2] | default('none')
    prefix: domain
groups:
  small: (vserver_limits.memory | default('')) in ['32M', '64M']
compose:
  motd_text: "'guest ' ~ inventory_hostname ~ ' on ' ~ vserver_guest_host"
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/vserver-inventory

# then: ansible -i inventory/ vserver_guest:!vserver_no_python -m ping
#       ansible -i inventory/ vserver_no_python -m raw -a 'uname -a'
"""

import json
import subprocess

from ansible.errors import AnsibleParserError
from ansible.inventory.group import to_safe_group_name
from ansible.inventory.helpers import get_group_vars
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.vars import combine_vars
from ansible.vars.plugins import get_vars_from_inventory_sources

from ansible_collections.vserver.core.plugins.plugin_utils import _vserver_cmd as V

ROOT_VARS = dict((key, 'vserver_' + key) for key in V.ROOT_KEYS)
# a host's ssh settings (its own variables) -> the guests' connection variables
SSH_VARS = (('ansible_port', 'ansible_vserver_ssh_port'), ('ansible_user', 'ansible_vserver_ssh_user'),
            ('ansible_ssh_private_key_file', 'ansible_vserver_ssh_private_key_file'),
            ('ansible_ssh_common_args', 'ansible_vserver_ssh_common_args'),
            ('ansible_ssh_extra_args', 'ansible_vserver_ssh_extra_args'))
PYTHON = '/usr/bin/python3'
STATES = ('running', 'stopped', 'frozen', 'broken')


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Guests of the hosts of ``hosts_group``, from `vserver list --json` or their ``vserver_guests``."""

    NAME = 'vserver.core.vserver'

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(('.vserver.yml', '.vserver.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        config = self._read_config_data(path)
        unknown = sorted(set(config or {}) - set(self._options))
        if unknown:
            raise AnsibleParserError('vserver inventory %s: unknown option(s) %s (see ansible-doc -t inventory '
                                     'vserver.core.vserver)' % (path, ', '.join(unknown)))
        group = self.get_option('hosts_group')
        if group not in self.inventory.groups:
            raise AnsibleParserError('vserver inventory %s: hosts_group %r is not a group of the inventory read before '
                                     'it (list the hosts first)' % (path, group))
        hosts = dict((host.name, self._host_vars(host, loader)) for host in self.inventory.groups[group].get_hosts())
        key = self.get_cache_key(path)
        use_cache = self.get_option('cache')
        listing = None
        if use_cache and cache:
            try:
                listing = self._cache[key]
            except KeyError:
                listing = None
        if listing is None:
            listing = self._listing(hosts)
            if use_cache:
                self._cache[key] = listing
        for inventory_name, host_name, guest in self._names(listing):
            self._add_guest(inventory_name, host_name, hosts.get(host_name, {}), guest)

    def _host_vars(self, host, loader):
        """A host's variables from the inventory read so far (with its group_vars/host_vars if asked)."""
        groups = get_group_vars(host.get_groups())
        own = host.get_vars()
        if self.get_option('use_vars_plugins'):
            sources = self.inventory.processed_sources
            groups = combine_vars(groups, get_vars_from_inventory_sources(loader, sources, host.get_groups(), 'all'))
            own = combine_vars(own, get_vars_from_inventory_sources(loader, sources, [host], 'all'))
        return combine_vars(groups, own)

    def _names(self, listing):
        """``[(inventory name, host, row)]``: a guest listed by several hosts keeps its name where it runs (else on
        the first host), ``NAME@HOST`` elsewhere."""
        seen = {}
        for host_name in sorted(listing):
            for row in listing[host_name]:
                seen.setdefault(row['name'], []).append((host_name, row))
        out = []
        for name, where in sorted(seen.items()):
            where.sort(key=lambda item: item[1].get('state') not in ('running', 'frozen'))
            out.append((name, where[0][0], where[0][1]))
            for host_name, row in where[1:]:
                self.display.warning('vserver inventory: guest %s is also on host %s (%s): added as %s@%s' % (
                    name, host_name, row.get('state'), name, host_name))
                out.append(('%s@%s' % (name, host_name), host_name, row))
        return out

    # where the guests come from

    def _listing(self, hosts):
        """``{host: [guest row, ...]}`` (rows as `vserver list --json` prints them)."""
        out = {}
        for name in sorted(hosts):
            if self.get_option('offline'):
                out[name] = self._offline(name, hosts[name])
                continue
            try:
                out[name] = self._online(name, hosts[name])
            except AnsibleParserError as exc:
                if not self.get_option('skip_unreachable'):
                    raise
                self.display.warning('vserver inventory: %s; its guests are left out' % exc)
        return out

    def _offline(self, name, hostvars):
        guests = hostvars.get('vserver_guests') or []
        if not isinstance(guests, list):
            raise AnsibleParserError('vserver inventory: host %s: vserver_guests must be a list of guest entries' % name)
        rows = []
        for entry in guests:
            if not isinstance(entry, dict) or not entry.get('name'):
                raise AnsibleParserError('vserver inventory: host %s: every vserver_guests entry needs a name' % name)
            template = entry.get('template') or 'busybox'
            python = 'python3' in (entry.get('packages') or []) or template in ('tarball', 'clone', 'none')
            rows.append({'name': entry['name'], 'xid': entry.get('xid'), 'host': name,
                         'state': {'stopped': 'stopped', 'frozen': 'frozen'}.get(entry.get('state'), 'running'),
                         'hostname': entry.get('hostname') or entry['name'], 'addresses': entry.get('addresses') or [],
                         'limits': entry.get('limits') or {}, 'python': PYTHON if python else None})
        return rows

    def _online(self, name, hostvars):
        roots = dict((key, hostvars[var]) for key, var in ROOT_VARS.items() if hostvars.get(var))
        argv = V.vserver_argv(self.get_option('vserver_command'), roots, ['list', '--json'])
        ssh = self._ssh_opts(name, hostvars)
        if ssh:
            argv = V.ssh_argv(dict(ssh, executable=self.get_option('ssh_executable'),
                                   connect_timeout=self.get_option('timeout')), argv)
        try:
            proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False,
                                  timeout=self.get_option('timeout'))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AnsibleParserError('host %s did not answer `vserver list --json`: %s' % (
                name, 'no answer within %d s' % self.get_option('timeout') if isinstance(exc, subprocess.TimeoutExpired)
                else exc))
        err = to_text(proc.stderr, errors='surrogate_or_replace').strip()
        if ssh and V.ssh_unreachable(proc.returncode, proc.stderr):
            raise AnsibleParserError('host %s unreachable over ssh: %s' % (name, err))
        if proc.returncode != 0:
            raise AnsibleParserError('host %s: `vserver list --json` failed (status %d): %s' % (
                name, proc.returncode, err))
        try:
            rows = json.loads(proc.stdout)['guests']
            if all(isinstance(row, dict) and isinstance(row.get('name'), str) and row['name'] for row in rows):
                return rows
        except (ValueError, KeyError, TypeError):
            pass
        shown = to_text(proc.stdout[:200], errors='surrogate_or_replace')
        raise AnsibleParserError('host %s: `vserver list --json` printed no guest listing (is its vserver command older '
                                 'than the inventory plugin?): %s' % (name, shown))

    @staticmethod
    def _ssh_opts(name, hostvars):
        """The host's ssh settings, or None for the controller itself."""
        address = hostvars.get('ansible_host') or name
        if hostvars.get('ansible_connection') == 'local' or V.is_local(address):
            return None
        return {'host': address, 'port': hostvars.get('ansible_port'), 'user': hostvars.get('ansible_user'),
                'private_key_file': hostvars.get('ansible_ssh_private_key_file'),
                'common_args': hostvars.get('ansible_ssh_common_args'),
                'extra_args': hostvars.get('ansible_ssh_extra_args')}

    # the guests

    def _add_guest(self, name, host_name, hostvars, row):
        self.inventory.add_host(name)
        facts = {'vserver_guest_host': host_name, 'vserver_xid': row.get('xid'), 'vserver_state': row.get('state'),
                 'vserver_hostname': row.get('hostname'), 'vserver_addresses': row.get('addresses') or [],
                 'vserver_limits': row.get('limits') or {}, 'vserver_python': row.get('python'),
                 'ansible_connection': 'vserver.core.vserver', 'ansible_vserver_guest': row['name'],
                 'ansible_vserver_command': self.get_option('vserver_command')}
        if self.get_option('guest_user'):
            facts['ansible_vserver_user'] = self.get_option('guest_user')
        ssh = self._ssh_opts(host_name, hostvars)
        facts['ansible_vserver_host'] = host_name if ssh else 'localhost'
        if ssh:
            facts['ansible_vserver_ssh_host'] = ssh['host']
            facts.update((mine, hostvars[theirs]) for theirs, mine in SSH_VARS if hostvars.get(theirs) is not None)
        roots = dict((key, hostvars[var]) for key, var in ROOT_VARS.items() if hostvars.get(var))
        if roots:
            facts['ansible_vserver_host_roots'] = roots
        if row.get('python'):
            facts['ansible_python_interpreter'] = row['python']
        for var, value in facts.items():
            self.inventory.set_variable(name, var, value)
        self.inventory.add_child(self.inventory.add_group('vserver_guest'), name)
        self.inventory.add_child(self.inventory.add_group(to_safe_group_name('vserver_host_' + host_name, force=True)),
                                 name)
        state = row.get('state') if row.get('state') in STATES else 'unknown'
        self.inventory.add_child(self.inventory.add_group('vserver_state_' + state), name)
        if not row.get('python'):
            self.inventory.add_child(self.inventory.add_group('vserver_no_python'), name)
        strict = self.get_option('strict')
        allvars = combine_vars(self.inventory.get_host(name).get_vars(), facts)
        self._set_composite_vars(self.get_option('compose'), allvars, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option('groups'), allvars, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option('keyed_groups'), allvars, name, strict=strict)
