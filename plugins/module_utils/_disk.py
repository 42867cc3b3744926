# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: a guest's disk limit (floor 2, a mechanism): a per-guest loop image, or a btrfs qgroup.

``disk_state(root)`` reads what the kernel shows; ``disk_plan(root, after, running)`` says what it takes to get
from there to ``after`` (a DiskPlan of named steps); ``disk_execute(root, after, plan)`` runs the steps. The
option's parsing lives in the limits concern; mount and loop calls in _kernel.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from typing import List, NamedTuple, Optional, Tuple

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

DISK_BACKENDS = ('auto', 'loop', 'btrfs')
DISK_FSTYPES = ('ext4', 'xfs')
DISK_MIN = {'ext4': 8 << 20, 'xfs': 300 << 20, 'btrfs': 1 << 20}   # mkfs.xfs refuses filesystems below 300M
CAP_SYS_RESOURCE = 24
# steps that need the guest stopped (the tree moves, or its filesystem is unmounted)
STOPPED_STEPS = ('loop_create', 'loop_remove', 'loop_grow_offline', 'btrfs_subvolume')


class DiskPlan(NamedTuple):
    """What it takes to reach the wanted disk limit: step names (see ``disk_execute``), the same as sentences for
    humans, and whether the guest must be stopped for it."""
    steps: Tuple[str, ...] = ()
    actions: Tuple[str, ...] = ()
    needs_stop: bool = False


def disk_image(root: str) -> str:
    return os.path.normpath(os.path.abspath(root)) + '.disk.img'


def _fstype(path, mountinfo='/proc/self/mountinfo'):
    """Filesystem type of the mount holding ``path`` (like ``findmnt --target``, without a subprocess)."""
    real = os.path.realpath(path)
    best, kind = -1, None
    for entry in P.read_mountinfo(mountinfo):  # later entries stack over earlier ones on the same point
        point = entry['mountpoint']
        if (real == point or real.startswith(point.rstrip('/') + '/')) and len(point) >= best:
            best, kind = len(point), entry['fstype']
    return kind


def _is_mountpoint(path, mountinfo='/proc/self/mountinfo'):
    real = os.path.realpath(path)
    return any(m['mountpoint'] == real for m in P.read_mountinfo(mountinfo))


def disk_resolve(root: str, disk: Optional[dict]) -> Optional[dict]:
    """'auto' -> 'btrfs' when the tree's filesystem is btrfs, else 'loop' (canonical section value)."""
    if not disk:
        return disk
    disk = dict(disk)
    if disk['backend'] == 'auto':
        parent = os.path.dirname(os.path.normpath(os.path.abspath(root)))
        disk['backend'] = 'btrfs' if _fstype(parent) == 'btrfs' else 'loop'
    if disk['backend'] == 'btrfs':
        disk.pop('fstype', None)
        if disk['size'] < DISK_MIN['btrfs']:
            raise VServerError('disk: too small', 'disk')
    elif disk['size'] < DISK_MIN[disk['fstype']]:
        raise VServerError('disk: %d bytes is too small for %s (at least %dM)'
                           % (disk['size'], disk['fstype'], DISK_MIN[disk['fstype']] >> 20), 'disk')
    return disk


def _btrfs_subvolume(path):
    try:
        return _fstype(path) == 'btrfs' and os.stat(path).st_ino == 256
    except OSError:
        return False


def _btrfs_limit(path):
    """The referenced-bytes limit of the subvolume's qgroup: int, 'none', or None (no quota/subvolume)."""
    if not _btrfs_subvolume(path):
        return None
    proc = K.run(['btrfs', 'qgroup', 'show', '-rf', '--raw', path], check=False)
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and re.match(r'^0/\d+$', parts[0]):
            return parts[3] if parts[3] == 'none' else int(parts[3])
    return None


def disk_state(root: str) -> dict:
    """The disk limit the kernel shows for the tree at ``root``: {backend: loop|btrfs|None, size, ...}."""
    image = disk_image(root)
    if os.path.exists(image):
        return {'backend': 'loop', 'size': os.stat(image).st_size, 'fstype': K.blkid_type(image),
                'mounted': _is_mountpoint(root)}
    limit = _btrfs_limit(root)
    if limit not in (None, 'none'):
        return {'backend': 'btrfs', 'size': limit}
    return {'backend': None, 'subvolume': _btrfs_subvolume(root) if os.path.isdir(root) else False}


# --- planning ---------------------------------------------------------------------------------------------------

def disk_plan(root: str, after: Optional[dict], running: bool, cap_sys_resource: Optional[bool] = None) -> DiskPlan:
    """What it takes to go from the disk the kernel shows to ``after`` (a resolved disk section, or None for no
    limit). ``cap_sys_resource``: whether ext4 can grow online (None: ask this process's capabilities)."""
    cur = disk_state(root)
    if not after:
        steps, actions = _plan_none(root, cur)
    elif after['backend'] == 'loop':
        steps, actions = _plan_loop(root, cur, after, cap_sys_resource)
    else:
        steps, actions = _plan_btrfs(root, cur, after)
    needs_stop = running and any(s in STOPPED_STEPS for s in steps)
    return DiskPlan(tuple(steps), tuple(actions), needs_stop)


def _plan_none(root, cur):
    if cur['backend'] == 'loop':
        return ['loop_remove'], ['move the tree out of its disk image %s and delete it' % disk_image(root)]
    if cur['backend'] == 'btrfs':
        return ['btrfs_unlimit'], ['remove the btrfs qgroup limit']
    return [], []


def _plan_loop(root, cur, after, cap_sys_resource):
    if cur['backend'] == 'btrfs':
        raise VServerError('disk_backend: the tree has a btrfs qgroup limit; remove the disk limit first, then '
                           'set a loop image', 'disk_backend')
    if cur['backend'] is None:
        return ['loop_create'], ['create a %dM %s image %s and move the tree into it'
                                 % (after['size'] >> 20, after['fstype'], disk_image(root))]
    if cur['fstype'] and cur['fstype'] != after['fstype']:
        raise VServerError('disk_fstype: the guest\'s image holds %s; to change it remove the disk limit '
                           '(moves the tree out), then set it again' % cur['fstype'], 'disk_fstype')
    if after['size'] < cur['size']:
        raise VServerError('disk: shrinking the %dM image to %dM is not supported (xfs cannot shrink; ext4 '
                           'only offline); remove the disk limit and set it again'
                           % (cur['size'] >> 20, after['size'] >> 20), 'disk')
    if after['size'] == cur['size']:
        return [], []
    if cap_sys_resource is None and (cur['fstype'] or after['fstype']) == 'ext4':
        cap_sys_resource = P.has_effective_cap(CAP_SYS_RESOURCE)
    if (cur['fstype'] or after['fstype']) == 'ext4' and not cap_sys_resource:
        # online ext4 growth (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE: resize offline instead
        steps = ['loop_grow_offline']
    else:
        steps = ['loop_grow']
    return steps, ['grow the disk image to %dM' % (after['size'] >> 20)]


def _plan_btrfs(root, cur, after):
    if cur['backend'] == 'loop':
        raise VServerError('disk_backend: the tree is on a loop image; remove the disk limit first', 'disk_backend')
    if _fstype(os.path.dirname(os.path.normpath(os.path.abspath(root)))) != 'btrfs':
        raise VServerError('disk_backend: btrfs needs the guest tree on a btrfs filesystem', 'disk_backend')
    steps, actions = [], []
    if not _btrfs_subvolume(root):
        steps.append('btrfs_subvolume')
        actions.append('turn the tree into a btrfs subvolume')
    if cur.get('size') != after['size']:
        steps.append('btrfs_limit')
        actions.append('set the btrfs qgroup limit to %dM' % (after['size'] >> 20))
    return steps, actions


# --- executing ----------------------------------------------------------------------------------------------------

def _copy_tree(src, dst, reflink=False):
    argv = ['cp', '-a', '--reflink=always' if reflink else '--reflink=auto', src.rstrip('/') + '/.', dst]
    K.run(argv, timeout=3600)


def disk_ensure_mounted(root: str, disk: Optional[dict]) -> bool:
    """Mount a loop disk's image on the root if it is not; True if it was mounted now."""
    if not disk or disk.get('backend') != 'loop':
        return False
    image = disk_image(root)
    if not os.path.exists(image):
        raise VServerError('disk: the guest\'s disk image %s is missing' % image, 'disk')
    if _is_mountpoint(root):
        return False
    K.mount_loop(image, root)
    return True


def _mkfs(image, fstype):
    if fstype == 'xfs':
        K.run(['mkfs.xfs', '-q', '-f', image], timeout=600)
    else:
        K.run(['mkfs.ext4', '-q', '-F', '-E', 'nodiscard', image], timeout=600)


def _undo_created(created, root):
    """Undo the steps of a failed ``_loop_create``, last first; what cannot be undone is left (best effort)."""
    for kind, path in reversed(created):
        try:
            if kind == 'mount':
                K.umount(path, K.MNT_DETACH)
            elif kind == 'dir':
                os.rmdir(path)
            elif kind == 'file':
                os.unlink(path)
            elif kind == 'renamed':
                os.rename(path, root)
        except OSError:
            pass


def _loop_create(root, disk):
    root = os.path.normpath(os.path.abspath(root))
    image = disk_image(root)
    staging = root + '.disk.new'
    old = root + '.disk.old'
    st = os.stat(root)
    created = []
    try:
        with open(image, 'wb') as handle:
            created.append(('file', image))
            os.fchmod(handle.fileno(), 0o600)
            handle.truncate(disk['size'])
        _mkfs(image, disk['fstype'])
        os.mkdir(staging, 0o700)
        created.append(('dir', staging))
        K.mount_loop(image, staging)
        created.append(('mount', staging))
        _copy_tree(root, staging)
        os.chown(staging, st.st_uid, st.st_gid)
        os.chmod(staging, stat.S_IMODE(st.st_mode))
        K.umount(staging)
        created.pop()
        os.rename(root, old)
        created.append(('renamed', old))
        os.mkdir(root, stat.S_IMODE(st.st_mode))
        created.append(('dir', root))
        K.mount_loop(image, root)
    except BaseException:
        _undo_created(created, root)
        raise
    os.rmdir(staging)
    shutil.rmtree(old)


def loop_remove(root: str) -> None:
    """Move the tree out of its loop image (a plain directory again) and delete the image."""
    root = os.path.normpath(os.path.abspath(root))
    image = disk_image(root)
    out = root + '.disk.out'
    disk_ensure_mounted(root, {'backend': 'loop'})
    st = os.stat(root)
    os.mkdir(out, 0o700)
    try:
        _copy_tree(root, out)
        os.chown(out, st.st_uid, st.st_gid)
        os.chmod(out, stat.S_IMODE(st.st_mode))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    K.umount(root)
    os.rmdir(root)
    os.rename(out, root)
    os.unlink(image)


def _loop_grow(root, disk):
    image = disk_image(root)
    disk_ensure_mounted(root, disk)
    os.truncate(image, disk['size'])
    devices = K.loop_devices(image)
    if not devices:
        raise VServerError('disk: no loop device holds %s' % image, 'disk')
    K.loop_set_capacity(devices[0])
    fstype = disk_state(root).get('fstype') or disk.get('fstype')
    if fstype == 'xfs':
        K.run(['xfs_growfs', os.path.realpath(root)], timeout=600)
    else:
        K.run(['resize2fs', devices[0]], timeout=600)


def _loop_grow_offline(root, disk):
    """ext4 without CAP_SYS_RESOURCE: unmount, check, resize the image file's filesystem, mount again."""
    image = disk_image(root)
    if _is_mountpoint(root):
        K.umount(root)
    os.truncate(image, disk['size'])
    fsck = K.run(['e2fsck', '-f', '-p', image], check=False, timeout=600)
    if fsck.returncode not in (0, 1):
        raise VServerError('disk: e2fsck of %s failed before the resize: %s' % (image, fsck.stdout + fsck.stderr),
                           'disk')
    K.run(['resize2fs', image], timeout=600)
    K.mount_loop(image, root)


def _btrfs_subvolume_convert(root):
    root = os.path.normpath(os.path.abspath(root))
    new = root + '.disk.new'
    old = root + '.disk.old'
    st = os.stat(root)
    K.run(['btrfs', 'subvolume', 'create', new])
    try:
        _copy_tree(root, new, reflink=True)
        os.chown(new, st.st_uid, st.st_gid)
        os.chmod(new, stat.S_IMODE(st.st_mode))
        os.rename(root, old)
    except BaseException:
        K.run(['btrfs', 'subvolume', 'delete', new], check=False)
        raise
    os.rename(new, root)
    shutil.rmtree(old)


def _btrfs_set_limit(root, disk):
    K.run(['btrfs', 'quota', 'enable', root])
    K.run(['btrfs', 'qgroup', 'limit', str(disk['size']), root])


STEPS = {
    'loop_create': _loop_create,
    'loop_remove': lambda root, disk: loop_remove(root),
    'loop_grow': _loop_grow,
    'loop_grow_offline': _loop_grow_offline,
    'btrfs_subvolume': lambda root, disk: _btrfs_subvolume_convert(root),
    'btrfs_limit': _btrfs_set_limit,
    'btrfs_unlimit': lambda root, disk: K.run(['btrfs', 'qgroup', 'limit', 'none', root]),
}


def disk_execute(root: str, after: Optional[dict], plan: DiskPlan) -> List[str]:
    """Run the plan's steps in order; returns the steps done."""
    done = []
    for step in plan.steps:
        STEPS[step](root, after)
        done.append(step)
    return done
