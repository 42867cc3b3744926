"""The Makefile's install steps: `make demo` (and demo-clean, install-cli) installs only what the demo needs;
`make setup` (what `make test` runs first) installs everything the tests and benchmarks use.

Read from what make would run (`make -n -B TARGET`: every command of the target and its prerequisites, printed,
nothing run), not from the variables' text."""
import os
import re
import subprocess

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# tools only tests or benchmarks use; the demo must not pull any of them in
TEST_ONLY = {'strace', 'iperf3', 'jdupes', 'lxc', 'systemd-container', 'debootstrap', 'mmdebstrap', 'openssh-server',
             'openssh-client', 'qemu-system-x86', 'cpio', 'gcc', 'libc6-dev', 'xfsprogs', 'btrfs-progs', 'nftables'}
DEMO_NEEDS = {'busybox-static', 'util-linux', 'iproute2', 'python3-venv'}
TEST_PIP = ('pytest', 'molecule', 'ansible-lint', 'galaxy-importer', 'pytest-testinfra')


def dry_run(target):
    proc = subprocess.run(['make', '-C', TOP, '-n', '-B', '--no-print-directory', target], capture_output=True,
                          text=True, timeout=60, check=True)
    commands = proc.stdout
    apt = set()
    for found in re.findall(r'for p in ([^;]*); do dpkg-query', commands):
        apt.update(found.split())
    pip = [line for line in commands.splitlines() if '/pip install' in line]
    return commands, apt, pip


@pytest.mark.parametrize('target', ['demo', 'demo-clean', 'install-cli'])
def test_the_demo_installs_only_what_it_needs(target):
    commands, apt, pip = dry_run(target)
    assert 'playbooks/' in commands  # the dry run reached the target's own commands
    assert DEMO_NEEDS <= apt, apt
    assert not apt & TEST_ONLY, apt & TEST_ONLY
    assert pip and all('requirements-dev.txt' not in line for line in pip), pip
    assert all(re.search(r"pip install .*'ansible-core==[0-9.]+'$", line) for line in pip), pip
    assert not any(name in line for line in pip for name in TEST_PIP), pip


def test_setup_for_the_tests_installs_everything():
    commands, apt, pip = dry_run('setup')
    assert (DEMO_NEEDS | TEST_ONLY) <= apt, (DEMO_NEEDS | TEST_ONLY) - apt
    assert any('-r requirements-dev.txt' in line for line in pip), pip
    # make test sets up through setup
    proc = subprocess.run(['make', '-C', TOP, '-pn', '--no-print-directory', 'help'], capture_output=True, text=True,
                          timeout=60, check=True)
    assert re.search(r'^test: setup$', proc.stdout, re.M)


def test_make_test_runs_every_part_and_keeps_the_writers_out_of_the_tree():
    """`make test` runs two lanes at once (make -j2). test_packaging's `ansible-galaxy collection build` lists the
    work tree file by file while the other lane runs, so nothing in either lane writes below it: sanity's copy and
    import-check's artifact and importer files go outside it, and Python writes no bytecode there."""
    commands, dummy, dummy = dry_run('test')
    lanes = [line for line in commands.splitlines() if re.search(r'make .*-j2 ', line)]
    assert len(lanes) == 1, lanes
    lane_targets = set(lanes[0].split()) - {'-j2', '--output-sync=target', '--no-print-directory'}
    assert {'test-pytest', 'lint', 'docs-lint', 'sanity', 'import-check', 'test-ansible-versions', 'molecule-default',
            'molecule-fleet'} <= lane_targets, lane_targets
    assert not lane_targets & {'build', 'docs', 'test-v2'}, lane_targets
    assert 'PYTHONDONTWRITEBYTECODE=1' in lanes[0]
    rsync = [line for line in commands.splitlines() if line.startswith('rsync ')]
    built = [line for line in commands.splitlines() if 'collection build' in line]
    assert rsync and built, commands
    for line in rsync + built:
        destination = line.split()[-2] if 'collection build' in line else line.split()[-1]
        assert not os.path.abspath(destination).startswith(TOP + os.sep), line
    after = commands[commands.index(lanes[0]) + len(lanes[0]):]
    for part in ('tests/leakcheck.py', 'tests/vm/run'):
        assert part in after, part
