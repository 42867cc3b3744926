"""The command lines of the vserver connection and inventory plugins (plugins/plugin_utils/_vserver_cmd.py) and
`vserver list --json`'s parse."""
import shlex

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cli
from ansible_collections.vserver.core.plugins.plugin_utils import _vserver_cmd as V


@pytest.mark.parametrize('host, local', [('', True), (None, True), ('localhost', True), ('127.0.0.1', False),
                                         ('vs1', False), ('192.0.2.1', False)])
def test_local_hosts(host, local):
    assert V.is_local(host) is local


def test_vserver_argv_with_roots_and_a_shell_style_command():
    roots = {'config_dir': '/x y', 'cgroup_parent': 'p', 'run_dir': None}
    argv = V.vserver_argv('/usr/bin/python3 -IS "/opt/my dir/vserver"', roots, ['web', 'exec', 'id'])
    assert argv == ['/usr/bin/python3', '-IS', '/opt/my dir/vserver', '--cgroup-parent=p', '--config-dir=/x y',
                    'web', 'exec', 'id']


@pytest.mark.parametrize('roots, field', [({'confdir': '/etc'}, 'confdir'), ({'config_dir': '/e', 'x': 1}, "'x'")])
def test_unknown_root_keys_are_refused_by_name(roots, field):
    with pytest.raises(ValueError, match='host_roots: unknown key .*%s' % field):
        V.vserver_argv('vserver', roots, ['list', '--json'])


def test_empty_command_is_refused():
    with pytest.raises(ValueError, match='vserver_command'):
        V.vserver_argv('  ', None, ['list'])


def test_ssh_argv_quotes_the_remote_command_once(tmp_path):
    remote = ['vserver', 'web', 'exec', '/bin/sh', '-c', "echo 'a b' $HOME; true"]
    argv = V.ssh_argv({'host': '192.0.2.1', 'port': 2222, 'user': 'root', 'private_key_file': '/k',
                       'common_args': '-o StrictHostKeyChecking=no -o "ProxyCommand=nc %h %p"',
                       'control_path_dir': str(tmp_path / 'cp'), 'connect_timeout': 7}, remote)
    assert argv[0] == 'ssh' and argv[-3:-1] == ['192.0.2.1', '--']
    assert shlex.split(argv[-1]) == remote  # what the remote shell makes of it
    assert ['-p', '2222'] == argv[argv.index('-p'):argv.index('-p') + 2] and ['-l', 'root'] == \
        argv[argv.index('-l'):argv.index('-l') + 2]
    assert 'ConnectTimeout=7' in argv and 'ProxyCommand=nc %h %p' in argv and 'BatchMode=yes' in argv
    assert any(a.startswith('ControlPath=%s/' % (tmp_path / 'cp')) for a in argv)
    assert (tmp_path / 'cp').stat().st_mode & 0o777 == 0o700


def test_ssh_argv_without_master_connection():
    argv = V.ssh_argv({'host': 'h', 'control_path_dir': ''}, ['true'])
    assert not any('Control' in a for a in argv) and argv[-3:] == ['h', '--', 'true']


@pytest.mark.parametrize('rc, err, refused', [
    (1, b'vserver: no such guest: web\n', 'no such guest: web'),
    (1, b'vserver: guest web is not running\n', 'guest web is not running'),
    (1, b'vserver: guest web is frozen: nothing can run in it until `vserver web thaw`\n',
     'guest web is frozen: nothing can run in it until `vserver web thaw`'),
    (1, b'vserver: needs root: run it as root (e.g. with sudo)\n', 'needs root: run it as root (e.g. with sudo)'),
    (1, b'cat: x: No such file or directory\n', None),       # the command's own failure
    (0, b'vserver: no such guest: web\n', None),             # ran fine, whatever it printed
    (2, b'vserver: guest web is not running\n', None),
])
def test_entry_refusals_are_the_vserver_commands_own(rc, err, refused):
    assert V.entry_refused(rc, err) == refused


@pytest.mark.parametrize('rc, err, unreachable', [
    (255, b'ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n', True),
    (255, b'root@h: Permission denied (publickey).\r\n', True),
    (255, b'ssh: Could not resolve hostname nosuch: Name or service not known\r\n', True),
    (255, b'', False),                                       # the remote command exited 255
    (1, b'ssh: connect to host h port 22: Connection refused\r\n', False),
])
def test_ssh_failures(rc, err, unreachable):
    assert V.ssh_unreachable(rc, err) is unreachable


@pytest.mark.parametrize('words, problem', [
    (['list', '--json'], ''),
    (['list', '--jsn'], 'list takes no arguments (got --jsn); options go before the guest name or the listing'),
    (['stat', '--json', 'x'], 'stat takes no arguments'),
    (['web', '--json'], 'unknown command for guest web: --json'),
])
def test_list_json_parse(words, problem):
    assert _cli._problem(words).startswith(problem) if problem else _cli._problem(words) == ''
