"""_tree's decisions without root where possible: what a clone copies, links, skips and refuses; reads and writes
inside a guest tree that never follow a planted symlink; shared files unlinked only inside a freeze."""
import os
import socket
import stat

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K, _tree
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason='needs root (device nodes, files owned by root)')


def no_writers():
    return set()


def siblings(dst):
    """What a clone left beside its target (a build sibling must never stay)."""
    parent, base = os.path.split(str(dst))
    return sorted(e for e in os.listdir(parent) if e.startswith('.%s.build-' % base))


@pytest.fixture
def src(tmp_path):
    """A small guest tree: a directory, a file, a symlink pointing out of the tree, a FIFO, a socket."""
    root = tmp_path / 'src'
    (root / 'etc').mkdir(parents=True)
    (root / 'etc' / 'hosts').write_text('127.0.0.1 localhost\n')
    os.chmod(str(root / 'etc' / 'hosts'), 0o640)
    os.symlink('/etc/passwd', str(root / 'etc' / 'escape'))
    os.mkfifo(str(root / 'fifo'))
    os.chmod(str(root / 'fifo'), 0o620)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / 'sock'))
    sock.close()
    return root


def test_clone_copies_files_and_dirs_keeps_symlinks_as_links_and_skips_sockets(tmp_path, src):
    dst = tmp_path / 'dst'
    counts = _tree.clone_tree(str(src), str(dst), writers=no_writers)
    assert counts == {'linked': 0, 'copied': 1}
    assert (dst / 'etc' / 'hosts').read_text() == '127.0.0.1 localhost\n'
    assert os.stat(str(dst / 'etc' / 'hosts')).st_ino != os.stat(str(src / 'etc' / 'hosts')).st_ino
    assert stat.S_IMODE(os.stat(str(dst / 'etc' / 'hosts')).st_mode) == 0o640
    # the symlink is copied as a symlink (never followed: the host's /etc/passwd is not read into the clone)
    assert os.readlink(str(dst / 'etc' / 'escape')) == '/etc/passwd'
    assert stat.S_ISFIFO(os.lstat(str(dst / 'fifo')).st_mode)
    assert stat.S_IMODE(os.lstat(str(dst / 'fifo')).st_mode) == 0o620
    assert not os.path.lexists(str(dst / 'sock'))
    assert siblings(dst) == []


@ROOT_ONLY
def test_clone_skips_device_nodes(tmp_path, src):
    os.mknod(str(src / 'null'), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    dst = tmp_path / 'dst'
    _tree.clone_tree(str(src), str(dst), writers=no_writers)
    assert not os.path.lexists(str(dst / 'null'))


def test_a_hardlink_without_the_immutable_flag_is_copied_never_shared(tmp_path, src):
    """A guest's own hardlink to another guest's (or the host's) file: nlink 2, not immutable, so copied."""
    other = tmp_path / 'other-guest-file'
    other.write_text('secret of another guest\n')
    os.link(str(other), str(src / 'etc' / 'linked'))
    dst = tmp_path / 'dst'
    counts = _tree.clone_tree(str(src), str(dst), writers=no_writers)
    assert counts['linked'] == 0 and counts['copied'] == 2
    assert os.stat(str(dst / 'etc' / 'linked')).st_ino != other.stat().st_ino
    assert other.stat().st_nlink == 2


@pytest.fixture
def immutable_files(monkeypatch):
    """Pretend multiply-linked files carry the immutable flag (setting it needs CAP_LINUX_IMMUTABLE); record
    every flag change so the tests see it is lifted only around the link and set back."""
    changes = []
    monkeypatch.setattr(K, 'get_flags', lambda fd: K.FS_IMMUTABLE_FL if os.fstat(fd).st_nlink > 1 else 0)
    monkeypatch.setattr(K, 'set_flags', lambda fd, flags: changes.append(flags))
    return changes


def test_a_unified_file_is_hardlinked_inside_the_pause_with_the_flag_restored(tmp_path, src, immutable_files):
    unified = tmp_path / 'unified'
    unified.write_text('shared by every guest\n')
    os.link(str(unified), str(src / 'etc' / 'shared'))
    pauses = []

    class Pause:
        def __enter__(self):
            pauses.append('in')

        def __exit__(self, *exc):
            pauses.append('out')

    dst = tmp_path / 'dst'
    counts = _tree.clone_tree(str(src), str(dst), writers=no_writers, pause=Pause)
    assert counts == {'linked': 1, 'copied': 1}
    assert os.stat(str(dst / 'etc' / 'shared')).st_ino == unified.stat().st_ino
    assert pauses == ['in', 'out']
    assert immutable_files == [0, K.FS_IMMUTABLE_FL]  # lifted for the link only, then set back


def test_links_go_in_batches_one_pause_each(tmp_path, src, immutable_files, monkeypatch):
    monkeypatch.setattr(_tree, 'LINK_BATCH', 2)
    for i in range(5):
        shared = tmp_path / ('unified%d' % i)
        shared.write_text('x')
        os.link(str(shared), str(src / 'etc' / ('shared%d' % i)))
    pauses = []

    class Pause:
        def __enter__(self):
            pauses.append(1)

        def __exit__(self, *exc):
            return False

    counts = _tree.clone_tree(str(src), str(tmp_path / 'dst'), writers=no_writers, pause=Pause)
    assert counts['linked'] == 5 and len(pauses) == 3


def test_a_writer_on_a_linked_inode_refuses_the_clone_and_leaves_nothing(tmp_path, src, immutable_files):
    unified = tmp_path / 'unified'
    unified.write_text('shared\n')
    os.link(str(unified), str(src / 'etc' / 'shared'))
    st = unified.stat()
    dst = tmp_path / 'dst'
    with pytest.raises(VServerError, match='opened for writing while being linked') as exc:
        _tree.clone_tree(str(src), str(dst), writers=lambda: {(st.st_dev, st.st_ino)})
    assert exc.value.field == 'clone_from'
    assert not os.path.lexists(str(dst)) and siblings(dst) == []
    assert unified.stat().st_nlink == 2  # the shared inode lost only the build's name


def test_depth_limit(tmp_path, src, monkeypatch):
    monkeypatch.setattr(_tree, 'MAX_DEPTH', 3)
    deep = src
    for i in range(5):
        deep = deep / ('d%d' % i)
    deep.mkdir(parents=True)
    dst = tmp_path / 'dst'
    with pytest.raises(VServerError, match='deeper than 3 directories'):
        _tree.clone_tree(str(src), str(dst), writers=no_writers)
    assert not os.path.lexists(str(dst)) and siblings(dst) == []
    (src / 'd0' / 'd1' / 'd2' / 'd3' / 'd4').rmdir()
    (src / 'd0' / 'd1' / 'd2' / 'd3').rmdir()
    _tree.clone_tree(str(src), str(dst), writers=no_writers)  # exactly at the limit: cloned
    assert (dst / 'd0' / 'd1' / 'd2').is_dir()


@pytest.mark.parametrize('case', ['symlinked source', 'missing source', 'target exists'])
def test_refused_clones(tmp_path, src, case):
    source, dst = str(src), tmp_path / 'dst'
    if case == 'symlinked source':
        source = str(tmp_path / 'link')
        os.symlink(str(src), source)
    elif case == 'missing source':
        source = str(tmp_path / 'nothing')
    else:
        dst.mkdir()
    with pytest.raises(VServerError) as exc:
        _tree.clone_tree(source, str(dst), writers=no_writers)
    assert exc.value.field == ('root' if case == 'target exists' else 'clone_from')
    assert siblings(dst) == []


def test_build_siblings(tmp_path):
    root = str(tmp_path / 'web')
    build = _tree.new_build_dir(root)
    assert os.path.basename(build).startswith('.web.build-') and stat.S_IMODE(os.stat(build).st_mode) == 0o700
    assert _tree.stale_builds(root) == [build]
    assert _tree.stale_builds(str(tmp_path / 'we')) == []  # another guest's siblings never match
    open(os.path.join(build, 'f'), 'w').close()
    _tree.install_build(build, root)
    assert os.path.isfile(os.path.join(root, 'f')) and _tree.stale_builds(root) == []


# --- reads and writes inside a tree ---

@pytest.fixture
def guest(tmp_path):
    root = tmp_path / 'guest'
    (root / 'etc').mkdir(parents=True)
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'shadow').write_text('host secret\n')
    return root, outside


def test_read_in_tree_reads_regular_files_only(guest, monkeypatch):
    root, outside = guest
    (root / 'etc' / 'hosts').write_text('x\n')
    os.chmod(str(root / 'etc' / 'hosts'), 0o600)
    assert _tree.read_in_tree(str(root), '/etc/hosts') == (b'x\n', 0o600)
    os.symlink(str(outside / 'shadow'), str(root / 'etc' / 'shadow'))  # a planted symlink: not followed
    os.mkfifo(str(root / 'etc' / 'fifo'))  # a FIFO: refused without blocking
    os.symlink(str(outside), str(root / 'lnk'))  # a symlinked directory: not followed
    (root / 'etc' / 'big').write_bytes(b'x' * 100)
    monkeypatch.setattr(_tree, 'MAX_MANAGED_READ', 99)
    for path in ('/etc/shadow', '/etc/fifo', '/lnk/shadow', '/etc/missing', '/missing/x', '/etc/big', '/etc'):
        assert _tree.read_in_tree(str(root), path) == (None, None), path


@ROOT_ONLY
def test_write_in_tree_replaces_a_planted_symlink_and_refuses_a_symlinked_dir(guest):
    root, outside = guest
    os.symlink(str(outside / 'shadow'), str(root / 'etc' / 'shadow'))
    _tree.write_in_tree(str(root), '/etc/shadow', b'root:!:1::::::\n', 0o640)
    assert (outside / 'shadow').read_text() == 'host secret\n'
    st = os.lstat(str(root / 'etc' / 'shadow'))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0
    os.symlink(str(outside), str(root / 'root'))
    with pytest.raises(VServerError, match='never followed'):
        _tree.write_in_tree(str(root), '/root/.ssh/authorized_keys', b'key\n', 0o600)
    assert sorted(os.listdir(str(outside))) == ['shadow']
    _tree.write_in_tree(str(root), '/home/u/.ssh/authorized_keys', b'key\n', 0o600)  # made as needed
    assert stat.S_IMODE(os.stat(str(root / 'home' / 'u' / '.ssh')).st_mode) == 0o700
    assert sorted(os.listdir(str(root / 'etc'))) == ['shadow']  # no temp file left


@pytest.mark.parametrize('path', ['etc/hosts', '/etc/../x', '/etc/./x', '/etc/', '/a\x00b', 7])
def test_check_guest_path_refuses(path):
    with pytest.raises(VServerError) as exc:
        _tree.check_guest_path(path, 'guests[0].files')
    assert exc.value.field == 'guests[0].files'


# --- removing trees ---

class Freezer:
    def __init__(self, fail=False):
        self.fail = fail
        self.log = []

    def frozen(self):
        freezer = self

        class Frozen:
            def __enter__(self):
                if freezer.fail:
                    raise OSError(16, 'guest(s) web did not freeze in 5s')
                freezer.log.append('freeze')

            def __exit__(self, *exc):
                freezer.log.append('thaw')
        return Frozen()


def test_shared_names_are_unlinked_inside_one_freeze_and_keep_their_protection(tmp_path, monkeypatch):
    root = tmp_path / 'tree'
    (root / 'usr').mkdir(parents=True)
    other = tmp_path / 'other'
    other.write_text('unified\n')
    os.link(str(other), str(root / 'usr' / 'shared'))
    flags = {}
    log = []
    freezer = Freezer()
    monkeypatch.setattr(K, 'get_flags', lambda fd: flags.get(os.fstat(fd).st_ino, 0))

    def set_flags(fd, value):
        flags[os.fstat(fd).st_ino] = value
        log.append((freezer.log[-1:], value))
    monkeypatch.setattr(K, 'set_flags', set_flags)
    flags[other.stat().st_ino] = K.FS_IMMUTABLE_FL
    _tree._remove_shared(str(root), [str(root / 'usr' / 'shared')], freezer)
    assert not os.path.lexists(str(root / 'usr' / 'shared'))
    assert freezer.log == ['freeze', 'thaw']
    # lifted and set back while frozen, on the inode other trees still link
    assert log == [(['freeze'], 0), (['freeze'], K.FS_IMMUTABLE_FL)]
    assert flags[other.stat().st_ino] == K.FS_IMMUTABLE_FL


def test_no_freeze_no_unlink(tmp_path, monkeypatch):
    root = tmp_path / 'tree'
    root.mkdir()
    (root / 'shared').write_text('x')
    monkeypatch.setattr(K, 'get_flags', lambda fd: K.FS_IMMUTABLE_FL if stat.S_ISREG(os.fstat(fd).st_mode) else 0)
    monkeypatch.setattr(K, 'set_flags', lambda fd, value: pytest.fail('a flag was lifted without a freeze'))
    with pytest.raises(VServerError, match='stay protected') as exc:
        _tree._remove_shared(str(root), [str(root / 'shared')], Freezer(fail=True))
    assert exc.value.field == 'purge' and (root / 'shared').exists()


def test_a_symlinked_directory_is_never_entered_to_unlink(tmp_path, monkeypatch):
    root = tmp_path / 'tree'
    root.mkdir()
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'shared').write_text('host file')
    os.symlink(str(outside), str(root / 'usr'))  # swapped in after the name was listed
    monkeypatch.setattr(K, 'get_flags', lambda fd: 0)
    with pytest.raises(OSError):
        _tree._remove_shared(str(root), [str(root / 'usr' / 'shared')], Freezer())
    assert (outside / 'shared').exists()


def test_purge_refuses_a_tree_with_a_mount_below(tmp_path, monkeypatch):
    root = tmp_path / 'tree'
    (root / 'data').mkdir(parents=True)
    monkeypatch.setattr(_tree, 'mounts_below', lambda path: [str(root / 'data')])
    with pytest.raises(VServerError, match='never deletes through a mount point') as exc:
        _tree.purge_tree(str(root))
    assert exc.value.field == 'purge' and (root / 'data').is_dir()


def test_purge_and_remove_build_delete_plain_trees(tmp_path):
    for name in ('tree', '.tree.build-abcd1234'):
        root = tmp_path / name
        (root / 'a' / 'b').mkdir(parents=True)
        (root / 'a' / 'b' / 'f').write_text('x')
        os.symlink('/etc', str(root / 'a' / 'etc'))
        (_tree.purge_tree if name == 'tree' else _tree.remove_build)(str(root))
        assert not os.path.lexists(str(root))
    assert os.path.isdir('/etc')
