"""Entering a guest (`vserver NAME exec|enter`) while its root is hostile: a static program inside attacks every
new process of its PID namespace while the admin works; the terminal of the admin never crosses; an exec'd
process holds exactly the guest init's credentials and fds 0-2 only; the update playbook never runs guest code as
host root; bad input fails clearly. Hostile programs are compiled here (gcc -static) from tests/integration/files."""
import fcntl
import os
import pty
import secrets
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _runtime, _procfs as P
from ansible_helpers import path_vars, run_playbook, task_results
from helpers import TOP, VSERVER, build_static, env_for, vserver
from test_unify import clear_immutable

FILES = os.path.join(TOP, 'tests', 'integration', 'files')
STATUS_KEYS = ('Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp')


build = build_static


def cli(*args):
    return [sys.executable, VSERVER] + list(args)


def converse(argv, env, steps, timeout=60, rows=33, cols=101):
    """Run ``argv`` on a new pty (the admin's terminal, ``rows`` x ``cols``); ``steps``: [(bytes to wait for, bytes
    to type)]. Returns (everything the terminal showed, exit status)."""
    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
        os.execve(argv[0], argv, env)
    out = b''
    steps = list(steps)
    deadline = time.monotonic() + timeout
    done = 0
    try:
        while time.monotonic() < deadline:
            if steps and steps[0][0] in out:
                os.write(master, steps.pop(0)[1])
            ready, dummy, dummy = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the session ended
                    data = b''
                out += data
                if data:
                    continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return out, os.waitstatus_to_exitcode(status)
        raise AssertionError('%s did not finish in %ds: %r' % (argv, timeout, out[-2000:]))
    finally:
        if not done:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(master)


def guest_inodes(init_pid):
    """(dev, ino) of every directory and regular file the guest can name (its tree and /dev, not /proc, /sys)."""
    root = '/proc/%d/root' % init_pid
    seen = set()
    for top, dirs, files in os.walk(root):
        if top == root:
            dirs[:] = [d for d in dirs if d not in ('proc', 'sys')]
        for entry in [top] + [os.path.join(top, f) for f in files]:
            try:
                st = os.stat(entry) if entry == root else os.lstat(entry)  # root: a magic link to the guest's /
            except OSError:
                continue
            seen.add((st.st_dev, st.st_ino))
    return seen


def parse(line):
    head, dummy, rest = line.partition(' ')
    fields = dict(kv.split('=', 1) for kv in rest.split() if '=' in kv)
    return head, fields


def host_python():
    st = os.stat(os.readlink('/proc/self/exe'))
    return st.st_dev, st.st_ino


@pytest.mark.parametrize('ptrace', [False, True], ids=['default-bcaps', 'sys_ptrace-added'])
def test_a_guest_attacking_every_new_process_reaches_nothing_of_the_host(host_paths, make_guest, tmp_path, ptrace):
    marker = tmp_path / 'host-only-marker'
    secret = 'host-secret-%s' % secrets.token_hex(8)
    marker.write_text(secret)
    doc = make_guest('atk', init=['/sbin/attacker', str(marker), '/attack.log', '/stop'], stop_signal='SIGKILL',
                     stop_timeout=1, capabilities={'bcaps_add': ['sys_ptrace']} if ptrace else {})
    build('entry_attacker.c', os.path.join(doc['root'], 'sbin', 'attacker'))
    _runtime.start(host_paths, doc)
    init = _runtime.Runtime(host_paths, 'atk').init_pid()
    bset = int(P.read_status(init)['CapBnd'], 16)
    assert bool(bset & (1 << _caps.CAP_BITS['sys_ptrace'])) == ptrace
    env = env_for(host_paths)
    for dummy in range(200):
        out = subprocess.run(cli('atk', 'exec', '/bin/true'), env=env, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, check=False)
        assert out.returncode == 0, out.stderr
    for dummy in range(3):
        shown, code = converse(cli('atk', 'enter'), env, [(b'#', b'echo sum-$((40+2)); exit 3\n')])
        assert b'sum-42' in shown and code == 3, shown
    with open(os.path.join(doc['root'], 'stop'), 'w'):
        pass
    log = os.path.join(doc['root'], 'attack.log')
    deadline = time.monotonic() + 60
    while not (os.path.exists(log) and open(log).read().endswith('DONE\n')):
        assert time.monotonic() < deadline, 'the attacker did not finish'
        time.sleep(0.2)
    lines = open(log).read().splitlines()
    with open(str(tmp_path / 'attack.log'), 'w') as handle:  # kept for a look after a failure
        handle.write('\n'.join(lines))
    mine = guest_inodes(init)
    python = host_python()
    assert open(marker).read() == secret
    assert not [line for line in lines if 'REACHED' in line or secret in line]
    # nothing of the host in what it read of the processes' command lines (the second stage's program included)
    assert not [line for line in lines if line.startswith('CMDLINE') and (TOP in line or str(tmp_path) in line)]
    # not a blind attacker: it saw (and attacked) most of the admin's commands (a /bin/true may end unseen)
    assert sum(1 for line in lines if line.startswith('NEW ')) >= 100
    grabbed_python = 0
    for line in lines:
        head, fields = parse(line)
        # every process it could see, signal, trace or read held at most what the guest's root holds
        if fields.get('eff', '?') != '?':
            assert int(fields['eff'], 16) & ~bset == 0, line
        if head in ('EXE', 'CWD', 'ROOT', 'FD'):
            mode = int(fields['mode'], 8)
            key = (int(fields['dev']), int(fields['ino']))
            if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and key not in mine:
                # with sys_ptrace the guest may see the exe of a process about to exec: the host's Python,
                # through a read-only mount of that one file; never anything else of the host
                assert ptrace and head == 'EXE' and key == python and fields['ro'] == '1', line
                grabbed_python += 1
        if head in ('EXEW', 'EXEW-LATE') and (int(fields['dev']), int(fields['ino'])) == python:
            assert 'WRITABLE' not in line, line  # busy while any host process runs it; read-only mount anyway
    print('attacker: %d lines, %d processes, host python exe grabbed %d times (read-only)'
          % (len(lines), sum(1 for line in lines if line.startswith('NEW ')), grabbed_python))


def test_the_admins_terminal_is_never_reachable_from_the_guest(host_paths, make_guest):
    doc = make_guest('tty', start=True)
    build('entry_tty.c', os.path.join(doc['root'], 'sbin', 'ttyprobe'))
    env = env_for(host_paths)
    vs = ' '.join([sys.executable, VSERVER])
    # TIOCSTI from a command run with `exec` on a terminal, and from inside `enter`: the admin's shell reads
    # nothing afterwards
    after = 'echo RETURNED; read -t 3 line; echo "AFTER:[$line]"'
    shown, code = converse(['/bin/bash', '-c', '%s tty exec /sbin/ttyprobe sti; %s' % (vs, after)], env, [])
    assert code == 0 and b'AFTER:[]' in shown, shown
    assert b'fd0: pushed' in shown  # on the guest's own pty, its controlling terminal: allowed, and harmless
    # the guest's pty has the admin's window size; the status comes back
    shown, code = converse(cli('tty', 'exec', '/bin/sh', '-c', 'stty size; tty; exit 5'), env, [], rows=41, cols=97)
    assert code == 5 and b'41 97' in shown and b'/dev/pts/' in shown, shown
    shown, code = converse(['/bin/bash', '-c', '%s tty enter; %s' % (vs, after)], env,
                           [(b'#', b'/sbin/ttyprobe sti; exit\n')])
    assert code == 0 and b'AFTER:[]' in shown, shown
    # a guest process left running after the command returns reads nothing the admin types afterwards
    typed = 'typed-secret-%s' % secrets.token_hex(6)
    shown, code = converse(['/bin/bash', '-c', '%s tty exec /sbin/ttyprobe reader; echo RETURNED; read -t 10 line; '
                                               'echo "AFTER:[$line]"' % vs], env,
                           [(b'RETURNED', typed.encode() + b'\n')])
    assert code == 0 and ('AFTER:[%s]' % typed).encode() in shown, shown
    time.sleep(4.5)  # the reader's whole watch
    stolen = os.path.join(doc['root'], 'tmp', 'stolen')
    assert typed not in (open(stolen).read() if os.path.exists(stolen) else '')


def _guest_process(rt, comm, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for pid in rt.group.procs():
            try:
                if open('/proc/%d/comm' % pid).read().strip() == comm:
                    return pid
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError('no %s in the guest' % comm)


def test_an_exec_holds_exactly_the_credentials_of_the_guest_init(host_paths, make_guest):
    make_guest('creds', capabilities={'bcaps_drop': ['setfcap'], 'no_new_privs': True},
               limits={'rlimits': {'nofile': {'soft': 300, 'hard': 600}}}, start=True)
    rt = _runtime.Runtime(host_paths, 'creds')
    init = rt.init_pid()
    opened = os.open('/etc', os.O_RDONLY | os.O_DIRECTORY)  # a caller's fd without close-on-exec: `N</etc`
    extra = fcntl.fcntl(opened, fcntl.F_DUPFD, 100)
    os.close(opened)
    try:
        proc = subprocess.Popen(cli('creds', 'exec', '/bin/sleep', '60'), env=env_for(host_paths),
                                pass_fds=(extra,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    finally:
        os.close(extra)
    try:
        pid = _guest_process(rt, 'sleep')
        mine, its = P.read_status(pid), P.read_status(init)
        assert {k: mine[k] for k in STATUS_KEYS} == {k: its[k] for k in STATUS_KEYS}
        assert its['NoNewPrivs'] == '1' and not int(its['CapBnd'], 16) & (1 << _caps.CAP_BITS['setfcap'])
        for name in ('cgroup', 'limits'):
            assert open('/proc/%d/%s' % (pid, name)).read() == open('/proc/%d/%s' % (init, name)).read(), name
        assert len(open('/proc/%d/cgroup' % pid).read().splitlines()) >= 1
        for kind in _runtime.NAMESPACES:
            assert P.ns_inode(pid, kind) == P.ns_inode(init, kind), kind
        assert sorted(os.listdir('/proc/%d/fd' % pid)) == ['0', '1', '2']
        assert P.read_stat(pid)[1] != init  # a child of the second stage, not reparented to the guest's init
        # SIGTERM to `vserver exec` reaches the command; the status comes back as 128+15
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = vserver(host_paths, 'creds', 'exec', '/bin/sh', '-c', 'ls /proc/self/fd; cat /proc/self/cgroup')
    assert out.returncode == 0 and out.stdout.split()[:4] == ['0', '1', '2', '3'], out  # 3: the listing itself


def test_signals_and_exit_status_pass_through(host_paths, make_guest):
    make_guest('sig', start=True)
    assert vserver(host_paths, 'sig', 'exec', '/bin/sh', '-c', 'exit 7').returncode == 7
    assert vserver(host_paths, 'sig', 'exec', '/bin/sh', '-c', 'kill -9 $$').returncode == 128 + 9
    proc = subprocess.Popen(cli('sig', 'exec', '/bin/sh', '-c', 'trap "echo got-int; exit 8" INT; echo ready; '
                                'while :; do sleep 0.1; done'), env=env_for(host_paths), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == 'ready\n'
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 8
        assert proc.stdout.read() == 'got-int\n'
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nothing_is_imported_from_the_guests_tree(host_paths, make_guest):
    """The second stage is a host Python inside the guest's mount namespace: a module the guest planted where
    the host's Python looks for its library would run there (with the guest's credentials, outside its PID
    namespace) if anything were imported after the switch."""
    from ansible_collections.vserver.core.plugins.module_utils import _enter_stage
    doc = make_guest('plant', start=True)
    here = os.path.join(doc['root'], _enter_stage.HERE.lstrip('/'))
    lib = os.path.join(doc['root'], 'usr', 'lib', 'python%d.%d' % sys.version_info[:2])
    payload = 'open("/tmp/imported", "a").write(__name__ + "\\n")\n'
    for directory in (here, lib, os.path.join(lib, 'encodings')):
        os.makedirs(directory, exist_ok=True)
        for module in ('warnings', 'traceback', 'linecache', 'shlex', 'subprocess', 'signal', 'enum', 'utf_8'):
            with open(os.path.join(directory, module + '.py'), 'w') as handle:
                handle.write(payload)
    for args, code in ((('sh', '-c', 'exit 4'), 4), (('true',), 0), (('no-such-program',), 127),
                       (('/bin/sh', '-c', 'kill -TERM $$'), 128 + signal.SIGTERM)):
        out = vserver(host_paths, 'plant', 'exec', *args)
        assert out.returncode == code, (args, out)
    assert not os.path.exists(os.path.join(doc['root'], 'tmp', 'imported'))


def _stages_of(pid):
    """Second-stage processes of vserver process ``pid`` still around: its children, or orphans that went to this
    test's subreaper (tests/reaper.py) or to pytest itself."""
    found = []
    for entry in os.listdir('/proc'):
        try:
            if entry.isdigit() and b'_enter_stage.main' in open('/proc/%s/cmdline' % entry, 'rb').read() \
                    and P.read_stat(int(entry))[1] in (pid, os.getpid(), os.getppid()):
                found.append(int(entry))
        except (OSError, TypeError):
            continue
    return found


def test_bad_input_fails_clearly_and_leaves_nothing_running(host_paths, make_guest):
    make_guest('idle')
    make_guest('ice', start=True)
    rt = _runtime.Runtime(host_paths, 'ice')
    cases = [
        (('nope', 'exec', '/bin/true'), 1, 'no such guest: nope'),
        (('idle', 'exec', '/bin/true'), 1, 'guest idle is not running'),
        (('ice', 'exec'), 2, 'exec needs a command'),
        (('ice', 'exec', ''), 2, 'exec needs a command'),
        (('ice', 'exec', '/no/such/program'), 127, '/no/such/program: command not found in the guest'),
        (('ice', 'enter', 'extra'), 2, 'enter takes no arguments'),
    ]
    env = env_for(host_paths)
    for args, code, msg in cases:
        proc = subprocess.Popen(cli(*args), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        dummy, err = proc.communicate(timeout=60)
        assert (proc.returncode, msg in err) == (code, True), (args, proc.returncode, err)
        assert not _stages_of(proc.pid), args
        assert rt.group.procs() == [rt.init_pid()], args
    _runtime.freeze(host_paths, {'name': 'ice'})
    try:
        t0 = time.monotonic()
        out = vserver(host_paths, 'ice', 'exec', '/bin/true', timeout=30)
        assert out.returncode == 1 and 'guest ice is frozen' in out.stderr, out
        assert time.monotonic() - t0 < 15
    finally:
        _runtime.thaw(host_paths, {'name': 'ice'})
    assert vserver(host_paths, 'ice', 'exec', '/bin/true').returncode == 0
    assert rt.group.procs() == [rt.init_pid()]


def test_every_entry_is_logged_to_syslog(host_paths, make_guest, tmp_path):
    """In a private mount namespace whose /dev/log is a socket of the test's; this host has no syslog daemon
    (no /dev/log), which every other test here runs without."""
    make_guest('logged', start=True)
    sock_path = str(tmp_path / 'log.sock')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    try:
        script = ('mount -t tmpfs vstest-dev /dev && ln -s "$0" /dev/log && exec "$@"')
        argv = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script, sock_path] + \
            cli('logged', 'exec', '/bin/echo', 'a b', '\x1b[31mred')
        out = subprocess.run(argv, env=env_for(host_paths), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, check=False)
        assert out.returncode == 0 and out.stdout == 'a b \x1b[31mred\n', out
        message = sock.recv(4096).decode()
    finally:
        sock.close()
    assert message.startswith('<85>')  # authpriv.notice
    assert 'vserver[' in message and 'guest=logged ' in message and 'uid=0 ' in message
    assert 'command=["/bin/echo", "a b", "\\u001b[31mred"]' in message, message  # no control character logged


def test_unify_update_never_runs_a_stopped_guests_programs_as_host_root(host_paths, make_guest, tmp_path):
    marker = tmp_path / 'host-only-marker'
    marker.write_text('untouched\n')
    planted, honest = make_guest('planted'), make_guest('honest')
    sh = os.path.join(planted['root'], 'bin', 'sh')
    os.unlink(sh)
    build('sh_escape.c', sh, '-DMARKER="%s"' % marker)
    book = os.path.join(TOP, 'playbooks', 'unify_update.yml')
    common = {'vserver_hosts_pattern': 'localhost', 'unify_update_allow': True,
              'unify_update_cli': VSERVER, 'unify_update_paths': path_vars(host_paths)}
    try:
        dummy, data = run_playbook(book, dict(common, unify_update_guest='planted', unify_update_command='true'))
        res = dict(task_results(data))
        assert marker.read_text() == 'untouched\n'
        assert 'contained' in res['Run the update command inside the guest']['stdout'], res
        assert _runtime.status(host_paths, planted)['state'] == 'stopped'
        rc, data = run_playbook(book, dict(common, unify_update_guest='honest',
                                           unify_update_command='echo updated > /etc/vstest-updated'))
        assert rc == 0, data
        assert open(os.path.join(honest['root'], 'etc', 'vstest-updated')).read() == 'updated\n'
        assert _runtime.status(host_paths, honest)['state'] == 'stopped'
    finally:
        clear_immutable(host_paths.tree_dir)
