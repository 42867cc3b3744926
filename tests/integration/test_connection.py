"""Guests as Ansible hosts: the vserver.core.vserver connection and inventory plugins, on this host.

A Debian minbase guest with python3 (tests/debian/build python3, cached) and a busybox guest run; playbooks reach
them through the connection plugin (`vserver NAME exec` of this checkout, as a subprocess): modules, files both
ways (a large binary byte-exact), pipelining on and off, become to an unprivileged user of the guest, raw on the
busybox guest. Attacks: a guest that planted symlinks at the destination of copy (and at Ansible's temporary
directory) and at the source of fetch, pointing at host paths, gets everything inside itself; the host paths stay
untouched and unread. The module's process holds exactly the guest init's credentials, namespaces and cgroups.
Bad input (unknown guest, stopped guest, unreachable host, wrong inventory config, a bad host_roots key) fails with
a clear message naming it. The remote case (ssh to the guest's host) runs in the molecule fleet scenario.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _common, _config, _runtime, _template
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_helpers import VENV_BIN, ansible_env, task_results
from conftest import stop_guests
from helpers import TOP, VSERVER, guest_sh

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which('mmdebstrap'), reason='mmdebstrap missing (make apt)')]

PY_GUEST, BB_GUEST, OFF_GUEST = 'vs17-py', 'vs17-bb', 'vs17-off'
REAPER = ['/usr/bin/perl', '-e', 'while (1) { sleep 1 if wait == -1 }']
STATUS_KEYS = ('Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp')
BIG = 24 << 20


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """This host with private roots: a running Debian guest with python3 (and a user vsuser), a running busybox
    guest, a stopped busybox guest."""
    base = tmp_path_factory.mktemp('conn')
    paths = _common.Paths(config_dir=str(base / 'etc'), run_dir=str(base / 'run'), tree_dir=str(base / 'trees'),
                          log_dir=str(base / 'log'), cgroup_parent='vstest-vs17conn')
    built = subprocess.run([os.path.join(TOP, 'tests', 'debian', 'build'), 'python3'], capture_output=True,
                           text=True, timeout=900, check=False)
    if built.returncode != 0:
        pytest.fail('tests/debian/build python3 failed:\n%s' % built.stderr[-3000:])
    os.makedirs(paths.tree_dir)
    py_root = os.path.join(paths.tree_dir, PY_GUEST)
    subprocess.run(['cp', '-a', '--reflink=auto', built.stdout.strip().splitlines()[-1], py_root], check=True,
                   timeout=300)
    docs = [{'name': PY_GUEST, 'xid': 1711, 'root': py_root, 'init': REAPER}]
    for name, xid in ((BB_GUEST, 1712), (OFF_GUEST, 1713)):
        _template.build_busybox(os.path.join(paths.tree_dir, name))
        docs.append({'name': name, 'xid': xid, 'root': os.path.join(paths.tree_dir, name), 'init': ['/sbin/init']})
    try:
        for doc in docs:
            doc.update(stop_timeout=2, stop_signal='SIGKILL', schema=_config.SCHEMA)
            _config.save(paths, doc)
            if doc['name'] != OFF_GUEST:
                _runtime.start(paths, doc)
        out = guest_sh(paths, PY_GUEST, 'useradd -m -s /bin/sh vsuser && id -u vsuser', timeout=60)
        assert out.returncode == 0, out
        yield paths
    finally:
        stop_guests(paths)
        subprocess.run(['rm', '-rf', '--one-file-system', str(base)], check=False, timeout=300)


def guest_vars(paths):
    return {'ansible_connection': 'vserver.core.vserver', 'ansible_python_interpreter': '/usr/bin/python3',
            'ansible_vserver_command': '%s %s' % (sys.executable, VSERVER),
            'ansible_vserver_host_roots': {'config_dir': paths.config_dir, 'run_dir': paths.run_dir,
                                           'tree_dir': paths.tree_dir, 'log_dir': paths.log_dir,
                                           'cgroup_parent': paths.cgroup_parent}}


def play(tmp_path, paths, hosts, tasks, pipelining=False, name='play', extra_hosts=None, gather=False):
    """Run one play on ``hosts`` (guest names, or {name: vars}) through the connection; (rc, json output)."""
    inventory = {'all': {'vars': guest_vars(paths), 'hosts': dict((h, {}) for h in hosts)}}
    inventory['all']['hosts'].update(extra_hosts or {})
    (tmp_path / (name + '.inv.yml')).write_text(json.dumps(inventory))
    (tmp_path / (name + '.yml')).write_text(json.dumps([{'hosts': 'all', 'gather_facts': gather, 'tasks': tasks}]))
    env = ansible_env()
    env['ANSIBLE_PIPELINING'] = '1' if pipelining else '0'
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-playbook'), '-i', str(tmp_path / (name + '.inv.yml')),
                           str(tmp_path / (name + '.yml'))], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('ansible-playbook output is not JSON:\n%s\n%s' % (proc.stdout[-3000:], proc.stderr[-3000:]))


def results(data, host):
    return dict(task_results(data, host))


def in_tree(paths, guest, path):
    return os.path.join(paths.tree_dir, guest, path.lstrip('/'))


@pytest.mark.parametrize('pipelining', [False, True], ids=['no-pipelining', 'pipelining'])
def test_modules_files_and_become_inside_a_debian_guest(fleet, tmp_path, pipelining):
    big = tmp_path / 'big.bin'
    big.write_bytes(os.urandom(BIG))
    (tmp_path / 'motd.j2').write_text('guest {{ inventory_hostname }} says {{ word }}\n')
    fetched = tmp_path / 'fetched'
    init = _runtime.Runtime(fleet, PY_GUEST).init_pid()
    tasks = [
        {'name': 'command', 'ansible.builtin.command': 'cat /etc/debian_version', 'changed_when': False},
        {'name': 'shell', 'ansible.builtin.shell': 'echo "$((6 * 7))" > /srv/answer && cat /srv/answer'},
        {'name': 'copy big', 'ansible.builtin.copy': {'src': str(big), 'dest': '/srv/big.bin', 'mode': '0640'}},
        {'name': 'copy big again', 'ansible.builtin.copy': {'src': str(big), 'dest': '/srv/big.bin', 'mode': '0640'}},
        {'name': 'template', 'ansible.builtin.template': {'src': str(tmp_path / 'motd.j2'), 'dest': '/etc/motd'},
         'vars': {'word': 'hello'}},
        {'name': 'file', 'ansible.builtin.file': {'path': '/srv/dir', 'state': 'directory', 'owner': 'vsuser',
                                                  'mode': '0750'}},
        {'name': 'stat', 'ansible.builtin.stat': {'path': '/srv/big.bin', 'checksum_algorithm': 'sha256'}},
        {'name': 'fetch', 'ansible.builtin.fetch': {'src': '/srv/big.bin', 'dest': str(fetched) + '/',
                                                    'flat': True}},
        {'name': 'become', 'ansible.builtin.command': 'id -un', 'become': True, 'become_user': 'vsuser',
         'become_method': 'ansible.builtin.su', 'changed_when': False},
        {'name': 'become copy', 'ansible.builtin.copy': {'content': 'mine\n', 'dest': '/srv/dir/mine'},
         'become': True, 'become_user': 'vsuser', 'become_method': 'ansible.builtin.su'},
        {'name': 'remote user', 'ansible.builtin.shell': 'id -un; echo $HOME', 'remote_user': 'vsuser',
         'changed_when': False},
        {'name': 'creds', 'ansible.builtin.shell': 'cat /proc/$PPID/status; for n in cgroup ipc mnt net pid uts; '
                                                   'do readlink /proc/$PPID/ns/$n; done', 'changed_when': False},
    ]
    rc, data = play(tmp_path, fleet, [PY_GUEST], tasks, pipelining=pipelining)
    res = results(data, PY_GUEST)
    assert rc == 0, [(k, v.get('msg'), v.get('stderr')) for k, v in res.items() if v.get('failed')]
    assert res['command']['stdout'] == open(in_tree(fleet, PY_GUEST, '/etc/debian_version')).read().strip()
    assert res['shell']['stdout'] == '42' and open(in_tree(fleet, PY_GUEST, '/srv/answer')).read() == '42\n'
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    with open(in_tree(fleet, PY_GUEST, '/srv/big.bin'), 'rb') as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest
    assert res['copy big']['changed'] and not res['copy big again']['changed']
    assert oct(os.stat(in_tree(fleet, PY_GUEST, '/srv/big.bin')).st_mode & 0o777) == '0o640'
    assert open(in_tree(fleet, PY_GUEST, '/etc/motd')).read() == 'guest %s says hello\n' % PY_GUEST
    st = os.stat(in_tree(fleet, PY_GUEST, '/srv/dir'))
    uid = int(guest_sh(fleet, PY_GUEST, 'id -u vsuser').stdout)
    assert st.st_uid == uid and oct(st.st_mode & 0o777) == '0o750'
    assert res['stat']['stat']['checksum'] == digest and res['stat']['stat']['size'] == BIG
    assert hashlib.sha256((fetched / 'big.bin').read_bytes()).hexdigest() == digest
    assert res['become']['stdout'] == 'vsuser'
    assert res['remote user']['stdout_lines'] == ['vsuser', '/home/vsuser']
    assert os.stat(in_tree(fleet, PY_GUEST, '/srv/dir/mine')).st_uid == uid
    # the module's own process (the shell's parent) holds exactly what the guest's init holds
    lines = res['creds']['stdout'].splitlines()
    kinds = ('cgroup', 'ipc', 'mnt', 'net', 'pid', 'uts')
    status = dict(line.split(':', 1) for line in lines if ':' in line and not line.startswith(kinds))
    its = P.read_status(init)
    assert {k: status[k].strip() for k in STATUS_KEYS} == {k: its[k].strip() for k in STATUS_KEYS}
    assert 'python' in status['Name']
    for kind in kinds:
        assert P.ns_inode(init, kind) in lines, kind


def test_raw_on_a_busybox_guest_and_no_python_said_clearly(fleet, tmp_path):
    tasks = [{'name': 'raw', 'ansible.builtin.raw': 'uname -n; id -u'},
             {'name': 'ping', 'ansible.builtin.ping': {}, 'ignore_errors': True}]
    rc, data = play(tmp_path, fleet, [BB_GUEST], tasks)
    res = results(data, BB_GUEST)
    assert res['raw']['stdout_lines'] == [BB_GUEST, '0'], res['raw']
    assert res['ping']['failed']
    assert 'guest %s on this host has no Python' % BB_GUEST in res['ping']['msg'] and 'raw' in res['ping']['msg']


def test_symlinks_planted_by_the_guest_resolve_inside_it(fleet, tmp_path):
    """copy's destination, Ansible's temporary directory and fetch's source are symlinks to host paths: the
    files land in and come from the guest's own tree; the host paths are neither written nor read."""
    host_dir = tmp_path / 'host'
    host_dir.mkdir()
    target, tmp_target, secret = host_dir / 'target', host_dir / 'ansible', host_dir / 'secret'
    target.write_text('host original\n')
    secret.write_text('host secret\n')
    secret_atime = os.stat(secret).st_atime_ns
    os.utime(secret, ns=(secret_atime - 10 ** 9 * 3600, os.stat(secret).st_mtime_ns))  # a read would move it
    secret_atime = os.stat(secret).st_atime_ns
    plant = ('mkdir -p {d} && echo guest-copy > {s} && ln -s {t} /srv/copy-dst && ln -s {s} /srv/fetch-src && '
             'rm -rf /root/.ansible && mkdir -p {a} && ln -s {a} /root/.ansible').format(d=host_dir, s=secret, t=target, a=tmp_target)
    assert guest_sh(fleet, PY_GUEST, plant).returncode == 0
    tasks = [{'name': 'copy',
              'ansible.builtin.copy': {'content': 'from ansible\n', 'dest': '/srv/copy-dst', 'follow': True}},
             {'name': 'fetch', 'ansible.builtin.fetch': {'src': '/srv/fetch-src', 'dest': str(tmp_path / 'got'),
                                                         'flat': True}}]
    rc, data = play(tmp_path, fleet, [PY_GUEST], tasks)
    res = results(data, PY_GUEST)
    assert rc == 0, res
    assert target.read_text() == 'host original\n' and not tmp_target.exists()
    assert sorted(os.listdir(host_dir)) == ['secret', 'target']
    assert os.stat(secret).st_atime_ns == secret_atime
    landed = [p for p in (str(target), '/srv/copy-dst') if os.path.isfile(in_tree(fleet, PY_GUEST, p))]
    assert landed and open(in_tree(fleet, PY_GUEST, landed[0])).read() == 'from ansible\n', landed
    assert os.path.isdir(in_tree(fleet, PY_GUEST, str(tmp_target)))  # Ansible's temporary files went there
    assert (tmp_path / 'got').read_text() == 'guest-copy\n'


def test_bad_input_fails_clearly(fleet, tmp_path):
    roots = guest_vars(fleet)['ansible_vserver_host_roots']
    hosts = {'vs17-nosuch': {}, OFF_GUEST: {},
             'vs17-far': {'ansible_vserver_guest': PY_GUEST, 'ansible_vserver_host': 'far',
                          'ansible_vserver_ssh_host': '127.0.0.1', 'ansible_vserver_ssh_port': 1,
                          'ansible_vserver_control_path_dir': ''},
             'vs17-nocmd': {'ansible_vserver_guest': PY_GUEST,
                            'ansible_vserver_command': '/usr/bin/python3 /nonexistent/vserver'},
             'vs17-badroots': {'ansible_vserver_guest': PY_GUEST,
                               'ansible_vserver_host_roots': dict(roots, confdir='/etc')}}
    rc, data = play(tmp_path, fleet, [], [{'name': 'raw', 'ansible.builtin.raw': 'true'}], extra_hosts=hosts)
    assert rc != 0
    msgs = dict((host, results(data, host)['raw'].get('msg', '')) for host in hosts)
    assert 'guest vs17-nosuch on this host: cannot enter it: no such guest: vs17-nosuch' in msgs['vs17-nosuch']
    assert 'guest %s on this host: cannot enter it: guest %s is not running' % (OFF_GUEST, OFF_GUEST) in msgs[OFF_GUEST]
    assert 'guest %s on host far: host unreachable over ssh' % PY_GUEST in msgs['vs17-far'], data['plays'][0]['tasks'][0]['hosts']['vs17-far']
    assert "host_roots: unknown key 'confdir'" in msgs['vs17-badroots'], msgs['vs17-badroots']
    assert 'guest %s on this host: no vserver command (/usr/bin/python3 /nonexistent/vserver) on the host' % PY_GUEST \
        in msgs['vs17-nocmd'], msgs['vs17-nocmd']


def inventory_dir(tmp_path, paths, config, offline_guests=None):
    inv = tmp_path / 'inv'
    inv.mkdir()
    host = {'ansible_connection': 'local', 'vserver_guests': offline_guests or []}
    host.update(('vserver_' + key, value) for key, value in guest_vars(paths)['ansible_vserver_host_roots'].items())
    (inv / '1-hosts.yml').write_text(json.dumps({'all': {'children': {'vserver_hosts': {'hosts': {
        'localhost': host}}}}}))
    (inv / '2-guests.vserver.yml').write_text(json.dumps(dict(
        {'plugin': 'vserver.core.vserver', 'vserver_command': '%s %s' % (sys.executable, VSERVER)}, **config)))
    return str(inv)


def ansible(argv, timeout=120):
    return subprocess.run([os.path.join(VENV_BIN, argv[0])] + argv[1:], env=dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK='default'),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def plain(value):
    """ansible-inventory's JSON without its unsafe-string wrappers."""
    if isinstance(value, dict):
        return value['__ansible_unsafe'] if list(value) == ['__ansible_unsafe'] else \
            dict((k, plain(v)) for k, v in value.items())
    return [plain(v) for v in value] if isinstance(value, list) else value


def test_inventory_plugin_lists_groups_and_reaches_the_guests(fleet, tmp_path):
    # the busybox guests point /usr/bin/python3 at an executable that exists only on the host (absolute, and
    # relative with `..` past their root): `vserver list --json` resolves both inside their trees, finds no Python
    fake = tmp_path / 'host-only-python'
    fake.write_text('#!/bin/sh\n')
    fake.chmod(0o755)
    assert guest_sh(fleet, BB_GUEST, 'ln -sf %s /usr/bin/python3' % fake).returncode == 0
    os.symlink('../' * 12 + str(fake).lstrip('/'), in_tree(fleet, OFF_GUEST, '/usr/bin/python3'))
    inv = inventory_dir(tmp_path, fleet, {
        'keyed_groups': [{'key': 'vserver_xid | string', 'prefix': 'xid'}], 'groups': {'debian': 'vserver_python != None'},
        'compose': {'label': "'g-' ~ inventory_hostname"}, 'strict': True,
        'cache': True, 'cache_plugin': 'ansible.builtin.jsonfile', 'cache_connection': str(tmp_path / 'cache')})
    out = ansible(['ansible-inventory', '-i', inv, '--list'])
    assert out.returncode == 0, out.stderr
    data = plain(json.loads(out.stdout))
    meta = data['_meta']['hostvars']
    assert PY_GUEST in meta, out.stderr
    assert meta[PY_GUEST]['vserver_state'] == 'running' and meta[OFF_GUEST]['vserver_state'] == 'stopped'
    assert meta[PY_GUEST]['vserver_python'] == '/usr/bin/python3' and meta[BB_GUEST]['vserver_python'] is None
    assert meta[PY_GUEST]['vserver_xid'] == 1711 and meta[PY_GUEST]['label'] == 'g-' + PY_GUEST
    assert meta[PY_GUEST]['ansible_vserver_user'] == 'root' and meta[PY_GUEST]['ansible_vserver_host'] == 'localhost'
    assert sorted(data['vserver_no_python']['hosts']) == [BB_GUEST, OFF_GUEST]
    assert sorted(data['vserver_state_running']['hosts']) == [BB_GUEST, PY_GUEST]
    assert data['vserver_state_stopped']['hosts'] == [OFF_GUEST]
    assert sorted(data['vserver_host_localhost']['hosts']) == sorted([BB_GUEST, PY_GUEST, OFF_GUEST])
    assert data['xid_1711']['hosts'] == [PY_GUEST] and data['debian']['hosts'] == [PY_GUEST]
    assert os.listdir(tmp_path / 'cache')  # the listing was cached
    ping = ansible(['ansible', '-i', inv, 'vserver_guest', '-m', 'ansible.builtin.ping', '-o'])
    lines = ping.stdout.splitlines()
    assert any(line.startswith(PY_GUEST + ' | SUCCESS') for line in lines), ping.stdout
    assert any(line.startswith(BB_GUEST + ' | FAILED') and 'has no Python' in line for line in lines), ping.stdout
    assert any(line.startswith(OFF_GUEST + ' | UNREACHABLE') and 'is not running' in line for line in lines)
    raw = ansible(['ansible', '-i', inv, 'vserver_no_python:&vserver_state_running', '-m', 'ansible.builtin.raw',
                   '-a', 'cat /etc/hostname', '-o'])
    assert raw.returncode == 0 and raw.stdout.count('| CHANGED') == 1 and BB_GUEST in raw.stdout, raw.stdout


def test_inventory_plugin_offline_and_wrong_config(fleet, tmp_path):
    inv = inventory_dir(tmp_path, fleet, {'offline': True}, offline_guests=[
        {'name': 'vs17-web', 'xid': 1720, 'addresses': ['198.18.17.2/24'], 'packages': ['python3'],
         'template': 'mmdebstrap'},
        {'name': 'vs17-dns', 'state': 'stopped', 'limits': {'memory': '32M'}}])
    out = ansible(['ansible-inventory', '-i', inv, '--list'])
    assert out.returncode == 0, out.stderr
    data = plain(json.loads(out.stdout))
    meta = data['_meta']['hostvars']
    assert meta['vs17-web']['vserver_addresses'] == ['198.18.17.2/24'] and meta['vs17-web']['vserver_xid'] == 1720
    assert meta['vs17-dns']['vserver_limits'] == {'memory': '32M'} and data['vserver_no_python']['hosts'] == ['vs17-dns']
    assert PY_GUEST not in meta  # nothing was asked of the host
    bad = tmp_path / 'bad'
    shutil.copytree(inv, bad)
    (bad / '2-guests.vserver.yml').write_text(json.dumps({'plugin': 'vserver.core.vserver', 'hosts_group': 'nope'}))
    out = ansible(['ansible-inventory', '-i', str(bad), '--list'])
    assert "hosts_group 'nope' is not a group" in out.stderr, out.stderr
    (bad / '2-guests.vserver.yml').write_text(json.dumps({'plugin': 'vserver.core.vserver', 'ofline': True}))
    out = ansible(['ansible-inventory', '-i', str(bad), '--list'])
    assert 'unknown option(s) ofline' in out.stderr, out.stderr
    # a host ssh cannot reach (nothing listens on 127.0.0.1:1): left out with a warning, or an error naming it
    (bad / '1-hosts.yml').write_text(json.dumps({'all': {'children': {'vserver_hosts': {'hosts': {
        'far': {'ansible_host': '127.0.0.1', 'ansible_port': 1}}}}}}))
    for strict, said in ((True, "[WARNING]: vserver inventory: host far unreachable over ssh: ssh: connect to host "
                                "127.0.0.1 port 1: Connection refused; its guests are left out"),
                         (False, 'host far unreachable over ssh: ssh: connect to host 127.0.0.1 port 1')):
        (bad / '2-guests.vserver.yml').write_text(json.dumps({'plugin': 'vserver.core.vserver',
                                                              'skip_unreachable': strict}))
        out = ansible(['ansible-inventory', '-i', str(bad), '--list'])
        assert said in ' '.join(out.stderr.split()), out.stderr
