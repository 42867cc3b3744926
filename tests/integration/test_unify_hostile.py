"""Unify, de-unify and purge against a hostile guest root (issue 12), on the real kernel.

The attackers are static C programs (files/unify_racer.c) running as the init of a guest while the host works
on the trees: an inotify-triggered rewrite (same size, mtime put back) right after the host's comparison read
the file, and open(O_WRONLY) spinners on unified files while another sharer is de-unified or purged. Static
traps: a FIFO, a symlink to /dev/zero and a symlink to a host file at dpkg's conffiles path, and a host file
hardlinked into a tree. Each test checks the other guests' files (content, inode, immutable flag) and bait
files outside the trees (content, mode, owner, flags, inode, link count)."""
import hashlib
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K, _runtime, _mgr_context

from helpers import TOP, build_static
from test_unify import clear_immutable, unify

T0 = 1700000000
SHARED = 'usr/share/shared'


@pytest.fixture(scope='module')
def racer(tmp_path_factory):
    binary = str(tmp_path_factory.mktemp('racer') / 'unify_racer')
    return build_static('unify_racer.c', binary)


@pytest.fixture
def upaths(host_paths):
    yield host_paths
    clear_immutable(host_paths.tree_dir)


def content(i, size=4096):
    return hashlib.sha256(b'%d' % i).digest() * (size // 32)


def put(path, data, mtime=T0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(data)
    os.chmod(path, 0o644)
    os.utime(path, (mtime, mtime))


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def populate(root, count):
    for i in range(count):
        put(os.path.join(root, SHARED, 'f%03d' % i), content(i))


def guest_with_racer(make_guest, name, racer, argv, count):
    doc = make_guest(name, init=['/unify_racer'] + argv, stop_signal='SIGKILL', stop_timeout=1)
    populate(doc['root'], count)
    with open(racer, 'rb') as src, open(os.path.join(doc['root'], 'unify_racer'), 'wb') as dst:
        dst.write(src.read())
    os.chmod(os.path.join(doc['root'], 'unify_racer'), 0o755)
    return doc


def racer_counts(doc, deadline=30):
    """(tries, wins) the racer last reported."""
    path = os.path.join(doc['root'], 'racer.out')
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with open(path) as handle:
                words = dict(w.split('=') for w in handle.read().split()[1:])
            return int(words['tries']), int(words['wins'])
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise AssertionError('the racer in %s never reported' % doc['name'])


def bait(tmp_path, trees):
    """A host file outside the trees, with a symlink to it from every tree (a follow would reach it)."""
    path = str(tmp_path / 'bait-host-file')
    put(path, content(0))  # the very bytes of the guests' f000
    os.chmod(path, 0o600)
    for root in trees:
        os.symlink(path, os.path.join(root, SHARED, 'zz-bait-link'))
    return path


def bait_state(path):
    st = os.lstat(path)
    return sha(path), st.st_mode, st.st_uid, st.st_gid, K.path_flags(path), st.st_ino, st.st_nlink


def immutable(path):
    return bool(K.path_flags(path) & K.FS_IMMUTABLE_FL)


def test_copy_rewritten_after_the_comparison_is_never_linked(upaths, make_guest, racer, tmp_path):
    """The attacker's copies have two names each (so each is the class's target) and are rewritten with other
    bytes of the same size, mtime put back, the moment the host's comparison closes them. 40 classes per run,
    up to 4 runs until the racer rewrote at least 40 times after a comparison (unpatched, the first run linked
    the victim to the attacker's bytes): no victim path ever names bytes other than its own."""
    count = 40
    files = ['/%s/f%03d' % (SHARED, i) for i in range(count)]
    evil = guest_with_racer(make_guest, 'evil', racer, ['rewrite', '90'] + files, count)
    victim = make_guest('victim')
    populate(victim['root'], count)
    for i in range(count):
        os.link(os.path.join(evil['root'], SHARED, 'f%03d' % i), os.path.join(evil['root'], SHARED, 'g%03d' % i))
    host = bait(tmp_path, [evil['root'], victim['root']])
    before = bait_state(host)
    honest = [sha(os.path.join(victim['root'], SHARED, 'f%03d' % i)) for i in range(count)]
    _runtime.start(upaths, evil)
    racer_counts(evil)
    skipped = 0
    for dummy in range(4):
        out = unify(upaths, {'guests': ['evil', 'victim']})
        skipped += out['skipped_by_reason'].get('changed_during_run', 0)
        for i in range(count):
            vpath = os.path.join(victim['root'], SHARED, 'f%03d' % i)
            assert sha(vpath) == honest[i], 'victim file %d names the attacker\'s bytes' % i
        if racer_counts(evil)[1] >= count:
            break
        for i in range(count):  # re-arm: the attacker's copy honest again, as the comparison must see it
            path = os.path.join(evil['root'], SHARED, 'f%03d' % i)
            fd = os.open(path, os.O_RDONLY)
            try:
                K.set_immutable(fd, False)
            finally:
                os.close(fd)
            put(path, content(i))
    tries, wins = racer_counts(evil)
    assert wins >= count, (tries, wins)  # the attack really ran
    assert skipped > 0  # and was caught by the second proof
    assert bait_state(host) == before


def shared_trio(upaths, make_guest, racer, count, spin_seconds, leftovers=0):
    """a and c stopped, b running a spinner on its names of the files all three share (unified, immutable);
    ``leftovers``: that many of a's files get an extra name as a killed run leaves it (``.vsunify.*.link``)."""
    files = ['/%s/f%03d' % (SHARED, i) for i in range(count)]
    a = make_guest('a')
    populate(a['root'], count)
    b = guest_with_racer(make_guest, 'b', racer, ['spin', str(spin_seconds)] + files, count)
    c = make_guest('c')
    populate(c['root'], count)
    out = unify(upaths, {})
    assert out['linked'] >= 2 * count
    for i in range(count):
        assert immutable(os.path.join(c['root'], SHARED, 'f%03d' % i))
    for i in range(leftovers):
        path = os.path.join(a['root'], SHARED, 'f%03d' % i)
        fd = os.open(path, os.O_RDONLY)
        try:
            K.set_immutable(fd, False)
            os.link(path, os.path.join(a['root'], SHARED, '.vsunify.%016x.link' % i))
            K.set_immutable(fd, True)
        finally:
            os.close(fd)
    _runtime.start(upaths, b)
    tries = racer_counts(b)[0]
    end = time.monotonic() + 30
    while racer_counts(b)[0] == tries and time.monotonic() < end:  # spinning
        time.sleep(0.05)
    return a, b, c


def check_c(c, count, honest):
    for i in range(count):
        path = os.path.join(c['root'], SHARED, 'f%03d' % i)
        assert sha(path) == honest[i], 'c/f%03d was written through a shared inode' % i
        assert immutable(path), 'c/f%03d lost its protection' % i


def test_spinning_writer_never_writes_a_sharer_during_deunify(upaths, make_guest, racer, tmp_path):
    """b spins open(O_WRONLY) over its 150 unified names while a is de-unified and unified again 3 times (each
    time every shared inode has its flag lifted for a rename or a link: 900 windows; unpatched, the spinner got
    in within 5 tries), then while b itself is de-unified. The first de-unify also removes 20 leftover names of
    shared inodes (flag lifted for each unlink). c's files keep their bytes and their flag."""
    count = 150
    a, b, c = shared_trio(upaths, make_guest, racer, count, 120, leftovers=20)
    host = bait(tmp_path, [a['root'], b['root'], c['root']])
    before = bait_state(host)
    honest = [sha(os.path.join(c['root'], SHARED, 'f%03d' % i)) for i in range(count)]
    freezes = []
    for round_ in range(3):
        out = unify(upaths, {'guests': ['a'], 'state': 'absent'})
        assert out['deunified'] >= count and out['leftovers_removed'] == (20 if round_ == 0 else 0)
        freezes.append((out.get('freezes'), out['timings'].get('frozen_max')))
        check_c(c, count, honest)
        out = unify(upaths, {'guests': ['a']})
        assert out['linked'] >= count, (out['skipped_by_reason'], out['linked'], out['freezes'])
        freezes.append((out.get('freezes'), out['timings'].get('frozen_max')))
        check_c(c, count, honest)
    tries, wins = racer_counts(b)
    assert wins == 0 and tries > 0, (tries, wins)
    out = unify(upaths, {'guests': ['b'], 'state': 'absent'})
    assert out['deunified'] >= count
    check_c(c, count, honest)
    assert bait_state(host) == before
    print('freezes per run and longest freeze (s):', freezes)


def test_purge_of_a_sharer_keeps_the_others_protected(upaths, make_guest, racer, tmp_path):
    """a (stopped, unified with b and c: 150 shared files) is purged while b spins open(O_WRONLY) over its names
    (unpatched, purge cleared the flags for good and b wrote c's files at once). The spinner keeps going 2 s
    after the purge: c's files keep their bytes and their flag; the inodes lost exactly a's name."""
    count = 150
    a, b, c = shared_trio(upaths, make_guest, racer, count, 60)
    host = bait(tmp_path, [a['root'], b['root'], c['root']])
    before = bait_state(host)
    honest = [sha(os.path.join(c['root'], SHARED, 'f%03d' % i)) for i in range(count)]
    out = _mgr_context.ensure_context(upaths, {'name': 'a', 'state': 'absent', 'purge': True})
    assert out['changed'] and not os.path.exists(a['root'])
    tries = racer_counts(b)[0]
    time.sleep(2)
    assert racer_counts(b)[0] > tries  # still spinning
    check_c(c, count, honest)
    for i in range(count):
        assert os.lstat(os.path.join(c['root'], SHARED, 'f%03d' % i)).st_nlink == 2
    assert racer_counts(b)[1] == 0
    assert bait_state(host) == before


def test_conffiles_traps_neither_hang_nor_read_outside(upaths, make_guest, tmp_path):
    """dpkg's info directory holds a FIFO, a symlink to /dev/zero, a symlink to a host file listing f001 and
    an oversized file listing f002, each named *.conffiles. Unify finishes (in a subprocess bounded to 120 s)
    and f001/f002 are unified (neither the host file nor the oversized one was taken as a list of excludes)."""
    a = make_guest('a')
    b = make_guest('b')
    for doc in (a, b):
        populate(doc['root'], 4)
    info = os.path.join(a['root'], 'var/lib/dpkg/info')
    os.makedirs(info)
    os.mkfifo(os.path.join(info, 'hang.conffiles'))
    os.symlink('/dev/zero', os.path.join(info, 'zero.conffiles'))
    host = str(tmp_path / 'host.conffiles')
    put(host, b'/%s/f001\n' % SHARED.encode())
    os.symlink(host, os.path.join(info, 'host.conffiles'))
    put(os.path.join(info, 'big.conffiles'), b'/%s/f002\n' % SHARED.encode() + b'#' * (2 << 20))
    put(os.path.join(info, 'ok.conffiles'), b'/%s/f003\n' % SHARED.encode())
    before = bait_state(host)
    code = ('import sys, json; sys.path.insert(0, %r)\n'
            'from ansible_collections.vserver.core.plugins.module_utils import _common, _mgr_unify\n'
            'p = _common.Paths(config_dir=%r, run_dir=%r, tree_dir=%r, log_dir=%r, cgroup_parent=%r)\n'
            'print(json.dumps(_mgr_unify.ensure(p, None, {}).extra["linked"]))\n'
            % (os.path.join(TOP, '.build', 'collections'), upaths.config_dir, upaths.run_dir, upaths.tree_dir,
               upaths.log_dir, upaths.cgroup_parent))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr

    def rel(doc, i):
        return os.path.join(doc['root'], SHARED, 'f%03d' % i)
    for i in (0, 1, 2):
        assert os.lstat(rel(a, i)).st_ino == os.lstat(rel(b, i)).st_ino
    assert os.lstat(rel(a, 3)).st_ino != os.lstat(rel(b, 3)).st_ino  # a real conffile is still excluded
    assert bait_state(host) == before


def test_host_file_hardlinked_into_a_tree_is_never_target_nor_changed(upaths, make_guest, tmp_path):
    """A host file (outside every tree) hardlinked into a's tree, with the same bytes and metadata as b's and
    c's copies: it has the most links, yet it is never the target and nothing of it changes; b and c still
    share their copies."""
    docs = [make_guest(n) for n in 'abc']
    for doc in docs:
        populate(doc['root'], 2)
    host = str(tmp_path / 'host-file')
    put(host, content(0))
    os.unlink(os.path.join(docs[0]['root'], SHARED, 'f000'))
    os.link(host, os.path.join(docs[0]['root'], SHARED, 'f000'))
    before = bait_state(host)
    out = unify(upaths, {})
    assert bait_state(host) == before
    b0, c0 = (os.path.join(d['root'], SHARED, 'f000') for d in docs[1:])
    assert os.lstat(b0).st_ino == os.lstat(c0).st_ino != before[5]
    assert immutable(b0)
    assert out['skipped_by_reason'].get('linked_outside') == 1
    assert len({os.lstat(os.path.join(d['root'], SHARED, 'f001')).st_ino for d in docs}) == 1
    assert unify(upaths, {})['changed'] is False  # and stays so
    assert bait_state(host) == before
