"""The guest role's tree builder (the private module _guest_bootstrap, run as Ansible runs it) against a stand-in
tool (no network, a few seconds): rollback with real mounts left in the chroot, a killed timeout with a process that
left the tool's session, a rename that fails, a crashed run's leftover, two concurrent builds of one tree. The real
tools: test_guest_bootstrap.py."""
import json
import os
import subprocess
import sys
import threading

import pytest

from helpers import TOP

MODULE = os.path.join(TOP, 'plugins', 'modules', '_guest_bootstrap.py')

# Called like mmdebstrap: OPTIONS... SUITE TARGET MIRROR; what it does depends on the mirror's last path element.
FAKE_TOOL = r'''#!/bin/sh
for arg; do target=$mirror; mirror=$arg; done
echo "$*" >> "$(dirname "$0")/calls"
case "$mirror" in
  */ok)
    mkdir -p "$target/etc" && echo 12.0 > "$target/etc/debian_version" && echo "I: fake success";;
  */slowok)
    sleep 1; mkdir -p "$target/etc" && echo "I: slow fake success";;
  */fail)
    mkdir -p "$target/etc" "$target/proc" "$target/dev"
    mount -t tmpfs vstest-fake "$target/proc"
    mount -t tmpfs vstest-fake "$target/dev"
    mkdir "$target/dev/pts" && mount -t tmpfs vstest-fake "$target/dev/pts"
    echo "E: fake failure, mounts left behind"; exit 3;;
  */hang)
    mkdir -p "$target/etc" "$target/proc"
    mount -t tmpfs vstest-fake "$target/proc"
    setsid sh -c "sleep 300; : $target" > /dev/null 2>&1 &
    echo "I: hanging"; sleep 300;;
esac
'''


@pytest.fixture
def fake(tmp_path):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    tool = bindir / 'mmdebstrap'
    tool.write_text(FAKE_TOOL)
    tool.chmod(0o755)
    yield tmp_path
    with open('/proc/self/mountinfo') as handle:
        points = [line.split()[4] for line in handle if str(tmp_path) in line.split()[4]]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(['umount', '-l', point], check=False)


def request(tmp_path, mirror, **over):
    req = {'name': 'fk', 'tool': 'mmdebstrap', 'suite': 'bookworm', 'variant': 'minbase',
           'mirror': 'file:///fake/%s' % mirror, 'components': ['main'], 'packages': [],
           'root': str(tmp_path / 'trees' / 'fk'), 'timeout': 60}
    req.update(over)
    return req


def build(tmp_path, req, check=False):
    """(error or None, result) of one build: a failed build does not fail the task, it returns ``error``."""
    env = dict(os.environ, PATH='%s:%s' % (tmp_path / 'bin', os.environ.get('PATH', '/usr/bin:/bin')),
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    args = tmp_path / ('args-%s.json' % threading.get_ident())
    args.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': {'mode': 'build', 'guest': req, '_ansible_check_mode': check}}))
    proc = subprocess.run([sys.executable, MODULE, str(args)], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and not out.get('failed'), out
    return out.get('error'), out


def mounts_under(path):
    with open('/proc/self/mountinfo') as handle:
        return [line.split()[4] for line in handle if line.split()[4].startswith(str(path))]


def processes_mentioning(marker):
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def calls(tmp_path):
    path = tmp_path / 'bin' / 'calls'
    return path.read_text().splitlines() if path.exists() else []


def test_success_renames_the_temporary_tree(fake):
    err, out = build(fake, request(fake, 'ok', packages=['hello', 'less'], components=['main', 'contrib']))
    assert err is None and out['changed'] is True and out['root'] == str(fake / 'trees' / 'fk')
    assert (fake / 'trees' / 'fk' / 'etc' / 'debian_version').read_text() == '12.0\n'
    assert sorted(os.listdir(str(fake / 'trees'))) == ['fk']       # no temporary directory, no lock file
    assert calls(fake) == ['--variant=minbase --components=main,contrib --include=hello,less bookworm %s '
                           'file:///fake/ok' % (fake / 'trees' / '.fk.bootstrap')]
    err, out = build(fake, request(fake, 'ok'))
    assert err is None and out['changed'] is False and len(calls(fake)) == 1


def test_failure_unmounts_and_removes_the_partial_tree(fake):
    err, out = build(fake, request(fake, 'fail'))
    assert err
    assert err.startswith('guest fk: mmdebstrap bookworm minbase from file:///fake/fail failed (exit status 3)')
    assert 'E: fake failure, mounts left behind' in err
    assert mounts_under(fake / 'trees') == []
    assert os.listdir(str(fake / 'trees')) == []


def test_timeout_kills_every_process_of_the_tool(fake):
    err, out = build(fake, request(fake, 'hang', timeout=1))
    assert err
    assert 'timed out after 1 s (guest_bootstrap_timeout) and was killed' in err and 'I: hanging' in err
    assert processes_mentioning(str(fake)) == []      # the setsid'd child too
    assert mounts_under(fake / 'trees') == []
    assert os.listdir(str(fake / 'trees')) == []


def test_a_rename_that_fails_is_rolled_back(fake):
    root = fake / 'trees' / 'fk'
    root.mkdir(parents=True)
    subprocess.run(['mount', '-t', 'tmpfs', 'vstest-fake', str(root)], check=True)   # rename onto it: EBUSY
    err, out = build(fake, request(fake, 'ok'))
    assert err
    assert 'built the tree in' in err and 'cannot become %s: Device or resource busy' % root in err
    assert sorted(os.listdir(str(fake / 'trees'))) == ['fk'] and os.listdir(str(root)) == []


def test_a_crashed_runs_leftover_is_removed_first(fake):
    leftover = fake / 'trees' / '.fk.bootstrap'
    (leftover / 'proc').mkdir(parents=True)
    subprocess.run(['mount', '-t', 'tmpfs', 'vstest-fake', str(leftover / 'proc')], check=True)
    (leftover / 'proc' / 'junk').write_text('x')
    err, out = build(fake, request(fake, 'ok'), check=True)
    assert err is None and out['changed'] is True and leftover.exists()          # check mode: reported, untouched
    err, out = build(fake, request(fake, 'ok'))
    assert err is None and out['changed'] is True
    assert sorted(os.listdir(str(fake / 'trees'))) == ['fk'] and mounts_under(fake / 'trees') == []
    assert not (fake / 'trees' / 'fk' / 'proc').exists()


def test_two_concurrent_builds_of_one_tree_run_the_tool_once(fake):
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(build(fake, request(fake, 'slowok')))) for dummy in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(out['changed'] for err, out in outs) == [False, True]
    assert len(calls(fake)) == 1
    assert sorted(os.listdir(str(fake / 'trees'))) == ['fk']


def test_a_busy_root_is_refused(fake):
    busy = fake / 'trees' / 'fk'
    busy.mkdir(parents=True)
    (busy / 'data').write_text('mine')
    err, out = build(fake, request(fake, 'ok'))
    assert err.startswith('vserver_guests[fk].root: %s is not empty and has no /etc' % busy)
    assert calls(fake) == [] and sorted(os.listdir(str(fake / 'trees'))) == ['fk']
