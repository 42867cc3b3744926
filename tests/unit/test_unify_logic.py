"""Pure logic of unify (validation, rsync-like rules, conffiles, the index, the walk) and its kernel helpers on
files of the test's own tmp dir (content partition, open-for-write detection, flags)."""
import hashlib
import mmap
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K, _unify, _unify_index, _unify_prove, _walk
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._unify_index import IndexRow
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


@pytest.mark.parametrize('params, field', [
    ({'guests': []}, 'guests'),
    ({'guests': ['all', 'web']}, 'guests'),
    ({'guests': [1]}, 'guests'),
    ({'state': 'deleted'}, 'state'),
    ({'method': 'copy'}, 'method'),
    ({'ignore_mtime': 'no'}, 'ignore_mtime'),
    ({'protect': 1}, 'protect'),
    ({'exclude': '/usr/../etc'}, 'exclude'),
    ({'exclude': ['']}, 'exclude'),
    ({'exclude': ['/']}, 'exclude'),
    ({'exclude': [5]}, 'exclude'),
    ({'include': ['/var//lib']}, 'include'),
    ({'bogus': 1}, 'bogus'),
])
def test_validate_names_the_field(params, field):
    with pytest.raises(VServerError) as err:
        _unify.validate(params)
    assert err.value.field == field


def test_validate_defaults():
    p = _unify.validate({'guests': None, 'exclude': None})
    assert p['guests'] == ['all'] and p['method'] == 'hardlink' and p['protect'] is True
    assert p['exclude'] == list(_unify.DEFAULT_EXCLUDE) and p['include'] == []
    assert _unify.validate({'guests': 'web', 'exclude': '*.pyc'})['exclude'] == ['*.pyc']


def test_select_picks_from_the_documents_passed_in(tmp_path):
    """The concern reads no config: the manager passes the documents and the broken ones in (_config.scan)."""
    tmp_path = type(tmp_path)(os.path.realpath(str(tmp_path)))   # roots are compared as real paths

    def doc(name, state=None, root=None):
        out = {'name': name, 'root': root or str(tmp_path / name)}
        if state:
            out['unify'] = {'state': state}
        return out

    os.symlink(str(tmp_path / 'b'), str(tmp_path / 'link'))
    docs = {'a': doc('a', 'present'), 'b': doc('b', root=str(tmp_path / 'link')), 'c': doc('c', 'absent'),
            'd': doc('d', 'present')}
    broken = {'zz': VServerError('/etc/vservers/zz.json: holds a JSON list, not a JSON object')}
    sel = _unify.select(_unify.validate({'guests': 'b'}), docs, broken)
    assert sel.docs is docs and sel.selected == ['b'] and sel.sources == ['a', 'd']
    assert sel.roots == {'b': str(tmp_path / 'b'), 'a': str(tmp_path / 'a'), 'd': str(tmp_path / 'd')}
    sel = _unify.select(_unify.validate({'guests': 'all'}), docs, broken)
    assert sel.selected == ['a', 'b', 'd'] and sel.sources == []     # broken and unified-absent guests skipped
    sel = _unify.select(_unify.validate({'guests': 'all', 'state': 'absent'}), docs, broken)
    assert sel.selected == ['a', 'b', 'c', 'd'] and sel.sources == []
    for guests, message in (('zz', 'guests: /etc/vservers/zz.json: holds a JSON list, not a JSON object'),
                            ('nope', "guests: no guest named 'nope' on this host (known: a, b, c, d)")):
        with pytest.raises(VServerError) as err:
            _unify.select(_unify.validate({'guests': guests}), docs, broken)
        assert (str(err.value), err.value.field) == (message, 'guests')
    with pytest.raises(VServerError) as err:
        _unify.select(_unify.validate({'guests': 'nope'}), {}, {})
    assert str(err.value) == "guests: no guest named 'nope' on this host (known: none)"
    nested = dict(docs, e=doc('e', root=str(tmp_path / 'a' / 'sub')))
    with pytest.raises(VServerError) as err:
        _unify.select(_unify.validate({'guests': 'e'}), nested, {})
    assert str(err.value) == 'guests: the trees of a (%s) and e (%s) overlap' % (tmp_path / 'a', tmp_path / 'a/sub')
    with pytest.raises(VServerError) as err:
        _unify.select(_unify.validate({'guests': 'x'}), {'x': {'name': 'x', 'root': ''}}, {})
    assert str(err.value) == 'guest x has no root in its config'


RULES = [
    # exclude, include, path, is_dir, parent_excluded, excluded?
    (['/etc'], [], '/etc', True, False, True),
    (['/etc'], [], '/usr/etc', True, False, False),
    (['etc'], [], '/usr/etc', True, False, True),
    (['/usr/share/doc/'], [], '/usr/share/doc', False, False, False),
    (['/usr/share/doc/'], [], '/usr/share/doc', True, False, True),
    (['*.pyc'], [], '/usr/lib/python3/x.pyc', False, False, True),
    (['*.pyc'], [], '/usr/lib/python3/x.py', False, False, False),
    (['/usr/*/doc'], [], '/usr/share/doc', True, False, True),
    (['/usr/*/doc'], [], '/usr/share/x/doc', True, False, False),
    (['/usr/**/doc'], [], '/usr/share/x/doc', True, False, True),
    (['/opt/app?'], [], '/opt/app1', True, False, True),
    (['/opt/app[0-9]'], [], '/opt/appx', True, False, False),
    (['lib/cache'], [], '/var/lib/cache', True, False, True),
    (['/var'], ['/var/lib/static/**'], '/var/lib/static/a/b', False, True, False),
    (['/var'], ['/var/lib/static/**'], '/var/lib/other', False, True, True),
    (['/var'], [], '/var/lib/x', False, True, True),
    ([], [], '/usr/bin/ls', False, False, False),
]


@pytest.mark.parametrize('exclude, include, path, is_dir, parent, expected', RULES)
def test_rules_verdict(exclude, include, path, is_dir, parent, expected):
    assert _walk.Rules(exclude, include).verdict(path, is_dir, parent) is expected


@pytest.mark.parametrize('include, directory, expected', [
    (['/var/lib/static/**'], '/var', True),
    (['/var/lib/static/**'], '/var/lib', True),
    (['/var/lib/static/**'], '/var/log', False),
    (['/var/lib/static/**'], '/var/lib/static/deep/er', True),
    (['/var/*/static'], '/var/lib', True),
    (['*.so'], '/var/anything', True),
    ([], '/var', False),
])
def test_rules_descend_into_excluded_dir_only_for_includes(include, directory, expected):
    assert _walk.Rules(['/var'], include).may_include_below(directory) is expected


def test_conffiles_are_literal_excludes(tmp_path):
    info = tmp_path / 'var/lib/dpkg/info'
    info.mkdir(parents=True)
    (info / 'base-files.conffiles').write_text('/etc/issue\n/etc/host.conf\n')
    (info / 'x.conffiles').write_text('remove-on-upgrade /usr/share/x/old.conf\n/opt/[weird]*.conf\n')
    (info / 'x.list').write_text('/usr/bin/x\n')
    found = _unify.conffiles(str(tmp_path))
    assert sorted(found) == ['/etc/host.conf', '/etc/issue', '/opt/[weird]*.conf', '/usr/share/x/old.conf']
    rules = _walk.Rules([], [], found)
    assert rules.verdict('/opt/[weird]*.conf', False, False) is True
    assert rules.verdict('/opt/w.conf', False, False) is False  # literal, not a glob
    assert _unify.conffiles(str(tmp_path / 'nothing')) == []


def scan_tree(root):
    scan = _walk.Scan(_unify.Node)
    _walk.walk(str(root), 'g', True, _walk.Rules([]), scan, set())
    return scan


def test_partition_proves_byte_equality_and_hashes_once(tmp_path):
    big = os.urandom(3 * _unify_prove.CHUNK + 17)
    files = {'a': big, 'b': big, 'c': big[:-1] + bytes([big[-1] ^ 1]), 'd': big, 'e': bytes(len(big))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.setxattr(str(tmp_path / 'd'), 'user.k', b'v')
    scan = scan_tree(tmp_path)
    try:
        nodes = sorted(scan.nodes.values(), key=lambda n: n.paths[0].name)
        classes = {tuple(sorted(n.paths[0].name for n in members)): digest
                   for digest, members in _unify_prove.partition(nodes)}
        assert set(classes) == {('a', 'b'), ('c',), ('d',), ('e',)}
        assert classes[('a', 'b')] == hashlib.sha256(big).digest()
        assert classes[('e',)] == hashlib.sha256(files['e']).digest()
        for node in nodes:
            node.xattr = None
        merged = {tuple(sorted(n.paths[0].name for n in members))
                  for dummy, members in _unify_prove.partition(nodes, xattrs=False)}
        assert ('a', 'b', 'd') in merged  # reflinks ignore xattrs: each inode keeps its own
    finally:
        scan.dirs.close()


def test_walk_skips_symlinks_specials_empty_and_other_mounts(tmp_path):
    (tmp_path / 'f').write_bytes(b'x')
    (tmp_path / 'empty').write_bytes(b'')
    os.symlink('/etc/passwd', str(tmp_path / 'evil'))
    os.mkfifo(str(tmp_path / 'fifo'))
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'g').write_bytes(b'y')
    scan = scan_tree(tmp_path)
    try:
        names = sorted(e.name for n in scan.nodes.values() for e in n.paths)
        assert names == ['f', 'g']
        assert scan.skipped == {'symlink': 1, 'special': 1, 'empty': 1}
    finally:
        scan.dirs.close()


def test_open_for_write_sees_writers_and_shared_writable_maps(tmp_path):
    w, r, m = tmp_path / 'w', tmp_path / 'r', tmp_path / 'm'
    for path in (w, r, m):
        path.write_bytes(b'data' * 1024)
    key = {p: (os.lstat(p).st_dev, os.lstat(p).st_ino) for p in (w, r, m)}
    with open(w, 'ab'), open(r, 'rb'):
        fd = os.open(m, os.O_RDWR)
        mapped = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)  # only the mapping remains
        try:
            busy = P.open_for_write()
        finally:
            mapped.close()
    assert key[w] in busy and key[m] in busy and key[r] not in busy


def test_index_round_trip_and_freshness(tmp_path):
    path = str(tmp_path / 'idx')
    index = _unify_index.Index(path)
    index.load({1})
    assert index.rows == {} and not os.path.exists(path)
    index.save([IndexRow(1, 10, 5, 100, 200, b'h' * 32, b'', 2), IndexRow(2, 11, 5, 100, 200, b'g' * 32, b'', None)],
               set())
    index.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = _unify_index.Index(path)
    again.load({1})
    assert set(again.rows) == {(1, 10)}

    class N:
        dev, ino, size, mtime, ctime = 1, 10, 5, 100, 200
    assert again.fresh(N()).hash == b'h' * 32
    N.ctime = 201
    assert again.fresh(N()) is None
    again.save([], {(1, 10)})
    again.close()
    third = _unify_index.Index(path)
    third.load({1, 2})
    assert set(third.rows) == {(2, 11)}


def test_immutable_flag(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'x' * 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert K.set_immutable(fd, True) is True
        assert K.set_immutable(fd, True) is False
        with pytest.raises(PermissionError):
            open(path, 'ab')
        with pytest.raises(PermissionError):
            os.unlink(path)
        assert K.set_immutable(fd, False) is True
    finally:
        os.close(fd)
    with open(path, 'ab') as handle:
        handle.write(b'y')


def test_directories_swapped_for_symlinks_are_refused(tmp_path):
    """A directory replaced by a symlink (to a host directory) after the walk is never entered: kept fds
    still name the original directory, reopened ones must be the very directory the walk saw."""
    tree, host = tmp_path / 'tree', tmp_path / 'host'
    (tree / 'a' / 'b').mkdir(parents=True)
    (tree / 'a' / 'b' / 'f').write_bytes(b'guest')
    host.mkdir()
    (host / 'f').write_bytes(b'host')
    scan = scan_tree(tree)
    try:
        dirs = scan.dirs
        node = next(iter(scan.nodes.values()))
        entry = node.paths[0]
        kept = dirs.fds[entry.dir]
        os.rename(str(tree / 'a'), str(tree / 'moved'))
        os.symlink(str(host), str(tree / 'a'))
        fd = _walk.open_entry(dirs, entry)  # the kept fd: still the guest's directory
        try:
            assert os.read(fd, 10) == b'guest'
        finally:
            os.close(fd)
        os.close(kept)  # as if over the fd budget: reopened by path, and checked
        dirs.fds[entry.dir] = None
        with pytest.raises(OSError):
            _walk.open_entry(dirs, entry)
        (tree / 'a').unlink()
        os.symlink(str(tree / 'moved'), str(tree / 'a'))  # the very same directory through a symlink: harmless
        fd = _walk.open_entry(dirs, entry)
        try:
            assert os.read(fd, 10) == b'guest'
        finally:
            os.close(fd)
    finally:
        scan.dirs.close()


def test_conffiles_reads_regular_files_only_without_following_links(tmp_path):
    """A FIFO (would block), a symlink (to /dev/zero, to a file outside), a symlinked info directory and an
    oversized list are skipped; the regular list next to them is read."""
    info = tmp_path / 'var/lib/dpkg/info'
    info.mkdir(parents=True)
    os.mkfifo(str(info / 'a-fifo.conffiles'))
    os.symlink('/dev/zero', str(info / 'b-zero.conffiles'))
    outside = tmp_path / 'outside.conffiles'
    outside.write_text('/etc/outside\n')
    os.symlink(str(outside), str(info / 'c-host.conffiles'))
    (info / 'd-big.conffiles').write_text('/etc/big\n' + '#' * 4096)
    (info / 'e-ok.conffiles').write_text('/etc/ok\n')
    assert _unify.conffiles(str(tmp_path), cap=1024) == ['/etc/ok']
    other = tmp_path / 'other'
    other.mkdir()
    os.symlink(str(tmp_path / 'var'), str(other / 'var'))  # the path itself crosses a symlink
    assert _unify.conffiles(str(other)) == []
