"""Disk limits: a per-guest loop image (ext4/xfs) and a btrfs qgroup, filled from inside the guest."""
import os
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime, _procfs as P, _limits
from ansible_collections.vserver.core.plugins.module_utils import _mgr_limits
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

from helpers import guest_sh


def _mounted(path):
    real = os.path.realpath(path)
    return any(m['mountpoint'] == real for m in P.read_mountinfo('/proc/self/mountinfo'))


@pytest.fixture
def unmount_after():
    """Mount points a test may leave behind on failure (guest roots on images, a btrfs scratch fs)."""
    points = []
    yield points
    for path in reversed(points):
        while _mounted(path):
            subprocess.run(['umount', '-l', path], check=False)


def _df_total_kb(paths, name):
    out = guest_sh(paths, name, 'df -k / | tail -1').stdout.split()
    return int(out[1])


@pytest.mark.parametrize('fstype', ['ext4', 'xfs'])
def test_loop_image_limit(make_guest, host_paths, unmount_after, fstype):
    size = 64 if fstype == 'ext4' else 300
    doc = make_guest('vst-disk', stop_timeout=1, stop_signal='SIGKILL')
    root = doc['root']
    unmount_after.append(root)
    image = _limits.disk_image(root)
    # stopped guest: the tree moves into the image at once
    params = {'disk': '%dM' % size, 'disk_backend': 'loop', 'disk_fstype': fstype}
    result = _mgr_limits.ensure_dict(host_paths, 'vst-disk', params)
    assert result['changed'] and not result['restart_required']
    assert result['diff']['after']['disk'] == {'size': size << 20, 'backend': 'loop', 'fstype': fstype}
    assert os.path.getsize(image) == size << 20 and _mounted(root)
    assert os.path.exists(os.path.join(root, 'bin', 'busybox'))
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-disk', params)['changed']
    _runtime.start(host_paths, _limits_doc(host_paths, 'vst-disk'))
    total = _df_total_kb(host_paths, 'vst-disk')
    assert total <= size * 1024
    fill = guest_sh(host_paths, 'vst-disk', 'dd if=/dev/zero of=/big bs=1M count=%d' % (size + 40), timeout=120)
    assert fill.returncode != 0 and 'No space left on device' in fill.stderr, fill
    guest_sh(host_paths, 'vst-disk', 'rm -f /big')
    grown = size + 32
    grow = _mgr_limits.ensure_dict(host_paths, 'vst-disk', dict(params, disk='%dM' % grown), restart=True)
    assert grow['changed'] and os.path.getsize(image) == grown << 20
    if fstype == 'ext4' and not _limits.Host().has_cap(_limits.CAP_SYS_RESOURCE):
        # online ext4 growth needs CAP_SYS_RESOURCE, which this host's root lacks: the guest was stopped for an
        # offline resize and started again
        assert grow['restarted']
    else:
        assert not grow['restarted'] and not grow['restart_required']        # xfs (and ext4 with the cap): live
    assert _df_total_kb(host_paths, 'vst-disk') > total + 20 * 1024
    with pytest.raises(VServerError) as err:
        _mgr_limits.ensure_dict(host_paths, 'vst-disk', dict(params, disk='%dM' % (grown - 8)))
    assert err.value.field == 'disk' and 'shrink' in str(err.value)
    # removal on a running guest waits for a restart ...
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-disk', {})['changed']        # a task without disk keeps it
    pending = _mgr_limits.ensure_dict(host_paths, 'vst-disk', {'disk': 'none'})
    assert pending['restart_required'] and os.path.exists(image) and _mounted(root)
    assert pending['actions'] == ['update config',
                                  'at the next start: move the tree out of its disk image %s and delete it' % image]
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-disk', {'disk': 'none'})['changed']
    # ... and happens at the next start (here a plain stop and start): the tree is a plain directory again
    current = _limits_doc(host_paths, 'vst-disk')
    _runtime.stop(host_paths, current)
    assert os.path.exists(image)
    _runtime.start(host_paths, current)
    assert not os.path.exists(image) and not _mounted(root)
    assert os.path.exists(os.path.join(root, 'bin', 'busybox'))
    assert _runtime.Runtime(host_paths, 'vst-disk').init_pid()


def _limits_doc(paths, name):
    from ansible_collections.vserver.core.plugins.module_utils import _config
    return _config.load(paths, name)


def test_btrfs_qgroup_limit(make_guest, host_paths, tmp_path, unmount_after):
    image = str(tmp_path / 'btrfs.img')
    mnt = str(tmp_path / 'btrfs')
    os.mkdir(mnt)
    with open(image, 'wb') as handle:
        handle.truncate(256 << 20)
    subprocess.run(['mkfs.btrfs', '-q', image], check=True, timeout=60)
    subprocess.run(['mount', '-o', 'loop', image, mnt], check=True)
    unmount_after.append(mnt)
    tree = os.path.join(mnt, 'guests')
    os.mkdir(tree)
    doc = make_guest('vst-btrfs', stop_timeout=1, stop_signal='SIGKILL')
    root = os.path.join(tree, 'vst-btrfs')
    subprocess.run(['cp', '-a', doc['root'], root], check=True)
    from ansible_collections.vserver.core.plugins.module_utils import _config
    doc['root'] = root
    _config.save(host_paths, doc)

    result = _mgr_limits.ensure_dict(host_paths, 'vst-btrfs', {'disk': '32M'})       # backend auto -> btrfs
    assert result['changed'] and result['diff']['after']['disk'] == {'size': 32 << 20, 'backend': 'btrfs'}
    assert os.stat(root).st_ino == 256                                        # a subvolume now
    assert _limits._btrfs_limit(root) == 32 << 20
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-btrfs', {'disk': '32M'})['changed']
    _runtime.start(host_paths, _config.load(host_paths, 'vst-btrfs'))
    fill = guest_sh(host_paths, 'vst-btrfs', 'dd if=/dev/zero of=/big bs=1M count=64 && sync', timeout=120)
    assert fill.returncode != 0 and 'Disk quota exceeded' in fill.stderr, fill
    # a btrfs limit changes live
    live = _mgr_limits.ensure_dict(host_paths, 'vst-btrfs', {'disk': '128M'})
    assert live['changed'] and not live['restart_required'] and _limits._btrfs_limit(root) == 128 << 20
    _runtime.stop(host_paths, _config.load(host_paths, 'vst-btrfs'))
    subprocess.run(['btrfs', 'subvolume', 'delete', root], check=False, capture_output=True)
