# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: util-vserver settings without a mainline equivalent, and why (floor 3, part of the
import concern _legacy). One table per kind of setting; docs/import.md shows them to users."""

# rlimits counted per guest by the VServer kernel that have a cgroup counterpart here (value in pages or a count)
RLIMIT_CGROUP = {'rss': 'memory', 'nproc': 'nproc'}
# rlimits set per process here (setrlimit), as util-vserver set them on the guest's init; pages for memlock
RLIMIT_PROCESS = ('cpu', 'fsize', 'data', 'stack', 'core', 'nofile', 'memlock', 'locks', 'msgqueue', 'sigpending',
                  'nice', 'rtprio')
RLIMIT_NONE = {
    'as': 'the address space of a whole guest has no cgroup counterpart (a per-process RLIMIT_AS would mean '
          'something else); limits.memory bounds what the guest really uses',
    'anon': 'VServer accounting of anonymous pages: no cgroup file of its own (limits.memory counts them)',
    'shmem': 'VServer accounting of shared memory pages: no cgroup file of its own (limits.memory counts them)',
    'openfd': 'open files of a whole guest: no cgroup counterpart (rlimits.nofile is per process)',
    'nsock': 'sockets of a whole guest: no cgroup counterpart',
    'semary': 'System V semaphore arrays per guest: the guest has its own IPC namespace, no limit of its own',
    'nsems': 'System V semaphores per guest: the guest has its own IPC namespace, no limit of its own',
    'dentry': 'dentries per guest: no cgroup counterpart (kernel memory is charged to limits.memory)',
}
SCHED_NONE = {
    'tokens': 'the initial bucket fill: CFS bandwidth has no bucket, a period starts full',
    'tokens-min': 'the bucket level a hard-limited guest waits for: no CFS counterpart',
    'tokens-max': 'the bucket size: no CFS counterpart (limits.cpu.burst in microseconds is the nearest)',
    'priority-bias': 'a dynamic priority bonus: no CFS counterpart (limits.cpu_weight sets a relative weight)',
    'fill-rate2': 'the idle-time fill rate: CFS bandwidth has no second rate',
    'interval2': 'the idle-time interval: CFS bandwidth has no second rate',
    'idle-time': 'idle-time skipping: no CFS counterpart',
    'cpu-id': 'per-CPU buckets: no CFS counterpart (limits.cpuset pins a guest)',
    'bucket-id': 'per-CPU buckets: no CFS counterpart',
}
CCAPS_NONE = {
    'set_utsname': 'the guest has its own UTS namespace; changing its name from inside needs sys_admin',
    'secure_mount': 'mounting inside a guest needs sys_admin here (the mount namespace is its own)',
    'secure_remount': 'remounting inside a guest needs sys_admin here',
    'binary_mount': 'mounting inside a guest needs sys_admin here',
    'quota_ctl': 'quotactl needs sys_admin here',
    'admin_mapper': 'the device mapper is host-wide',
    'admin_cloop': 'cloop devices are host-wide',
    'admin_cgroup': 'the guest sees its cgroup namespace; delegation is not configured by the import',
    'set_rlimit': 'raising limits needs sys_resource in the bounding set (bcapabilities)',
    'raw_icmp': None,  # mapped
    'ping': None,
}
FLAGS = {
    'virt_uptime': 'always on: a time namespace starts the guest\'s uptime at its start',
    'virt_load': 'no mainline counterpart (LXCFS would virtualise /proc/loadavg)',
    'virt_mem': 'no mainline counterpart (LXCFS would virtualise /proc/meminfo)',
    'virt_cpu': 'no mainline counterpart (LXCFS would virtualise /proc/stat)',
    'hide_netif': 'always on: the guest has its own network namespace',
    'hide_mount': 'always on: the guest has its own mount namespace',
    'sched_hard': 'always on with sched/fill-rate: CFS bandwidth is a hard cap',
    'sched_prio': 'no CFS counterpart',
    'sched_pause': 'no counterpart (vserver freeze suspends a guest)',
    'fakeinit': 'always on: the guest\'s init is its PID 1',
    'lock': 'no counterpart: a guest cannot leave its namespaces anyway',
    'nproc': 'always on with rlimits/nproc (pids.max)',
    'private': 'always on: nothing else can enter a guest but vserver exec',
    'namespace': 'always on: the guest has its own mount namespace',
    'single_ip': 'no counterpart: the guest has its own network namespace',
    'state_setup': 'util-vserver internal state',
    'state_init': 'util-vserver internal state',
    'state_admin': 'util-vserver internal state',
    'sc_helper': 'no vshelper here: a guest stops through its own init',
    'reboot_kill': 'no vshelper here: reboot(2) in a guest ends its init',
    'igneg_nice': 'no counterpart',
    'ulimit': 'rlimits are mapped one by one',
}
INIT_STYLES = ('plain', 'sysv', 'minit', 'gentoo', 'arch', 'systemd')
# Entries of a guest directory this file reads (the others are reported as not read).
READ = {'context', 'name', 'uts', 'interfaces', 'bcapabilities', 'ccapabilities', 'flags', 'cflags', 'rlimits',
        'sched', 'cpuset', 'cgroup', 'dlimits', 'apps', 'personality', 'vdir', 'nice', 'ncapabilities', 'nflags',
        'run', 'cache', 'fstab', 'fstab.remote', 'scripts', 'spaces', 'badness', 'capabilities', 'ulimits'}
NOT_MAPPED = {
    'ncapabilities': 'network context capabilities: the guest has its own network namespace',
    'nflags': 'network context flags: the guest has its own network namespace',
    'run': 'util-vserver runtime state',
    'cache': 'util-vserver cache link',
    'fstab': 'mounts for the guest: not imported (bind them into the tree, or use the guest role\'s files)',
    'fstab.remote': 'mounts made in the guest\'s network context: not imported',
    'scripts': 'util-vserver hook scripts: not run by this collection',
    'spaces': 'namespace selection: every guest has its own namespaces here',
    'badness': 'the OOM score bias: not imported',
    'nice': 'the guest\'s nice level: not imported (limits.cpu_weight sets a relative weight)',
    'capabilities': 'the 2.4 kernel\'s capability list (bcapabilities is read)',
    'ulimits': 'the 2.4 kernel\'s limits (rlimits is read)',
}
