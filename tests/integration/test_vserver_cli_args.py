"""The vserver command's command line: --help, refusals (exit 2), exec's words passed untouched, a closed pipe,
non-root, guests named like a listing, an explicit --config-dir that does not exist."""
import os
import signal
import subprocess
import sys

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime
from helpers import VSERVER, env_for, vserver
from test_enter import _stages_of


NOBODY = ['setpriv', '--reuid', '65534', '--regid', '65534', '--clear-groups']
OPTIONS = ('--config-dir', '--run-dir', '--tree-dir', '--log-dir', '--cgroup-parent')
COMMANDS = ('stat', 'ps', 'list', 'start', 'stop', 'restart', 'freeze', 'thaw', 'status', 'enter', 'exec')


def run(paths, argv, prefix=(), env=None, stdout=subprocess.PIPE, python=(sys.executable,)):
    return subprocess.run(list(prefix) + list(python) + [VSERVER] + list(argv), env=env or env_for(paths),
                          stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize('prefix', [(), NOBODY], ids=['root', 'nobody'])
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_lists_every_option_and_command(host_paths, prefix, flag):
    out = run(host_paths, [flag], prefix)
    assert (out.returncode, out.stderr) == (0, ''), out
    assert out.stdout.startswith('usage: vserver ')
    for word in OPTIONS + COMMANDS:
        assert word in out.stdout, word
    assert '0 when the guest runs' in out.stdout and '3 when it is stopped' in out.stdout
    assert '4 when it is broken' in out.stdout
    # after a listing or a guest command too; after exec, --help is the command's (see the exec test)
    assert run(host_paths, ['stat', '--help'], prefix).stdout == out.stdout
    assert run(host_paths, ['web', 'start', '-h'], prefix).stdout == out.stdout


@pytest.mark.parametrize('argv, message', [
    (['stat', 'extra'], 'stat takes no arguments but --json (got extra)'),
    (['list', 'a', 'b'], 'list takes no arguments (got a b)'),
    (['ps', '--config-dir', '/'], 'ps takes no arguments (got --config-dir /); options go before'),
    (['idle', 'start', 'extra'], 'start takes no arguments (got extra)'),
    (['idle', 'status', '-v'], 'status takes no arguments (got -v); options go before'),
    (['idle', 'enter', 'extra'], 'enter takes no arguments'),
    (['idle', 'exec'], 'exec needs a command'),
    (['idle', 'exec', ''], 'exec needs a command'),
    (['idle', 'bogus'], 'unknown command for guest idle: bogus'),
    (['idle'], 'no command given for guest idle'),
    (['start'], 'start needs a guest name'),
    ([], 'a command is needed'),
    (['--bogus', 'stat'], 'unrecognized arguments: --bogus'),
    (['-x', 'idle', 'exec', '/bin/true'], 'unrecognized arguments: -x'),
    (['--config', '/', 'list'], 'unrecognized arguments: --config'),   # no abbreviations: exec takes none either
    (['--run-dir'], 'argument --run-dir: expected one argument'),
], ids=lambda value: ' '.join(value) if isinstance(value, list) else None)
def test_unknown_options_and_extra_arguments_are_refused(host_paths, make_guest, argv, message):
    idle = make_guest('idle')
    out = run(host_paths, argv)
    assert out.returncode == 2 and out.stdout == '', out
    assert out.stderr.startswith('usage: vserver ') and 'vserver: error: %s' % message in out.stderr, out.stderr
    assert 'Traceback' not in out.stderr
    assert _runtime.status(host_paths, idle)['state'] == 'stopped'


def test_exec_passes_every_word_after_exec_untouched(host_paths, make_guest):
    make_guest('words', start=True)
    script = 'printf "[%s]" "$@"'
    out = vserver(host_paths, 'words', 'exec', 'sh', '-c', script, 'sh', '-la', '--help', '-h', '--', '',
                  '--config-dir', 'x', 'stat', 'extra')
    assert (out.returncode, out.stdout) == (0, '[-la][--help][-h][--][][--config-dir][x][stat][extra]'), out
    out = vserver(host_paths, 'words', 'exec', 'ls', '-la', '/')
    assert out.returncode == 0 and out.stdout.startswith('total ') and ' bin' in out.stdout, out
    # the options before the guest name, in both forms, and given explicitly (they win over the environment)
    env = dict(env_for(host_paths), VSERVER_CONFIG_DIR='/nonexistent', VSERVER_RUN_DIR='/nonexistent')
    out = run(host_paths, ['--config-dir', host_paths.config_dir, '--run-dir=%s' % host_paths.run_dir, 'words',
                           'exec', 'hostname'], env=env)
    assert (out.returncode, out.stdout) == (0, 'words\n'), out


def test_exec_does_without_argparse(host_paths, make_guest):
    """exec and enter parse their command line without importing argparse (it costs more than their parse), nor the
    managers (~30 ms), on the full path (the first exec after a start) and the fast one: the interpreter's import
    log of `vserver NAME exec` has neither, that of `vserver stat` has both."""
    make_guest('fast', start=True)
    for dummy in ('full path', 'fast path'):
        out = run(host_paths, ['fast', 'exec', '/bin/true'], python=[sys.executable, '-X', 'importtime'])
        assert out.returncode == 0 and 'import time:' in out.stderr, out
        assert not [line for line in out.stderr.splitlines() if line.endswith((' argparse', '._mgr_context'))]
    out = run(host_paths, ['stat'], python=[sys.executable, '-X', 'importtime'])
    assert out.returncode == 0 and [line for line in out.stderr.splitlines() if line.endswith(' argparse')]
    assert [line for line in out.stderr.splitlines() if line.endswith('._mgr_context')]


def test_a_refusal_after_the_second_stage_started_aborts_it(host_paths, make_guest, tmp_path):
    """`exec` starts its second stage before it reads the guest; every refusal from then on ends it too."""
    make_guest('started', start=True)
    rt = _runtime.Runtime(host_paths, 'started')
    missing = str(tmp_path / 'no-such-dir')
    for argv, code, message in [
            (['--run-dir=relative', 'started', 'exec', '/bin/true'], 1, 'vserver: run_dir must be an absolute path'),
            (['nosuch', 'exec', '/bin/true'], 1, 'vserver: no such guest: nosuch'),
            (['--cgroup-parent', 'hold', 'started', 'enter'], 1, 'vserver: cgroup_parent must not start with'),
            (['--config-dir', missing, 'started', 'exec', '/bin/true'], 2,
             'vserver: error: --config-dir %s' % missing)]:
        proc = subprocess.Popen([sys.executable, VSERVER] + argv, env=env_for(host_paths),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dummy, err = proc.communicate(timeout=60)
        assert proc.returncode == code and err.splitlines()[-1].startswith(message), (argv, err)
        assert 'Traceback' not in err
        assert not _stages_of(proc.pid), argv
        assert rt.group.procs() == [rt.init_pid()], argv


@pytest.mark.parametrize('listing', ['stat', 'ps', 'list'])
def test_a_listing_whose_reader_is_gone_ends_quietly_by_sigpipe(host_paths, make_guest, listing):
    make_guest('piped')
    read_end, write_end = os.pipe()
    os.close(read_end)   # `vserver ps | true`: nobody reads, the first write fails
    try:
        out = run(host_paths, [listing], stdout=write_end)
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (-signal.SIGPIPE, ''), out


def test_ps_into_head_ends_quietly(host_paths, make_guest):
    make_guest('headed', start=True)
    cmd = 'set -o pipefail; "$@" ps | head -1; echo "status=$?"'
    out = subprocess.run(['bash', '-c', cmd, 'bash', sys.executable, VSERVER], env=env_for(host_paths),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ['PID', 'CTX', 'GPID', 'GUEST', 'S', 'RSS', 'COMMAND'] and len(lines) == 2, out
    assert lines[1] in ('status=0', 'status=141') and out.stderr == '', out   # 141: it was still writing


def test_non_root_is_told_it_needs_root(host_paths, make_guest):
    make_guest('rooted', start=True)
    cold = make_guest('cold')
    rt = _runtime.Runtime(host_paths, 'rooted')
    init = rt.init_pid()
    for argv in (['list'], ['stat'], ['ps'], ['rooted', 'status'], ['rooted', 'stop'], ['cold', 'start'],
                 ['rooted', 'exec', '/bin/true'], ['rooted', 'enter'],
                 ['--config-dir', host_paths.config_dir, 'rooted', 'exec', '/bin/true']):
        out = run(host_paths, argv, NOBODY)
        assert (out.returncode, out.stdout) == (1, ''), (argv, out)
        assert out.stderr == 'vserver: needs root: run it as root (e.g. with sudo)\n', (argv, out.stderr)
    assert rt.init_pid() == init and rt.group.procs() == [init]
    assert _runtime.status(host_paths, cold)['state'] == 'stopped'


def test_guests_named_like_a_listing_are_reachable(host_paths, make_guest):
    for name in ('stat', 'ps', 'list'):
        make_guest(name, stop_signal='SIGKILL')
    out = vserver(host_paths, 'list')
    assert (out.returncode, out.stdout) == (0, 'list\nps\nstat\n'), out
    for name in ('stat', 'ps', 'list'):
        out = vserver(host_paths, name, 'start')
        assert (out.returncode, out.stdout.split(':')[0]) == (0, name), out
        out = vserver(host_paths, name, 'status')
        assert out.returncode == 0 and out.stdout.startswith('%s is running' % name), out
        out = vserver(host_paths, name, 'exec', 'hostname')
        assert (out.returncode, out.stdout) == (0, name + '\n'), out
    out = vserver(host_paths, 'stat')
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0][0] == 'CTX' and sorted((r[7], r[6]) for r in rows[1:]) == [
        ('list', 'running'), ('ps', 'running'), ('stat', 'running')], out
    out = vserver(host_paths, 'ps')
    assert out.returncode == 0 and {'stat', 'ps', 'list'} <= {line.split()[3] for line in out.stdout.splitlines()}
    assert vserver(host_paths, 'stat', 'stop').returncode == 0
    assert vserver(host_paths, 'stat', 'status').returncode == 3
    assert vserver(host_paths, 'ps', 'status').returncode == 0   # the others were not touched


def test_an_explicit_config_dir_must_exist(host_paths, make_guest, tmp_path):
    here = make_guest('here')
    missing = str(tmp_path / 'no-such-dir')
    for argv in (['--config-dir', missing, 'list'], ['--config-dir=%s' % missing, 'stat'],
                 ['--config-dir', missing, 'here', 'start'], ['--config-dir', missing, 'here', 'exec', '/bin/true']):
        out = run(host_paths, argv)
        assert (out.returncode, out.stdout) == (2, ''), (argv, out)
        assert 'vserver: error: --config-dir %s: no such directory\n' % missing in out.stderr, out.stderr
    assert _runtime.status(host_paths, here)['state'] == 'stopped'
    # given on the command line it wins over the environment
    env = dict(env_for(host_paths), VSERVER_CONFIG_DIR=missing)
    out = run(host_paths, ['--config-dir', host_paths.config_dir, 'list'], env=env)
    assert (out.returncode, out.stdout) == (0, 'here\n'), out
    # from the environment (or /etc/default/vserver, or the default) it may not exist yet: a fresh host, no guests
    out = run(host_paths, ['list'], env=env)
    assert (out.returncode, out.stdout, out.stderr) == (0, '', ''), out
    out = run(host_paths, ['stat'], env=env)
    assert out.returncode == 0 and out.stdout.split() == ['CTX', 'PROC', 'RSS', 'DISK', 'CPUTIME', 'UPTIME', 'STATE',
                                                          'NAME', 'ADDRESSES'], out
