#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: context
short_description: Manage the lifecycle of a Linux-VServer style guest on a mainline kernel
version_added: 0.1.0
description:
  - Creates, starts, stops, freezes and removes one guest ("context").
  - A started guest runs its init as PID 1 of new PID, UTS, IPC, mount, cgroup, network and time namespaces, with
    its tree as root (pivot_root, old root detached), a fresh C(/proc), read-only C(/proc/sys) and C(/sys), a
    minimal C(/dev) and its own cgroup; its uptime starts at guest start. No host-side process stays behind per guest.
  - The guest's config is one JSON document C(CONFIG_DIR/NAME.json), written atomically under a host-wide lock.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux 5.6 or newer (time namespace; C(pidfd_open) 5.3), run as root
  - cgroup v1 (hybrid) or cgroup v2 mounted on the host
  - util-linux (C(mount))
  - busybox-static for O(template=busybox) (Debian package C(busybox-static))
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  name:
    description:
      - Guest name. 1 to 63 characters of lowercase letters, digits, C(-), C(_) and C(.); it may not start with
        C(.) nor contain C(/) or C(..).
    type: str
    required: true
  xid:
    description:
      - Context id, from 2 to 49151 as in util-vserver. It labels the guest in every listing.
      - Default is the guest's current id, or the lowest free id for a new guest. An id held by another guest is refused.
    type: int
  root:
    description:
      - The guest's root tree. Default is the current root, or O(tree_dir)/O(name) for a new guest.
      - Changing it on a running guest takes effect at the next start (RV(restart_required)).
    type: path
  template:
    description:
      - How to fill O(root) when it is missing or empty. C(busybox) builds a minimal tree from the host's
        busybox-static (C(/etc/passwd), C(/etc/group), busybox init, a shell) with no network needed.
        C(none) requires an existing tree.
      - An existing non-empty tree is never overwritten.
    type: str
    choices: [busybox, none]
    default: busybox
  hostname:
    description:
      - Host name inside the guest (its UTS namespace). Default is the guest name. Applied live to a running guest.
    type: str
  domainname:
    description:
      - NIS domain name inside the guest. Applied live to a running guest.
    type: str
  init:
    description:
      - The guest's init, an absolute path inside the guest or an argv list. Default C(/sbin/init).
    type: raw
  stop_signal:
    description:
      - Signal sent to the guest's init to stop it. Default C(SIGTERM) (it stops busybox init and most services).
        When the running init is systemd, the default C(SIGTERM) is sent as C(SIGRTMIN+3) (systemd takes
        C(SIGTERM) as a request to re-execute itself), and when it is sysvinit as C(SIGPWR) (sysvinit ignores
        C(SIGTERM); its inittab's powerfail entry goes to runlevel 0). Any other signal is sent as given. See the
        collection's docs/guests.md.
      - A name (C(SIGTERM), C(term)), C(SIGRTMIN+N) or C(SIGRTMAX-N) within the real-time range, or a number
        from 1 to SIGRTMAX; stored in canonical form (C(37) and C(rtmin+3) become C(SIGRTMIN+3)). C(SIGSTOP)
        and C(SIGCONT) are refused.
      - A config edited by hand with a bad O(stop_signal) or O(stop_timeout) still stops, with C(SIGTERM) and
        10 seconds, and a warning naming the field.
    type: str
  stop_timeout:
    description:
      - Seconds to wait for init to exit after O(stop_signal) before every process left in the guest's cgroup is
        killed. Default 10.
    type: float
  lxcfs:
    description:
      - The guest's C(/proc/meminfo), C(cpuinfo), C(stat), C(loadavg), C(uptime), C(swaps), C(diskstats) and
        C(/sys/devices/system/cpu/online) come from the host's LXCFS, so C(free), C(top), C(uptime) and C(nproc)
        answer with the guest's own limits and usage. V(false) shows the host's files. Unspecified - left as it
        is; a guest without it has the view (default V(true)).
      - When LXCFS is not running, the guest still starts, with the host's files and a warning.
      - A change takes effect at the next start (RV(restart_required)).
    type: bool
  state:
    description:
      - C(present) ensures config and tree; C(started) also runs the guest (and thaws a frozen one); C(stopped)
        stops it; C(restarted) stops (if running) and starts it; C(frozen) suspends all its processes with the
        cgroup freezer (starting it first if needed); C(absent) stops it and removes its config and runtime state.
      - C(started) and C(frozen) also repair the runtime state of a running guest that a killed run left wrong
        (a lost network namespace handle, a stale stop mark; actions C(repair netns handle), C(clear stale stop
        mark)). A guest with processes in its cgroup but no tracked init (a start killed half-way) reads as
        C(broken); C(started) kills them and starts it afresh (action C(kill untracked processes)), C(stopped)
        kills them.
    type: str
    choices: [present, started, stopped, restarted, frozen, absent]
    default: present
  purge:
    description:
      - With O(state=absent), also delete the guest's tree, its init log (C(LOG_DIR/NAME.log)) and its autostart
        mark (C(CONFIG_DIR/autostart/NAME)). All three are kept by default.
      - The config is first marked C(purging), then the tree is deleted, then the config removed, so a run
        killed half-way is finished by the next O(state=absent) run (with or without O(purge)); O(state=present)
        and the run states are refused for a half-purged guest until then.
      - A purge never deletes through a mount point. It fails, naming them, before anything is touched when
        something is mounted below the tree (host data bind-mounted into the guest, say).
    type: bool
    default: false
notes:
  - Run as root. Bad input fails before anything is written, with a message naming the option.
  - A failure while creating a new guest removes the config and tree created by that run.
  - A busybox tree is built in a sibling directory C(.NAME.build-XXXXXXXX) and renamed onto the root when
    complete, so a killed build never leaves a half tree at the root; the next run removes such leftovers.
  - Config writes are complete or not at all (a full disk fails the task naming the file, the old config stays).
  - A guest whose config file is unusable (not a JSON object, empty or truncated, an unknown key, a wrong type or
    range, another guest's name) is never overwritten. O(state=stopped) and O(state=absent) still stop it (its
    runtime record names its init and cgroup; default signal SIGTERM and timeout 10 s) and warn that the config is
    broken; O(state=absent) also removes the broken file, which is how to repair it (the tree is kept, and
    O(purge=true) is refused since the tree cannot be known). Every other state fails naming the file and the problem.
seealso:
  - module: vserver.core.context_info
'''

EXAMPLES = r'''
- name: A busybox guest, running
  vserver.core.context:
    name: web
    xid: 101
    hostname: web.example.org
    state: started

- name: A guest on an existing tree, with systemd as init
  vserver.core.context:
    name: mail
    root: /srv/guests/mail
    template: none
    init: [/lib/systemd/systemd]
    stop_signal: SIGRTMIN+3
    state: started

- name: Remove a guest and its tree
  vserver.core.context:
    name: old
    state: absent
    purge: true
'''

RETURN = r'''
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [build tree /var/lib/vservers/web from template busybox, create config, start]
restart_required:
  description: A change (root, init) waits for the next start of the running guest.
  returned: always
  type: bool
  sample: false
guest:
  description:
    - The guest's state read back from the kernel, with the keys of an entry of M(vserver.core.context_info)'s
      RV(vserver.core.context_info#module:guests) (without C(disk_limit) and C(network)).
    - Its C(state) is C(running), C(frozen), C(stopped), or C(broken) (processes in the guest's cgroup but no
      tracked init; C(message) then says so).
  returned: unless state is absent
  type: dict
  sample: {name: web, xid: 101, state: running, root: /var/lib/vservers/web, hostname: web, init_pid: 4242,
           uptime: 0.05, nproc: 1, memory_bytes: 1048576, cpu_seconds: 0.01, addresses: [],
           cgroup: {unified: /sys/fs/cgroup/vservers/web}, namespaces: {mnt: "mnt:[4026532301]"}}
diff:
  description: Before and after of the guest's context settings and state.
  returned: always
  type: dict
  sample: {before: {state: absent}, after: {state: started, xid: 101, root: /var/lib/vservers/web}}
'''

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _mgr_context


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(**copy.deepcopy(_mgr_context.ARGUMENT_SPEC)),
        supports_check_mode=True,
    )
    _ansible.run(module, lambda: _mgr_context.ensure(_ansible.paths_from(module), module.params['name'], module.params,
                                                     module.check_mode))


if __name__ == '__main__':
    main()
