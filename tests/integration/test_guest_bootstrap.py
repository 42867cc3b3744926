"""The guest role's Debian trees, for real: mmdebstrap and debootstrap from the mirror this host's apt uses.

One successful mmdebstrap build is shared by the module (check mode, rollback of a failing build and of a leftover
temporary directory, the guest seen from inside, idempotence); the failing cases fail fast. Nothing here names a
mirror: apt itself says which one this host uses (`apt-get indextargets`), independently of the role's parser.
"""
import os
import secrets
import subprocess
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _common
from ansible_helpers import changed_count, run_playbook
from conftest import TEST_CGROUP_PREFIX, stop_guests
from helpers import vserver

pytestmark = pytest.mark.slow

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: vserver.core.guest
"""
BOOTSTRAP_TASK = 'Bootstrap Debian trees'


def host_release_and_mirror():
    """(codename, archive URI) of this host's release with main, as apt itself sees its sources: an oracle
    independent of the role's own parser (`apt-get indextargets` lists what `apt-get update` would fetch)."""
    with open('/etc/os-release') as handle:
        release = dict(line.strip().split('=', 1) for line in handle if '=' in line).get('VERSION_CODENAME', '')
    release = release.strip('"')
    out = subprocess.run(['apt-get', 'indextargets', '--format', '$(REPO_URI) $(RELEASE) $(COMPONENT) $(IDENTIFIER)'],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) == 4 and words[1:] == [release, 'main', 'Packages']:
            return release, words[0]
    pytest.skip('no apt source for %s main on this host' % release, allow_module_level=True)
    return None


RELEASE, MIRROR = host_release_and_mirror()


def role_vars(paths, guests, **extra):
    out = {'vserver_config_dir': paths.config_dir, 'vserver_run_dir': paths.run_dir,
           'vserver_tree_dir': paths.tree_dir, 'vserver_log_dir': paths.log_dir,
           'vserver_cgroup_parent': paths.cgroup_parent, 'vserver_guests': guests,
           'guest_dns_servers': ['198.18.99.53']}
    out.update(extra)
    return out


def play(directory, paths, guests, check=False, timeout=600, **extra):
    playbook = os.path.join(str(directory), 'bootstrap-play.yml')
    if not os.path.exists(playbook):
        with open(playbook, 'w') as handle:
            handle.write(PLAYBOOK)
    start = time.monotonic()
    rc, data = run_playbook(playbook, role_vars(paths, guests, **extra), check=check, timeout=timeout)
    return rc, data, time.monotonic() - start


def task_hosts(data, name):
    """The localhost results of every task called NAME."""
    return [t['hosts']['localhost'] for p in data['plays'] for t in p['tasks']
            if t['task']['name'].split(' : ')[-1] == name and 'localhost' in t['hosts']]


def failures(data):
    """The messages of the failed tasks."""
    return [r.get('msg', '') for p in data['plays'] for t in p['tasks'] for r in t['hosts'].values()
            if r.get('failed')]


def bootstrap_items(data):
    out = []
    for res in task_hosts(data, BOOTSTRAP_TASK):
        out += [r for r in res.get('results', []) if not r.get('skipped')]
    return out


def mounts_under(path):
    real = os.path.realpath(path)
    with open('/proc/self/mountinfo') as handle:
        points = [line.split()[4] for line in handle]
    return [p for p in points if p == real or p.startswith(real + '/')]


def processes_mentioning(marker):
    """Live processes whose command line or cwd mentions MARKER (never killed here: only reported)."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                cmdline = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace')
            cwd = os.readlink('/proc/%s/cwd' % entry)
        except OSError:
            continue
        if marker in cmdline or cwd.startswith(marker):
            found.append((int(entry), cmdline))
    return found


def config_docs(paths):
    if not os.path.isdir(paths.config_dir):
        return []
    return sorted(n for n in os.listdir(paths.config_dir) if n.endswith('.json'))


def tree_entries(paths):
    return sorted(os.listdir(paths.tree_dir)) if os.path.isdir(paths.tree_dir) else []


def stop_and_remove(paths):
    stop_guests(paths)
    for point in sorted(mounts_under(paths.tree_dir), key=len, reverse=True):
        subprocess.run(['umount', '-l', point], check=False)
    subprocess.run(['rm', '-rf', '--one-file-system', paths.tree_dir], check=False)


@pytest.fixture
def clean_paths(host_paths):
    """conftest's private host roots; the guests stopped and the (large) trees removed afterwards."""
    yield host_paths
    stop_and_remove(host_paths)


def mm_guest(**over):
    guest = {'name': 'bs-mm', 'template': 'mmdebstrap', 'suite': RELEASE, 'variant': 'minbase', 'packages': ['hello'],
             'init': ['/bin/sleep', 'infinity'], 'state': 'started', 'autostart': False, 'stop_signal': 'SIGKILL',
             'stop_timeout': 2, 'hostname': 'mm.bootstrap.test', 'hosts_entries': ['198.18.99.7\tpeer']}
    guest.update(over)
    return guest


# --- fast failures: nothing may be written ---

def test_check_mode_on_a_fresh_host_writes_nothing(tmp_path, clean_paths):
    rc, data, dummy = play(tmp_path, clean_paths, [mm_guest()], check=True)
    assert rc == 0, failures(data)
    items = bootstrap_items(data)
    assert [i['changed'] for i in items] == [True]
    assert items[0]['root'] == os.path.join(clean_paths.tree_dir, 'bs-mm')
    assert changed_count(data) > 0
    assert not os.path.exists(clean_paths.tree_dir)
    assert config_docs(clean_paths) == []
    assert not processes_mentioning(str(tmp_path))


def test_bad_package_and_component_names_are_refused_before_anything(tmp_path, clean_paths):
    guests = [mm_guest(name='bs-pkg', packages=['hello', 'Bad_Name']),
              mm_guest(name='bs-comp', template='debootstrap', components=['main', 'con trib'])]
    rc, data, dummy = play(tmp_path, clean_paths, guests)
    assert rc != 0
    msg = ' '.join(failures(data))
    assert "vserver_guests[bs-pkg].packages: 'Bad_Name' is not a package name" in msg
    assert "vserver_guests[bs-comp].components: 'con trib' is not a component name" in msg
    assert bootstrap_items(data) == []
    assert not os.path.exists(clean_paths.tree_dir)
    assert config_docs(clean_paths) == []
    # a role-wide default is named as such
    guest = mm_guest(name='bs-pkg2')
    del guest['packages']
    rc, data, dummy = play(tmp_path, clean_paths, [guest], guest_packages=['X'])
    assert rc != 0
    assert "guest_packages: 'X' is not a package name" in ' '.join(failures(data))


def test_packages_on_a_busybox_guest_are_refused(tmp_path, clean_paths):
    rc, data, dummy = play(tmp_path, clean_paths, [{'name': 'bs-busy', 'packages': ['hello']}])
    assert rc != 0
    assert 'packages and components only with template debootstrap or mmdebstrap (elsewhere: bs-busy)' in \
        ' '.join(failures(data))
    assert config_docs(clean_paths) == []


def test_a_non_empty_root_without_etc_is_refused(tmp_path, clean_paths):
    root = tmp_path / 'someones-data'
    root.mkdir()
    (root / 'precious.txt').write_text('keep me\n')
    rc, data, dummy = play(tmp_path, clean_paths, [mm_guest(name='bs-busy-root', root=str(root))])
    assert rc != 0
    msg = ' '.join(failures(data))
    assert 'vserver_guests[bs-busy-root].root: %s is not empty and has no /etc' % root in msg
    assert os.listdir(str(root)) == ['precious.txt'] and (root / 'precious.txt').read_text() == 'keep me\n'
    assert not os.path.exists(str(tmp_path / '.someones-data.bootstrap'))
    assert bootstrap_items(data) == []
    assert config_docs(clean_paths) == []


def test_a_timed_out_build_is_killed_and_leaves_nothing(tmp_path, clean_paths):
    start = time.monotonic()
    rc, data, dummy = play(tmp_path, clean_paths, [mm_guest(name='bs-slow')], guest_bootstrap_timeout=2)
    assert rc != 0
    msg = ' '.join(failures(data))
    assert 'guest bs-slow: mmdebstrap' in msg and 'timed out after 2 s (guest_bootstrap_timeout)' in msg
    assert 'Last lines of its output' in msg
    assert time.monotonic() - start < 60
    assert tree_entries(clean_paths) == []        # no root, no .bs-slow.bootstrap, no lock file
    assert mounts_under(clean_paths.tree_dir) == []
    assert processes_mentioning(str(tmp_path)) == []
    assert config_docs(clean_paths) == []


# --- one real mmdebstrap build, shared ---

@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """A failing build (file:// mirror of an empty directory, after a crashed run's leftover with a mount in it),
    then the real build, then the same playbook again. Returns what each run did."""
    top = tmp_path_factory.mktemp('bootstrap')
    paths = _common.Paths(config_dir=str(top / 'etc'), run_dir=str(top / 'run'), tree_dir=str(top / 'trees'),
                          log_dir=str(top / 'log'), cgroup_parent=TEST_CGROUP_PREFIX + secrets.token_hex(4))
    empty = top / 'empty-mirror'
    empty.mkdir()
    out = {'paths': paths, 'top': top}
    try:
        # a crashed earlier run: its temporary directory, with something still mounted inside
        leftover = os.path.join(paths.tree_dir, '.bs-mm.bootstrap')
        os.makedirs(os.path.join(leftover, 'proc'))
        subprocess.run(['mount', '-t', 'tmpfs', 'vstest-leftover', os.path.join(leftover, 'proc')], check=True)
        with open(os.path.join(leftover, 'proc', 'junk'), 'w') as handle:
            handle.write('x')
        out['leftover_mounted'] = mounts_under(leftover)

        out['bad'] = play(top, paths, [mm_guest(mirror='file://%s' % empty)])
        out['after_bad'] = {'trees': tree_entries(paths), 'mounts': mounts_under(paths.tree_dir),
                            'configs': config_docs(paths)}
        out['good'] = play(top, paths, [mm_guest()])
        root = os.path.join(paths.tree_dir, 'bs-mm')
        out['root_ino'] = os.stat(root).st_ino if os.path.isdir(root) else None
        out['again'] = play(top, paths, [mm_guest()])
        yield out
    finally:
        stop_and_remove(paths)


def test_a_failing_build_is_rolled_back(built):
    assert built['leftover_mounted']                  # the leftover really had a mount
    rc, data, dummy = built['bad']
    assert rc != 0
    msg = ' '.join(failures(data))
    assert 'guest bs-mm: mmdebstrap' in msg and 'failed (exit status' in msg
    assert 'does not have a Release file' in msg     # the tail of the tool's output
    assert built['after_bad'] == {'trees': [], 'mounts': [], 'configs': []}


def test_the_built_guest_from_outside(built):
    rc, data, seconds = built['good']
    assert rc == 0, failures(data)
    print('mmdebstrap guest: first run %.1f s, bootstrap %.1f s'
          % (seconds, bootstrap_items(data)[0]['seconds']))
    paths = built['paths']
    root = os.path.join(paths.tree_dir, 'bs-mm')
    assert os.path.isfile(os.path.join(root, 'etc', 'debian_version'))
    assert tree_entries(paths) == ['bs-mm']          # no .bs-mm.bootstrap, no lock file
    assert mounts_under(paths.tree_dir) == []
    assert config_docs(paths) == ['bs-mm.json']
    sources = ''
    for path in [os.path.join(root, 'etc/apt/sources.list')] + \
            [os.path.join(root, 'etc/apt/sources.list.d', n) for n in os.listdir(os.path.join(root, 'etc/apt/sources.list.d'))]:
        if os.path.isfile(path):
            with open(path) as handle:
                sources += handle.read()
    assert MIRROR.rstrip('/') in sources and RELEASE in sources


def guest_run(paths, *argv):
    proc = vserver(paths, 'bs-mm', 'exec', *argv)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_built_guest_from_inside(built):
    assert built['good'][0] == 0
    paths = built['paths']
    assert guest_run(paths, 'hello') == 'Hello, world!\n'
    assert guest_run(paths, 'hostname') == 'mm.bootstrap.test\n'
    assert guest_run(paths, 'cat', '/etc/hostname') == 'mm\n'
    assert guest_run(paths, 'cat', '/etc/hosts') == \
        '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n198.18.99.7\tpeer\n'
    assert guest_run(paths, 'cat', '/etc/resolv.conf') == 'nameserver 198.18.99.53\n'
    shadow = dict((line.split(':')[0], line.split(':')) for line in guest_run(paths, 'cat', '/etc/shadow').splitlines())
    assert shadow['root'][1] == '!'
    assert guest_run(paths, 'cat', '/proc/1/cmdline') == '/bin/sleep\0infinity\0'


def test_a_second_run_changes_nothing_and_does_not_bootstrap(built):
    rc, data, seconds = built['again']
    assert rc == 0, failures(data)
    assert changed_count(data) == 0
    assert bootstrap_items(data) == []               # the plan found the tree: no build item at all
    paths = built['paths']
    assert os.stat(os.path.join(paths.tree_dir, 'bs-mm')).st_ino == built['root_ino']
    assert tree_entries(paths) == ['bs-mm']
    print('mmdebstrap guest: idempotent re-run %.1f s' % seconds)


# --- debootstrap, and the default init that a minbase tree lacks ---

def test_debootstrap_minbase_and_the_missing_default_init(tmp_path, clean_paths):
    guest = {'name': 'bs-deb', 'template': 'debootstrap', 'suite': RELEASE, 'state': 'started', 'autostart': False,
             'stop_signal': 'SIGKILL', 'stop_timeout': 2}
    rc, data, seconds = play(tmp_path, clean_paths, [guest])
    root = os.path.join(clean_paths.tree_dir, 'bs-deb')
    # the tree is built, but the guests module refuses the default init, which minbase does not have
    assert [i['changed'] for i in bootstrap_items(data)] == [True]
    print('debootstrap guest: first run %.1f s, bootstrap %.1f s'
          % (seconds, bootstrap_items(data)[0]['seconds']))
    assert rc != 0
    assert 'init /sbin/init does not exist in the guest tree %s' % root in ' '.join(failures(data))
    assert config_docs(clean_paths) == []
    assert os.path.isfile(os.path.join(root, 'etc', 'debian_version'))
    assert not os.path.lexists(os.path.join(root, 'sbin', 'init'))
    with open(os.path.join(root, 'etc', 'apt', 'sources.list')) as handle:
        assert MIRROR.rstrip('/') in handle.read()
    assert tree_entries(clean_paths) == ['bs-deb']
    assert mounts_under(clean_paths.tree_dir) == []

    rc, data, dummy = play(tmp_path, clean_paths, [dict(guest, init=['/bin/sleep', 'infinity'])])
    assert rc == 0, failures(data)
    assert bootstrap_items(data) == []
    assert config_docs(clean_paths) == ['bs-deb.json']
    proc = vserver(clean_paths, 'bs-deb', 'exec', 'cat', '/etc/debian_version')
    assert proc.returncode == 0 and proc.stdout.strip()
