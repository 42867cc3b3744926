"""vserver.core.unify on the real kernel: three busybox guests plus generated files, seen from outside
(inodes, flags, contents) and from inside a running guest (what its root can and cannot do)."""
import hashlib
import os
import random
import stat
import struct
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _kernel as K, _mgr_unify, _runtime, _unify
from ansible_collections.vserver.core.plugins.module_utils import _enter
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

T0 = 1700000000
# A valid VFS_CAP_REVISION_2 security.capability value: cap_net_bind_service (bit 10), effective.
CAP_NET_BIND = struct.pack('<IIIII', 0x02000001, 1 << 10, 0, 0, 0)
CAP_CHOWN = struct.pack('<IIIII', 0x02000001, 1 << 0, 0, 0, 0)


def unify(paths, params=None, check_mode=False):
    """The unify manager's result as the module returns it."""
    return _mgr_unify.ensure(paths, None, params, check_mode).to_dict()


def clear_immutable(top):
    """Unified trees carry immutable inodes: clear them so the test's tmp dir can be removed."""
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                K.set_immutable(fd, False)
            except OSError:
                pass
            finally:
                os.close(fd)


@pytest.fixture
def unify_paths(host_paths):
    yield host_paths
    clear_immutable(host_paths.tree_dir)


def write(path, data, mode=0o644, uid=0, gid=0, mtime=T0, xattrs=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for name, value in (xattrs or {}).items():
        os.setxattr(path, name, value)
    os.utime(path, (mtime, mtime))


def populate(root, variant):
    """Generated files: identical across guests unless ``variant`` ('c') makes a near-duplicate."""
    rnd = random.Random(7)
    base = os.path.join(root, 'usr/share/vstest')
    for i in range(40):
        data = rnd.randbytes(rnd.randint(100, 120000))
        kw = {}
        if i % 3 == 1:
            kw.update(uid=1, gid=1, mode=0o600)
        if i % 5 == 2:
            kw.update(mode=0o755)
        if i % 7 == 3:
            kw.update(xattrs={'user.vstest': b'same'})
        write(os.path.join(base, 'dup%02d' % i), data, **kw)
        if i == 0:
            write(os.path.join(base, 'sub/dup00-again'), data)  # a duplicate inside one guest too
    last = rnd.randbytes(30000)
    c = variant == 'c'
    write(os.path.join(base, 'lastbyte'), last[:-1] + (b'\x01' if c else b'\x00'))
    body = rnd.randbytes(20000)
    write(os.path.join(base, 'modeonly'), body, mode=0o600 if c else 0o644)
    write(os.path.join(base, 'owneronly'), body + b'o', uid=2 if c else 0)
    write(os.path.join(base, 'grouponly'), body + b'g', gid=2 if c else 0)
    write(os.path.join(base, 'xattronly'), body + b'x', xattrs={'user.vstest': b'2' if c else b'1'})
    write(os.path.join(base, 'mtimeonly'), body + b'm', mtime=T0 + (10 if c else 0))
    write(os.path.join(base, 'caps'), body + b'c', mode=0o755,
          xattrs={'security.capability': CAP_CHOWN if c else CAP_NET_BIND})
    write(os.path.join(base, 'empty'), b'')
    os.symlink('dup01', os.path.join(base, 'link-to-dup01'))
    os.mkfifo(os.path.join(base, 'fifo'))
    # excluded paths: identical, but must stay private
    write(os.path.join(root, 'var/lib/vstest/same.bin'), body + b'v')
    write(os.path.join(root, 'root/same.bin'), body + b'r')
    write(os.path.join(root, 'usr/share/vstest/conf.cfg'), body + b'conffile')
    write(os.path.join(root, 'var/lib/dpkg/info/vstest.conffiles'), b'/etc/vstest.conf\n/usr/share/vstest/conf.cfg\n')
    # re-included below an excluded directory
    write(os.path.join(root, 'var/lib/shared/blob'), body + b'shared')


EXCLUDED = ('etc/passwd', 'etc/hostname', 'var/lib/vstest/same.bin', 'root/same.bin', 'usr/share/vstest/conf.cfg')


def inode(path):
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def manifest(roots):
    """Every regular file: content hash, owner, group, mode, mtime and xattrs (what must never change)."""
    out = {}
    for root in roots:
        for top, dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                      for n in os.listxattr(path, follow_symlinks=False)))
                out[path] = (sha(path), st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, xattrs)
    return out


def expected_classes(roots, rel_tops=('usr', 'bin', 'sbin', 'lib', 'opt'), extra=()):
    """The oracle: included non-empty regular files grouped by (content, owner, group, mode, mtime, xattrs)."""
    classes = {}
    for root in roots:
        for rel_top in rel_tops + tuple(extra):
            for top, dirs, files in os.walk(os.path.join(root, rel_top)):
                for name in files:
                    path = os.path.join(top, name)
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or path.endswith('/vstest/conf.cfg'):
                        continue
                    xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                          for n in os.listxattr(path, follow_symlinks=False)))
                    key = (sha(path), st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, xattrs)
                    classes.setdefault(key, []).append(path)
    return classes


@pytest.fixture
def three(unify_paths, make_guest):
    docs = {}
    for name in ('a', 'b', 'c'):
        docs[name] = make_guest(name)
        populate(docs[name]['root'], name)
    return docs


def test_unify_links_only_equal_files(three, unify_paths):
    roots = [three[n]['root'] for n in 'abc']
    before = manifest(roots)
    classes = expected_classes(roots, extra=('var/lib/shared',))
    want_linked = sum(len(paths) - 1 for paths in classes.values())
    params = {'include': ['/var/lib/shared/**']}

    dry = unify(unify_paths, params, check_mode=True)
    assert dry['changed'] is True
    assert manifest(roots) == before
    assert all(os.lstat(p).st_nlink == 1 for p in before), 'check mode linked something'
    assert not os.path.exists(os.path.join(unify_paths.config_dir, _unify.INDEX_NAME))

    real = unify(unify_paths, params)
    assert real['changed'] is True
    for key in ('files_scanned', 'candidates', 'linked', 'bytes_saved', 'protected', 'skipped_by_reason'):
        assert dry[key] == real[key], key
    assert real['linked'] == want_linked
    assert real['files_scanned'] == sum(len(paths) for paths in classes.values())
    assert real['skipped_by_reason']['empty'] == 3 and real['skipped_by_reason']['special'] == 3
    assert real['skipped_by_reason']['symlink'] >= 3 and real['skipped_by_reason']['excluded'] >= 3 * 9
    assert real['diff']['before']['shared_paths'] == 0
    assert real['diff']['after']['shared_paths'] == sum(len(p) for p in classes.values() if len(p) > 1)

    # only truly equal files share an inode; every class shares exactly one
    seen = {}
    for key, paths in classes.items():
        inodes = {inode(p) for p in paths}
        assert len(inodes) == 1, paths
        for ino in inodes:
            assert ino not in seen, (paths, seen.get(ino))
            seen[ino] = paths
    a, b, c = roots
    for rel in ('lastbyte', 'modeonly', 'owneronly', 'grouponly', 'xattronly', 'mtimeonly', 'caps'):
        pa, pb, pc = (os.path.join(r, 'usr/share/vstest', rel) for r in roots)
        assert inode(pa) == inode(pb) != inode(pc), rel
    assert inode(os.path.join(a, 'usr/share/vstest/dup00')) == \
        inode(os.path.join(c, 'usr/share/vstest/sub/dup00-again'))
    assert inode(os.path.join(a, 'var/lib/shared/blob')) == inode(os.path.join(b, 'var/lib/shared/blob'))
    for rel in EXCLUDED:
        assert len({inode(os.path.join(r, rel)) for r in roots}) == 3, rel
    # nothing lost or changed: same paths, contents, owners, modes, mtimes, xattrs
    assert manifest(roots) == before
    # shared inodes are immutable, private ones are not
    for key, paths in classes.items():
        flags = K.path_flags(paths[0])
        assert bool(flags & K.FS_IMMUTABLE_FL) == (len(paths) > 1), paths
    assert not K.path_flags(os.path.join(c, 'usr/share/vstest/lastbyte')) & K.FS_IMMUTABLE_FL

    again = unify(unify_paths, params)
    assert again['changed'] is False
    assert again['linked'] == again['hashed'] == again['protected'] == 0
    assert again['diff']['before'] == again['diff']['after']
    assert _config.load(unify_paths, 'a')['unify'] == {'state': 'present', 'method': 'hardlink', 'protect': True}

    # protect: false lifts the flags this module set (and only those), once
    shared = [paths[0] for paths in classes.values() if len(paths) > 1]
    off = unify(unify_paths, dict(params, protect=False))
    assert off['changed'] is True and off['unprotected'] == len(shared) and off['linked'] == 0
    assert not any(K.path_flags(p) & K.FS_IMMUTABLE_FL for p in shared)
    assert unify(unify_paths, dict(params, protect=False))['changed'] is False
    # ignore_mtime: the files differing only in their mtime are equal now
    mt = [os.path.join(r, 'usr/share/vstest/mtimeonly') for r in roots]
    loose = unify(unify_paths, dict(params, ignore_mtime=True))
    assert loose['linked'] == 1 and loose['protected'] == len(shared)
    assert len({inode(p) for p in mt}) == 1 and manifest(roots).keys() == before.keys()


def test_bad_input_fails_before_anything_is_written(three, unify_paths):
    roots = [three[n]['root'] for n in 'abc']
    before = manifest(roots)
    for params, field in (({'guests': ['nosuch']}, 'guests'), ({'method': 'copy'}, 'method'),
                          ({'exclude': ['/usr/../etc']}, 'exclude'), ({'method': 'reflink'}, 'method'),
                          ({'protect': 'yes'}, 'protect'), ({'state': 'gone'}, 'state')):
        with pytest.raises(VServerError) as err:
            unify(unify_paths, params)
        assert err.value.field == field, params
    assert manifest(roots) == before
    assert all(os.lstat(p).st_nlink == 1 for p in before)
    assert all((_config.load(unify_paths, n).get('unify') is None) for n in 'abc')
    # auto on a filesystem without shared extents (the test's tmp dir): hardlinks
    assert unify(unify_paths, {'method': 'auto'})['methods'] == ['hardlink']


def run_in(unify_paths, doc, script):
    return _enter.enter_guest(unify_paths, doc, ['/bin/sh', '-c', script])


def test_guest_cannot_modify_a_unified_file_until_deunified(three, unify_paths):
    a, b, c = (three[n] for n in 'abc')
    unify(unify_paths, {})
    target = 'usr/share/vstest/dup04'
    pb = os.path.join(b['root'], target)
    b_sha = sha(pb)
    a_st = os.lstat(os.path.join(a['root'], target))
    a_caps = os.getxattr(os.path.join(a['root'], 'usr/share/vstest/caps'), 'security.capability')
    _runtime.start(unify_paths, a)
    try:
        guest_file = '/' + target
        # control: root in the guest can write a private file
        assert run_in(unify_paths, a, 'echo ok >> /root/same.bin') == 0
        assert run_in(unify_paths, a, 'echo x >> %s' % guest_file) != 0
        assert run_in(unify_paths, a, ': > %s' % guest_file) != 0
        assert run_in(unify_paths, a, 'echo y > /tmp/new && mv -f /tmp/new %s' % guest_file) != 0
        assert run_in(unify_paths, a, 'rm -f %s' % guest_file) != 0
        assert run_in(unify_paths, a, 'chmod 777 %s' % guest_file) != 0
        assert sha(pb) == b_sha and inode(pb) == inode(os.path.join(a['root'], target))

        out = unify(unify_paths, {'guests': ['a'], 'state': 'absent'})
        assert out['changed'] is True and out['deunified'] > 0
        assert out['diff']['after']['shared_paths'] == 0 < out['diff']['before']['shared_paths']
        pa = os.path.join(a['root'], target)
        st = os.lstat(pa)
        assert inode(pa) != inode(pb) and st.st_nlink == 1
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == \
            (a_st.st_mode, a_st.st_uid, a_st.st_gid, a_st.st_mtime_ns)
        assert os.getxattr(os.path.join(a['root'], 'usr/share/vstest/caps'), 'security.capability') == a_caps
        assert not K.path_flags(pa) & K.FS_IMMUTABLE_FL
        assert K.path_flags(pb) & K.FS_IMMUTABLE_FL  # b and c still share theirs
        # the guest's own hardlinks stay hardlinks, to its private copy
        a0, a1 = (os.path.join(a['root'], 'usr/share/vstest', rel) for rel in ('dup00', 'sub/dup00-again'))
        assert inode(a0) == inode(a1) != inode(os.path.join(b['root'], 'usr/share/vstest/dup00'))
        assert os.lstat(a0).st_nlink == 2
        assert run_in(unify_paths, a, 'echo x >> %s' % guest_file) == 0
        assert sha(pa) != b_sha and sha(pb) == b_sha
        assert unify(unify_paths, {'guests': ['a'], 'state': 'absent'})['changed'] is False
        # a de-unified guest is left out of "all" until it is named again
        assert unify(unify_paths, {})['guests'] == ['b', 'c']
        again = unify(unify_paths, {'guests': ['a']})
        assert again['sources'] == ['b', 'c'] and again['linked'] > 0
        assert inode(pa) != inode(pb)  # the modified file stays private
        assert inode(os.path.join(a['root'], 'usr/share/vstest/dup05')) == \
            inode(os.path.join(b['root'], 'usr/share/vstest/dup05'))
    finally:
        _runtime.stop(unify_paths, dict(a, stop_timeout=1))


def test_deunifying_guests_together_gives_each_its_own_files(three, unify_paths):
    """De-unified in one call, guests must not keep sharing inodes with each other (writable now): root in one
    would write into the other's files. Each gets private copies; the originals stay with one of them."""
    a, b, c = (three[n] for n in 'abc')
    unify(unify_paths, {})
    target = 'usr/share/vstest/dup04'
    pa, pb, pc = (os.path.join(g['root'], target) for g in (a, b, c))
    assert inode(pa) == inode(pb) == inode(pc)
    check = unify(unify_paths, {'guests': ['a', 'b'], 'state': 'absent'}, check_mode=True)
    assert check['changed'] and inode(pa) == inode(pb)
    out = unify(unify_paths, {'guests': ['a', 'b'], 'state': 'absent'})
    assert out['changed'] and out['deunified'] > 0 and out['guests'] == ['a', 'b']
    assert len({inode(pa), inode(pb), inode(pc)}) == 3
    for path in (pa, pb):
        assert not K.path_flags(path) & K.FS_IMMUTABLE_FL
    assert K.path_flags(pc) & K.FS_IMMUTABLE_FL or os.lstat(pc).st_nlink == 1
    # all three at once: nothing shared across guests afterwards, and a later unify links them again
    unify(unify_paths, {'guests': ['all'], 'state': 'absent'})
    assert len({inode(pa), inode(pb), inode(pc)}) == 3
    assert not any(K.path_flags(p) & K.FS_IMMUTABLE_FL for p in (pa, pb, pc))
    assert not unify(unify_paths, {'guests': ['all'], 'state': 'absent'})['changed']
    again = unify(unify_paths, {'guests': ['a', 'b', 'c']})
    assert again['linked'] > 0 and inode(pa) == inode(pb) == inode(pc)


def test_symlinks_out_of_a_tree_are_never_followed(three, unify_paths, tmp_path):
    """A guest plants a symlink to a host directory holding a file equal to one of its own: the host file
    is never read, linked or protected."""
    host_dir = tmp_path / 'host-secrets'
    host_dir.mkdir()
    victim = host_dir / 'dup05'
    src = os.path.join(three['b']['root'], 'usr/share/vstest/dup05')
    st = os.lstat(src)
    write(str(victim), open(src, 'rb').read(), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
          mtime=st.st_mtime)
    os.symlink(str(host_dir), os.path.join(three['a']['root'], 'usr/share/vstest/evil'))
    os.symlink(str(victim), os.path.join(three['a']['root'], 'usr/share/vstest/evil-file'))
    out = unify(unify_paths, {})
    assert out['linked'] > 0
    assert os.lstat(victim).st_nlink == 1 and not K.path_flags(str(victim)) & K.FS_IMMUTABLE_FL
    assert os.path.islink(os.path.join(three['a']['root'], 'usr/share/vstest/evil'))


def test_open_files_and_other_filesystems_are_skipped(three, unify_paths):
    path = os.path.join(three['b']['root'], 'usr/share/vstest/dup07')
    mnt = os.path.join(three['a']['root'], 'usr/share/vstest/mnt')
    os.mkdir(mnt)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'vstest-unify', mnt], check=True)
    try:
        write(os.path.join(mnt, 'dup08'), open(os.path.join(three['c']['root'], 'usr/share/vstest/dup08'), 'rb').read())
        with open(path, 'ab'):
            out = unify(unify_paths, {})
        assert out['skipped_by_reason']['other_filesystem'] == 1
        assert os.lstat(os.path.join(mnt, 'dup08')).st_nlink == 1
    finally:
        subprocess.run(['umount', mnt], check=True)
    assert out['skipped_by_reason']['open_for_write'] == 1
    assert os.lstat(path).st_nlink == 1
    assert inode(os.path.join(three['a']['root'], 'usr/share/vstest/dup07')) == \
        inode(os.path.join(three['c']['root'], 'usr/share/vstest/dup07'))
    out = unify(unify_paths, {})
    assert out['linked'] == 1 and 'open_for_write' not in out['skipped_by_reason']
