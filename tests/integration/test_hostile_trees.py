"""A hostile guest root against the host code that works on its tree, its log and its process names (issue 12):
clone from a running source, managed files, guest logs, terminal escapes. Racers are static C programs
(files/hostile.c) run inside the guests; bait files outside the trees are checked afterwards."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _runtime, _mgr_guests, _kernel as K, _logs, _procfs, _tree)
from helpers import TOP, build_static, vserver

HOSTILE_C = os.path.join(TOP, 'tests', 'integration', 'files', 'hostile.c')


@pytest.fixture(scope='module')
def hostile_bin(tmp_path_factory):
    binary = str(tmp_path_factory.mktemp('hostile') / 'hostile')
    return build_static(HOSTILE_C, binary)


def install(doc, binary):
    shutil.copy2(binary, os.path.join(doc['root'], 'bin', 'hostile'))


def bait(path, data=b'host secret\n', mode=0o600):
    """A host file a hostile guest must not change: returns what to compare afterwards."""
    with open(path, 'wb') as handle:
        handle.write(data)
    os.chmod(path, mode)
    return snapshot(path)


def snapshot(path):
    st = os.lstat(path)
    with open(path, 'rb') as handle:
        data = handle.read()
    return (data, st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink)


def test_esc_named_guest_process_is_escaped_in_vserver_ps(host_paths, make_guest, hostile_bin):
    doc = make_guest('esc', start=True)
    install(doc, hostile_bin)
    proc = subprocess.Popen(['/usr/bin/python3', os.path.join(TOP, 'bin', 'vserver'), 'esc', 'exec',
                             '/bin/hostile', 'name', '60'], env=__import__('helpers').env_for(host_paths),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == b'named'
        out = vserver(host_paths, 'ps')
        assert out.returncode == 0, out.stderr
        assert '\x1b' not in out.stdout and '\x07' not in out.stdout
        lines = [line for line in out.stdout.splitlines() if ' esc ' in line]
        assert any(line.endswith('\\x1b]0;pwned\\x07\\x1b[2J\ufffd') for line in lines), lines
        stat = vserver(host_paths, 'stat')
        assert stat.returncode == 0 and '\x1b' not in stat.stdout
    finally:
        proc.kill()
        proc.wait(timeout=30)


def start_in_guest(paths, name, *argv):
    """A process inside the guest, in the background (the caller kills it)."""
    import helpers
    return subprocess.Popen([sys.executable, os.path.join(TOP, 'bin', 'vserver'), name, 'exec'] + list(argv),
                            env=helpers.env_for(paths), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def stop_process(proc, paths=None, guest=None):
    """Kill the `vserver exec` wrapper and the guest's hostile processes (they hold its output pipe); its output."""
    if guest is not None:
        for pid in _runtime.Runtime(paths, guest).group.procs():
            try:
                with open('/proc/%d/comm' % pid) as handle:
                    if handle.read().strip() == 'hostile':
                        os.kill(pid, signal.SIGTERM)  # it prints its counts and exits
            except OSError:
                pass
    try:
        out = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate(timeout=30)[0]
    return out.decode(errors='replace')


@pytest.fixture
def host_bait(tmp_path):
    """Host files a swap race could lead a tree walker to: a 0600 secret, and an immutable inode with a second
    link elsewhere (what a unified file looks like). Returns (bait dir, {path: snapshot}, inodes, cleanup)."""
    bait_dir = tmp_path / 'host-bait'
    other = tmp_path / 'host-other'
    bait_dir.mkdir(mode=0o700)
    other.mkdir()
    snaps = {str(bait_dir / 'secret'): bait(str(bait_dir / 'secret'))}
    shared = bait_dir / 'shared'
    bait(str(shared), b'host shared\n', 0o644)
    os.link(str(shared), str(other / 'shared'))
    subprocess.run(['chattr', '+i', str(shared)], check=True, timeout=30)
    snaps[str(shared)] = snapshot(str(shared))
    yield bait_dir, snaps
    subprocess.run(['chattr', '-i', str(shared)], check=True, timeout=30)


def check_bait(bait_dir, snaps):
    for path, before in snaps.items():
        assert snapshot(path) == before, path
    st = os.lstat(str(bait_dir))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    assert sorted(os.listdir(str(bait_dir))) == ['secret', 'shared']
    assert _is_immutable(os.path.join(str(bait_dir), 'shared'))


def _is_immutable(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return bool(K.get_flags(fd) & K.FS_IMMUTABLE_FL)
    finally:
        os.close(fd)


def check_clone_has_no_host_file(dst, snaps):
    inodes = {s[4] for s in snaps.values()}
    contents = {s[0] for s in snaps.values()}
    for dirpath, _dirs, files in os.walk(dst):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_ino not in inodes, os.path.join(dirpath, name)
            if stat.S_ISREG(st.st_mode) and st.st_size < 64:
                with open(os.path.join(dirpath, name), 'rb') as handle:
                    assert handle.read() not in contents, os.path.join(dirpath, name)


def plant_swap_pair(root, bait_dir):
    """ROOT/tmp/race/d (a directory) and ROOT/tmp/race/l (a symlink to the host bait directory): the racer
    exchanges them. Inside the guest the symlink leads nowhere; a host walker following it reaches the bait."""
    race = os.path.join(root, 'tmp', 'race')
    os.makedirs(os.path.join(race, 'd', 'sub'))
    with open(os.path.join(race, 'd', 'inner'), 'w') as handle:
        handle.write('guest file\n')
    os.chmod(os.path.join(race, 'd', 'inner'), 0o6777)
    os.symlink(str(bait_dir), os.path.join(race, 'l'))


# 20 clones of a busybox tree while the racer exchanges the pair millions of times: each clone looks up the pair
# at least four times (list, descend, modes, times), each lookup sees the symlink about half of the time, so a
# walker that looks a path up again loses within the first few clones (the old os.walk one did, first try).
CLONE_RACES = 20


def test_clone_of_a_racing_running_source_never_reaches_the_host(host_paths, make_guest, hostile_bin, host_bait,
                                                                 tmp_path):
    bait_dir, snaps = host_bait
    doc = make_guest('racer', start=True)
    install(doc, hostile_bin)
    plant_swap_pair(doc['root'], bait_dir)
    racer = start_in_guest(host_paths, 'racer', '/bin/hostile', 'swap', '/tmp/race/d', '/tmp/race/l', '120')
    seen = set()
    try:
        time.sleep(0.5)
        for i in range(CLONE_RACES):  # by fd, unfrozen: the racer runs through every clone
            dst = str(tmp_path / ('clone%d' % i))
            _tree.clone_tree(doc['root'], dst, writers=_procfs.open_for_write)
            check_bait(bait_dir, snaps)
            check_clone_has_no_host_file(dst, snaps)
            seen.add('dir' if os.path.isdir(os.path.join(dst, 'tmp/race/l')) and
                     not os.path.islink(os.path.join(dst, 'tmp/race/l')) else 'link')
            shutil.rmtree(dst)
        assert racer.poll() is None, 'the racer stopped early'
        # through the guests module: the running source is frozen for the copy, thawed after
        rt = _runtime.Runtime(host_paths, 'racer')
        t0 = time.monotonic()
        with _mgr_guests.FrozenSource(host_paths, 'racer'):
            assert rt.group.frozen() and rt.state() == 'frozen'
            _tree.clone_tree(doc['root'], str(tmp_path / 'frozen-clone'), writers=_procfs.open_for_write)
        frozen_for = time.monotonic() - t0
        assert rt.state() == 'running' and racer.poll() is None
        check_clone_has_no_host_file(str(tmp_path / 'frozen-clone'), snaps)
        print('busybox tree cloned with the source frozen for %.3f s' % frozen_for)
        res = _mgr_guests.ensure(host_paths, {'guests': [{'name': 'copy', 'template': 'clone',
                                                          'clone_from': 'racer', 'state': 'present'}]})
        assert not res.get('failed'), res
        assert os.path.isfile(os.path.join(host_paths.default_root('copy'), 'bin', 'hostile'))
        assert rt.state() == 'running' and racer.poll() is None
    finally:
        out = stop_process(racer, host_paths, 'racer')
    check_bait(bait_dir, snaps)
    assert seen == {'dir', 'link'}, 'the race never changed what the walk saw: %s %s' % (seen, out)
    swaps = int(out.split('swaps ')[1].split()[0])
    print('%d clones raced by %d directory/symlink swaps' % (CLONE_RACES, swaps))
    assert swaps > 1000


def test_fifo_and_symlinked_ssh_dir_stop_only_their_guest(host_paths, make_guest, host_bait):
    bait_dir, snaps = host_bait
    fifo = make_guest('fifo')
    os.mkfifo(os.path.join(fifo['root'], 'etc', 'motd'))
    os.mkdir(os.path.join(fifo['root'], 'etc', '.motd.vserver-tmp'))  # the old fixed temp name, as a directory
    sshlink = make_guest('sshlink')
    os.symlink(str(bait_dir), os.path.join(sshlink['root'], 'root', '.ssh'))
    make_guest('honest')
    entry = {'state': 'present', 'template': 'none', 'files': {'/etc/motd': 'hello\n'},
             'root_authorized_keys': ['ssh-ed25519 AAAAC3Nza test']}
    t0 = time.monotonic()
    res = _mgr_guests.ensure(host_paths, {'guests': [dict(entry, name=n) for n in ('fifo', 'sshlink', 'honest')]})
    assert time.monotonic() - t0 < 60
    assert res['failed'] and list(res['guests']) == ['fifo', 'sshlink', 'honest']
    assert res['guests']['sshlink']['failed']
    assert 'root/.ssh inside the guest tree safely: a symlink or not a directory' in res['guests']['sshlink']['msg']
    for name in ('fifo', 'honest'):
        assert not res['guests'][name].get('failed'), res['guests'][name]
        root = host_paths.default_root(name)
        with open(os.path.join(root, 'etc', 'motd')) as handle:
            assert handle.read() == 'hello\n'
        assert os.path.isfile(os.path.join(root, 'root', '.ssh', 'authorized_keys'))
    check_bait(bait_dir, snaps)


def make_tarball(path, tree):
    subprocess.run(['tar', '-C', tree, '--numeric-owner', '-cf', path, '.'], check=True, timeout=120)


def test_tarball_never_unpacks_into_an_existing_tree(host_paths, make_guest, hostile_bin, host_bait, tmp_path,
                                                     busybox_tree):
    from ansible_helpers import run_playbook
    bait_dir, snaps = host_bait
    tree = tmp_path / 'tarball-tree'
    shutil.copytree(busybox_tree, str(tree), symlinks=True)
    (tree / 'etc' / 'from-tarball').write_text('unpacked\n')
    os.makedirs(str(tree / 'tmp' / 'race' / 'd' / 'sub'))
    (tree / 'tmp' / 'race' / 'd' / 'planted').write_text('tarball overwrites\n')
    tarball = str(tmp_path / 'guest.tar')
    make_tarball(tarball, str(tree))
    # the victim runs, has deleted its /etc and swaps a directory for a symlink to the host bait
    victim = make_guest('tbvictim', start=True)
    install(victim, hostile_bin)
    plant_swap_pair(victim['root'], bait_dir)
    racer = start_in_guest(host_paths, 'tbvictim', '/bin/hostile', 'swap', '/tmp/race/d', '/tmp/race/l', '120')
    playbook = tmp_path / 'play.yml'
    playbook.write_text('- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: vserver.core.guest\n')
    guests = [{'name': 'tbvictim', 'template': 'tarball', 'tarball': tarball, 'state': 'started',
               'init': ['/sbin/init'], 'xid': victim['xid']},
              {'name': 'tbnew', 'template': 'tarball', 'tarball': tarball, 'state': 'started', 'autostart': False}]
    try:
        shutil.rmtree(os.path.join(victim['root'], 'etc'))
        time.sleep(0.5)
        rc, data = run_playbook(str(playbook), {
            'vserver_config_dir': host_paths.config_dir, 'vserver_run_dir': host_paths.run_dir,
            'vserver_tree_dir': host_paths.tree_dir, 'vserver_log_dir': host_paths.log_dir,
            'vserver_cgroup_parent': host_paths.cgroup_parent, 'vserver_guests': guests,
            'guest_dns_servers': ['198.18.99.53']}, timeout=300)
        assert racer.poll() is None
    finally:
        stop_process(racer, host_paths, 'tbvictim')
    msgs = ' '.join(r.get('msg', '') for p in data['plays'] for t in p['tasks'] for r in t['hosts'].values()
                    if r.get('failed'))
    assert rc != 0 and 'is not empty and has no /etc' in msgs and victim['root'] in msgs, msgs
    check_bait(bait_dir, snaps)
    assert not os.path.exists(os.path.join(victim['root'], 'etc'))  # nothing unpacked into the victim
    assert not os.path.exists(os.path.join(victim['root'], 'tmp', 'race', 'd', 'planted'))
    new_root = host_paths.default_root('tbnew')
    with open(os.path.join(new_root, 'etc', 'from-tarball')) as handle:
        assert handle.read() == 'unpacked\n'
    assert _runtime.Runtime(host_paths, 'tbnew').state() == 'running'
    assert not [e for e in os.listdir(host_paths.tree_dir) if e.startswith('.')]


SUPERVISE = os.path.join(TOP, 'roles', 'host', 'files', 'vserver_supervise.py')
LOG_CAP = 1 << 20
FLOOD_MIB = 200


def test_a_log_flooding_guest_leaves_its_log_under_the_cap(host_paths, make_guest, hostile_bin):
    """The guest's init writes 200 MiB to its console log (init's stdout) as fast as it can, with vserver-supervise
    running (VSERVER_LOG_MAX=1M): when the flood is over, NAME.log and NAME.log.1 are at most 1 MiB each. Without
    the cap the log is the whole 200 MiB."""
    doc = make_guest('flood', init=['/bin/sh', '-c', '(/bin/hostile flood /proc/1/fd/1 %d > /tmp/flood.out; '
                                    'echo $? >> /tmp/flood.out); exec sleep 1000' % FLOOD_MIB])
    install(doc, hostile_bin)
    env = dict(os.environ, VSERVER_LOG_MAX='1M', **{'VSERVER_' + k.upper(): v for k, v in host_paths.as_dict().items()})
    supervisor = subprocess.Popen([sys.executable, SUPERVISE, '--interval', '1'], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    log = host_paths.log_file('flood')
    largest = 0
    try:
        time.sleep(1)  # the supervisor is watching LOG_DIR
        _runtime.start(host_paths, doc)
        out = os.path.join(doc['root'], 'tmp', 'flood.out')
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (os.path.exists(out) and open(out).read().endswith('\n0\n')):
            largest = max(largest, os.path.getsize(log) if os.path.exists(log) else 0)
            time.sleep(0.05)
        with open(out) as handle:
            assert handle.read() == 'wrote %d\n0\n' % (FLOOD_MIB << 20)
        deadline = time.monotonic() + 10  # the last rotation may still be under way
        while time.monotonic() < deadline and os.path.getsize(log) > LOG_CAP:
            time.sleep(0.1)
        assert os.path.getsize(log) <= LOG_CAP
        assert 0 < os.path.getsize(log + '.1') <= LOG_CAP
        with open(log + '.1', 'rb') as handle:
            assert set(handle.read()) <= set(b'x\n')
        print('largest log seen during the flood: %d bytes (cap %d)' % (largest, LOG_CAP))
        assert supervisor.poll() is None
    finally:
        supervisor.kill()
        supervisor.wait(timeout=30)


SEQ_LINES = 20000000


def test_two_log_watchers_never_rotate_the_same_log_at_once(host_paths, make_guest):
    """Two watchers (vserver-supervise --logs twice: vserver-logs.service and a supervisor started by hand) cap the
    log of a guest whose init writes numbered lines (busybox seq, 20 million lines, about 170 MiB) to its console
    log as fast as it can. Rotations take LOG_DIR/.cap.lock: NAME.log.1, sampled all along, is always a whole
    tail (exactly the cap) and ends as consecutive lines; neither watcher fails. Before the lock the same setup
    (outside a guest, same code) saw NAME.log.1 emptied (one watcher copying from past the other's truncation)
    and `rename NAME.log.1.tmp: No such file or directory` errors."""
    doc = make_guest('seqflood', init=['/bin/sh', '-c', '(/bin/busybox seq 1 %d >> /proc/1/fd/1; echo done > '
                                       '/tmp/flood.out); exec sleep 1000' % SEQ_LINES])
    env = dict(os.environ, VSERVER_LOG_MAX='1M', **{'VSERVER_' + k.upper(): v for k, v in host_paths.as_dict().items()})
    watchers = [subprocess.Popen([sys.executable, SUPERVISE, '--logs'], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT) for dummy in range(2)]
    log = host_paths.log_file('seqflood')
    out = os.path.join(doc['root'], 'tmp', 'flood.out')
    sizes = set()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _logs.watching(host_paths.log_dir):
            time.sleep(0.1)
        assert _logs.watching(host_paths.log_dir)
        _runtime.start(host_paths, doc)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not os.path.exists(out):
            try:
                sizes.add(os.path.getsize(log + '.1'))
            except FileNotFoundError:
                pass
            time.sleep(0.002)
        assert os.path.exists(out), 'the flood did not end within 300 s'
        deadline = time.monotonic() + 10  # the last rotation may still be under way
        while time.monotonic() < deadline and os.path.getsize(log) > LOG_CAP:
            time.sleep(0.1)
        assert os.path.getsize(log) <= LOG_CAP
        assert sizes == {LOG_CAP}, sorted(sizes)
        with open(log + '.1', 'rb') as handle:
            numbers = [int(line) for line in handle.read().split(b'\n')[1:-1]]
        assert len(numbers) > 100000 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert [w.poll() for w in watchers] == [None, None]
    finally:
        for watcher in watchers:
            watcher.kill()
        said = b''.join(w.communicate(timeout=30)[0] for w in watchers).decode(errors='replace')
    assert said == '', said
    assert not _logs.watching(host_paths.log_dir)


SHARED_FILES = 300
SHARED_CLONES = 6


def test_clone_never_lets_a_sharer_write_a_unified_file(host_paths, make_guest, hostile_bin):
    """SHARED_FILES files unified (hardlinked, immutable) between the clone source and a running sharer guest that
    tries open(O_WRONLY) on each of them round-robin, without pause, through SHARED_CLONES clones: link(2) needs
    the flag off for an instant per file (1800 windows); every guest is frozen during those instants, so the sharer
    never gets a writable fd. Every shared file keeps its bytes, inode and flag."""
    src = make_guest('shsrc')
    sharer = make_guest('sharer')
    install(sharer, hostile_bin)
    os.mkdir(os.path.join(sharer['root'], 'shared'))
    os.mkdir(os.path.join(src['root'], 'shared'))
    files = []
    for i in range(SHARED_FILES):
        path = os.path.join(sharer['root'], 'shared', 'f%03d' % i)
        with open(path, 'w') as handle:
            handle.write('shared file %d\n' % i)
        os.link(path, os.path.join(src['root'], 'shared', 'f%03d' % i))
        files.append(path)
    subprocess.run(['chattr', '+i'] + files, check=True, timeout=60)
    before = {p: snapshot(p) for p in files}
    _runtime.start(host_paths, sharer)
    spinner = start_in_guest(host_paths, 'sharer', '/bin/hostile', 'spin', '/shared', '120')
    try:
        time.sleep(0.5)
        for i in range(SHARED_CLONES):
            res = _mgr_guests.ensure(host_paths, {'guests': [{'name': 'shc%d' % i, 'template': 'clone',
                                                              'clone_from': 'shsrc', 'state': 'present'}]})
            assert not res.get('failed'), res
            assert spinner.poll() is None
    finally:
        out = stop_process(spinner, host_paths, 'sharer')
    print(out.strip())
    try:
        assert ' wins 0' in out and int(out.split('tries ')[1].split()[0]) > 10000, out
        for path in files:
            assert snapshot(path)[:5] == before[path][:5], (path, out)
            assert _is_immutable(path)
            assert os.stat(path).st_nlink == 2 + SHARED_CLONES
    finally:
        subprocess.run(['chattr', '-i'] + files, check=False, timeout=60)
        for i in range(SHARED_CLONES):
            subprocess.run(['chattr', '-R', '-i', os.path.join(host_paths.default_root('shc%d' % i), 'shared')],
                           check=False, timeout=60)
