#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: capabilities
short_description: Capability bounding set and context capabilities of a Linux-VServer style guest
version_added: 0.1.0
description:
  - Sets the capability bounding set (VServer C(bcaps)) of a guest's processes, the mainline equivalents of
    VServer context capabilities (C(ccaps)), and C(no_new_privs). Ambient and inheritable capabilities are always
    cleared at guest start.
  - The default bounding set is util-vserver's default (every capability except its "insecure" set) minus what a
    mainline kernel does not confine inside a guest. Dropped by default - C(dac_read_search), C(linux_immutable),
    C(net_broadcast), C(net_admin), C(net_raw), C(ipc_lock), C(ipc_owner), C(sys_module), C(sys_rawio),
    C(sys_ptrace), C(sys_pacct), C(sys_admin), C(sys_nice), C(sys_resource), C(sys_time),
    C(sys_tty_config), C(mknod), C(lease), C(audit_control), C(mac_override), C(mac_admin), C(syslog), C(wake_alarm),
    C(block_suspend), C(audit_read), C(perfmon), C(bpf), C(checkpoint_restore). Kept - C(chown),
    C(dac_override), C(fowner), C(fsetid), C(kill), C(setgid), C(setuid), C(setpcap), C(net_bind_service),
    C(sys_chroot), C(sys_boot) (reboot and halt from inside restart or stop the guest, see C(docs/guest-view.md);
    not kept, and refused, where O(seccomp) would let C(kexec_load) through), C(audit_write), C(setfcap). See
    C(docs/security.md) for the reasons.
  - O(ccaps) apply at once to a running guest. A bounding-set or O(no_new_privs) change on a running guest needs a
    restart - the kernel never gives a capability back to a running process - so the module reports
    RV(restart_required) and restarts the guest only with O(restart=true).
  - The section is stored in the guest's config document (key C(capabilities)) and applied at every start.
  - An option a task does not give is left as it is in the stored section (as C(community.docker) and
    C(containers.podman) leave unspecified options alone); each option says how to remove it. O(bcaps) and
    O(bcaps_add)/O(bcaps_drop) are two forms of the bounding set - giving one form replaces the other.
    M(vserver.core.guests) is different - a guest entry is the whole section, so a key removed there is lifted.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux 5.6 or newer (time namespace; C(pidfd_open) 5.3), run as root; the O(seccomp) filter needs seccomp
    (C(CONFIG_SECCOMP_FILTER))
  - cgroup v1 (hybrid) or cgroup v2 mounted on the host
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  name:
    description: The guest (created before with M(vserver.core.context)).
    type: str
    required: true
  bcaps:
    description:
      - The complete bounding set, by Linux names (C(CAP_CHOWN) or C(chown), case-insensitive). Replaces the
        default; use O(bcaps_add)/O(bcaps_drop) to adjust the default instead. Unknown names fail before anything
        is written.
      - Unspecified - left as it is. To go back to the default bounding set give C(default) (C(bcaps=default));
        an empty list is an empty bounding set.
    type: list
    elements: str
  bcaps_add:
    description:
      - Capabilities added to the default bounding set (replaces a stored O(bcaps)).
      - Unspecified - left as it is. To remove, give an empty list.
    type: list
    elements: str
  bcaps_drop:
    description:
      - Capabilities removed from the default bounding set (replaces a stored O(bcaps)).
      - Unspecified - left as it is. To remove, give an empty list.
    type: list
    elements: str
  ccaps:
    description:
      - VServer context capabilities with a mainline equivalent. C(raw_icmp) (alias C(ping)) lets every user of the
        guest send ICMP and ICMPv6 echo requests through datagram ("ping") sockets without C(CAP_NET_RAW) -
        C(net.ipv4.ping_group_range) is set to C(0 2147483647) in the guest's network namespace (the same sysctl
        governs IPv6 ping sockets).
      - Any other VServer ccap has no mainline equivalent and is refused, the message listing those supported.
      - Unspecified - left as it is. To remove, give an empty list.
    type: list
    elements: str
  no_new_privs:
    description:
      - Set C(PR_SET_NO_NEW_PRIVS) on the guest's init, so no process of the guest gains privileges through
        setuid/setgid or file capabilities.
      - Unspecified - left as it is. To remove, give C(false).
    type: bool
  seccomp:
    description:
      - The guest's system call filter, loaded into its init and into every process entered with C(vserver exec)
        as the last step before exec, inherited by every child. Without this option a guest gets the default
        filter - a deny-list at least as strict as Docker's default profile for a container with the guest's
        bounding set, on every ABI the kernel accepts (x86_64, i386 through C(int 0x80), the x32 range; aarch64).
      - Denied by default - the keyring calls (C(keyctl), C(add_key), C(request_key)), C(unshare) and C(clone) with
        a namespace flag, C(setns), the mount API (C(mount), C(umount2), C(fsopen), C(fsconfig), C(fsmount),
        C(fspick), C(move_mount), C(open_tree), C(mount_setattr), C(pivot_root)), C(bpf), C(perf_event_open),
        C(userfaultfd), C(kexec_load), C(kexec_file_load), C(swapon), C(swapoff), io_uring, C(personality) with
        anything but the harmless values, obsolete calls; and, unless the bounding set holds the capability that
        governs them, the module, time, reboot, accounting, NUMA, file-handle, I/O-port, C(syslog), C(vhangup)
        and quota calls. Denied calls fail with EPERM; C(clone3) fails with ENOSYS so libc falls back to C(clone).
        The full list and what each denial stops is in C(docs/security.md).
      - Existing guests get the default filter at their next start. A changed filter needs a restart; the module
        reports RV(restart_required) and restarts only with O(restart=true).
      - Unspecified - left as it is. To go back to the default filter, give O(seccomp.mode=default).
    type: dict
    suboptions:
      mode:
        description:
          - C(default) - the filter denies (EPERM).
          - C(log) - the filter allows what it would deny and logs it (SECCOMP_RET_LOG, audit type 1326 in the
            kernel log), to find which call a program needs.
          - C(unconfined) - no filter. This reopens what the filter closes, among them lifting the guest's own
            cgroup limits through a user namespace and a cgroup mount (see C(docs/security.md)).
        type: str
        choices: [default, log, unconfined]
        default: default
      allow:
        description: System call names allowed back (names of the running architecture's table, e.g. C(keyctl));
          an unknown name fails before anything changes. Allowing C(clone) or C(unshare) allows every flag.
        type: list
        elements: str
      deny:
        description: System call names denied on top of the default (EPERM).
        type: list
        elements: str
  restart:
    description: Restart a running guest when its bounding set, no_new_privs or syscall filter must change.
    type: bool
    default: false
notes:
  - Run as root.
seealso:
  - module: vserver.core.context
  - module: vserver.core.limits
'''

EXAMPLES = r'''
- name: Default bounding set, and ping allowed without CAP_NET_RAW
  vserver.core.capabilities:
    name: web
    ccaps: [raw_icmp]

- name: Let the guest renice its processes, drop chroot, restart now
  vserver.core.capabilities:
    name: web
    bcaps_add: [CAP_SYS_NICE]
    bcaps_drop: [sys_chroot]
    no_new_privs: true
    restart: true

- name: A guest that needs the kernel keyring (in this mode - host root's keyrings, see docs/security.md)
  vserver.core.capabilities:
    name: build
    seccomp:
      allow: [keyctl, add_key, request_key]
'''

RETURN = r'''
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: [update config, set net.ipv4.ping_group_range=0 2147483647 in the guest network namespace]
bcaps:
  description: The resulting bounding set, capability names without the C(CAP_) prefix.
  returned: always
  type: list
  elements: str
  sample: [CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, NET_BIND_SERVICE, SYS_CHROOT]
ccaps:
  description: The resulting context capabilities.
  returned: always
  type: list
  elements: str
  sample: [ping]
running:
  description: Whether the guest runs (ccaps were applied live, RV(observed) was read from its init).
  returned: always
  type: bool
  sample: true
restart_required:
  description: The running guest's bounding set or no_new_privs differs from the config; a restart applies it.
  returned: always
  type: bool
  sample: false
restarted:
  description: The guest was restarted by this run (O(restart=true)).
  returned: always
  type: bool
  sample: false
seccomp:
  description: The resulting syscall filter settings (C(mode), and C(allow)/C(deny) when given).
  returned: always
  type: dict
  sample: {mode: default, allow: [keyctl]}
observed:
  description:
    - The running guest init's bounding set and no_new_privs flag, read from C(/proc) (null when stopped), and
      C(seccomp) - the fingerprint of the filter it was started with (C(unconfined) when its init has none).
  returned: always
  type: dict
  sample: {bcaps: [CHOWN, DAC_OVERRIDE, KILL, SETGID, SETUID], no_new_privs: false, seccomp: default-3f2a9c1e}
diff:
  description: Before and after of the guest's C(capabilities) config section.
  returned: always
  type: dict
  sample: {before: {bcaps_drop: []}, after: {bcaps_drop: [SYS_CHROOT]}}
'''

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _caps, _mgr_capabilities


def main():
    module = AnsibleModule(
        argument_spec=_ansible.argument_spec(
            name=dict(type='str', required=True),
            restart=dict(type='bool', default=False),
            **copy.deepcopy(_caps.ARGUMENT_SPEC)
        ),
        mutually_exclusive=list(_caps.MUTUALLY_EXCLUSIVE),
        supports_check_mode=True,
    )
    params = {key: module.params[key] for key in _caps.SECTION_KEYS}
    _ansible.run(module, lambda: _mgr_capabilities.ensure(
        _ansible.paths_from(module), module.params['name'], params, check_mode=module.check_mode,
        restart=module.params['restart']))


if __name__ == '__main__':
    main()
