# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: host files under a guest's /proc and /sys that are masked or read-only.

The OCI runtime spec's defaults (runc's ``maskedPaths`` / ``readonlyPaths``), decided per path in
docs/security.md. Applied by the guest's mount setup, in its own mount namespace, after /proc, /sys and /dev are
mounted; a path the running kernel lacks is skipped.
"""

from __future__ import annotations

import os
import stat

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K

# Host-wide state or kernel memory layout, useless to a guest: a file reads as an empty read-only file (writes fail
# with EROFS; a /dev/null bind as runc does would take writes and drop them), a directory as an empty read-only tmpfs.
MASKED = (
    '/proc/kcore', '/proc/keys', '/proc/key-users', '/proc/timer_list', '/proc/sched_debug', '/proc/latency_stats',
    '/proc/timer_stats', '/proc/kpagecount', '/proc/kpageflags', '/proc/kpagecgroup', '/proc/slabinfo',
    '/proc/pagetypeinfo', '/proc/acpi', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
)
# Host settings that tools read: kept readable, writes fail with EROFS.
READ_ONLY = ('/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger')

_FLAGS = K.MS_NOSUID | K.MS_NOEXEC


def _kind(path):
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


def apply(scratch: str = '/dev/.vserver-empty') -> None:
    """Mask and protect the paths above, in the guest's mount namespace.

    ``scratch`` is a free name on a filesystem of the guest's own (its /dev tmpfs): an empty file is made there,
    bound read-only over each masked file, then unlinked (the binds keep it; no temporary mount, whose unmount
    would wait for an RCU grace period)."""
    made = False
    try:
        for path in MASKED:
            mode = _kind(path)
            if mode is None:
                continue
            if stat.S_ISDIR(mode):
                K.mount('tmpfs', path, 'tmpfs', K.MS_RDONLY | K.MS_NODEV | _FLAGS, 'size=4k,nr_inodes=1,mode=555')
                continue
            if not made:
                os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444))
                made = True
            K.mount(scratch, path, None, K.MS_BIND)
            K.mount(None, path, None, K.MS_REMOUNT | K.MS_BIND | K.MS_RDONLY | K.MS_NODEV | _FLAGS)
    finally:
        if made:
            os.unlink(scratch)
    for path in READ_ONLY:
        if _kind(path) is None:  # e.g. kernels built without CONFIG_MAGIC_SYSRQ
            continue
        K.mount(path, path, None, K.MS_BIND)
        K.mount(None, path, None, K.MS_REMOUNT | K.MS_BIND | K.MS_RDONLY | K.MS_NODEV | _FLAGS)
