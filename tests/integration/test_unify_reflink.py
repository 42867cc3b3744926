"""method: reflink on a loop-mounted XFS (reflink=1): shared extents, true copy-on-write, df shows the space."""
import os
import random
import subprocess
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K, _runtime
from ansible_collections.vserver.core.plugins.module_utils import _enter
from test_unify import inode, sha, unify, write

MB = 1 << 20


@pytest.fixture
def xfs_mount(tmp_path):
    """A 300 MB sparse image, mkfs.xfs -m reflink=1, on a loop device; all of it removed afterwards."""
    img = str(tmp_path / 'xfs.img')
    with open(img, 'wb') as handle:
        handle.truncate(300 * MB)
    subprocess.run(['mkfs.xfs', '-q', '-m', 'reflink=1', img], check=True, capture_output=True)
    loop = subprocess.run(['losetup', '--find', '--show', img], check=True, capture_output=True,
                          text=True).stdout.strip()
    mnt = str(tmp_path / 'xfs')
    os.mkdir(mnt)
    try:
        subprocess.run(['mount', '-t', 'xfs', loop, mnt], check=True, capture_output=True)
        yield mnt
    finally:
        for dummy in range(50):
            unmounted = subprocess.run(['umount', mnt], capture_output=True, check=False).returncode == 0
            if unmounted or not os.path.ismount(mnt):
                break
            time.sleep(0.1)
        else:
            subprocess.run(['umount', '-l', mnt], capture_output=True, check=False)
        subprocess.run(['losetup', '-d', loop], capture_output=True, check=False)
        os.unlink(img)


def df_used(mnt):
    """Used bytes as df reports them."""
    out = subprocess.run(['df', '-B1', '--output=used', mnt], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def test_reflink_shares_extents_and_stays_copy_on_write(xfs_mount, host_paths, make_guest):
    host_paths.tree_dir = os.path.join(xfs_mount, 'trees')
    a, b = make_guest('ra'), make_guest('rb')
    rnd = random.Random(3)
    blobs = [rnd.randbytes(8 * MB) for dummy in range(3)]
    for doc, uid in ((a, 0), (b, 1)):  # owners differ: reflinked inodes keep their own metadata
        for i, blob in enumerate(blobs):
            write(os.path.join(doc['root'], 'usr/lib/vstest/blob%d' % i), blob, uid=uid)
    write(os.path.join(b['root'], 'usr/lib/vstest/blob-near'), blobs[0][:-1] + b'\xff')
    os.sync()
    used = df_used(xfs_mount)

    dry = unify(host_paths, {'method': 'reflink'}, check_mode=True)
    assert df_used(xfs_mount) == used
    out = unify(host_paths, {'method': 'reflink'})
    assert out['methods'] == ['reflink'] and out['changed'] is True
    assert out['linked'] == dry['linked'] >= 3 and out['bytes_saved'] == dry['bytes_saved'] >= 24 * MB
    os.sync()
    freed = used - df_used(xfs_mount)
    assert freed >= 0.9 * 24 * MB, 'df shows %d bytes freed' % freed
    pa, pb = (os.path.join(d['root'], 'usr/lib/vstest/blob0') for d in (a, b))
    assert inode(pa) != inode(pb) and os.lstat(pb).st_uid == 1
    fa, fb = os.open(pa, os.O_RDONLY), os.open(pb, os.O_RDONLY)
    try:
        assert K.extents(fa) == K.extents(fb)
    finally:
        os.close(fa)
        os.close(fb)
    near = os.path.join(b['root'], 'usr/lib/vstest/blob-near')
    fn, fa = os.open(near, os.O_RDONLY), os.open(pa, os.O_RDONLY)
    try:
        assert K.extents(fn) != K.extents(fa)
    finally:
        os.close(fn)
        os.close(fa)
    assert not K.path_flags(pa) & K.FS_IMMUTABLE_FL  # copy-on-write needs no protection

    again = unify(host_paths, {'method': 'reflink'})
    assert again['changed'] is False and again['linked'] == 0 and again['hashed'] == 0
    assert unify(host_paths, {'method': 'auto'})['methods'] == ['reflink']

    b_sha = sha(pb)
    _runtime.start(host_paths, a)
    try:
        assert _enter.enter_guest(host_paths, a, ['/bin/sh', '-c', 'echo more >> /usr/lib/vstest/blob0']) == 0
    finally:
        _runtime.stop(host_paths, dict(a, stop_timeout=1))
    assert sha(pb) == b_sha != sha(pa)
    with open(pa, 'rb') as handle:
        assert handle.read() == blobs[0] + b'more\n'
