# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the second stage of entering a guest (``vserver NAME exec|enter``).

``spawn()`` runs on the host side, first thing: it forks a child that leaves the admin's session, keeps nothing
but fds 0-2 and a pipe, and executes a fresh interpreter through a detached read-only bind mount of the host's
Python binary (``K.open_tree_readonly``; a sealed memfd copy where the kernel lacks it). So the exe of that
process, and of the child it forks into the guest's PID namespace, cannot be reopened for writing (the runc
CVE-2019-5736 pattern), and its memory holds nothing of the admin's process. It starts while the host side loads
the config and checks the guest (``_enter``), which then sends it the plan.

``main()`` is that fresh interpreter. It imports nothing but the standard library and ``_kernel``, all before it
joins the guest's mount namespace (from then on every path resolves inside the guest's tree, where no host code
may be loaded from). It receives the fds the host side opened (namespaces, the guest's own pty) as SCM_RIGHTS on
a socketpair, then the plan (a marshal document), joins the guest's cgroup in every
hierarchy and its seven namespaces (PID applies to children only; mount last), applies the guest's rlimits,
groups, bounding set, capabilities and no_new_privs, becomes non-dumpable and keeps only fds 0-2. Then it forks:
only the child appears in the guest's PID namespace, already holding exactly the guest's credentials; it starts a
new session (the pty as its controlling terminal) and execs the guest's program at once. This process stays
outside the guest's PID namespace, forwards signals to the child and exits with its status (128+N for signal N).
"""

from __future__ import annotations

import _signal  # the C module: ``signal`` would import enum, the slowest part of this interpreter's start
import _socket  # the C module, likewise (``socket`` imports enum): fds travel as SCM_RIGHTS on a socketpair
import marshal
import os
import resource
import struct

if __name__ == '_enter_stage':  # the second stage: only the module_utils directory is on sys.path
    import _kernel as K
    import _procfs as P
else:
    from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
    from ansible_collections.vserver.core.plugins.module_utils import _procfs as P

HERE = os.path.dirname(os.path.abspath(__file__))
# The program of the fresh interpreter. Where the library lives and the command's pid come down the pipe first (a
# length and the text), not on the command line: a guest can read the command line of what appears in it.
BOOT = ("import os,sys;r=%d;n=int(os.read(r,8));h=os.read(r,n).decode().split('\\n');sys.path.insert(0,h[0]);"
        "import _enter_stage;_enter_stage.main(r,int(h[1]))")
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2,
             _signal.SIGCONT)
EXIT_SETUP = 126      # the guest could not be entered (the reason is written on stderr)
EXIT_NOT_FOUND = 127  # the command does not exist inside the guest


# --- host side --------------------------------------------------------------------------------------------

def safe_image():
    """(fd, path) of this interpreter's binary through a detached read-only mount (or a sealed memfd copy where
    the kernel has no open_tree/mount_setattr): what the second stage executes."""
    path = os.readlink('/proc/self/exe')
    try:
        return K.open_tree_readonly(path), path
    except OSError as exc:
        if exc.errno not in (1, 22, 38):  # EPERM (a filtered host), EINVAL, ENOSYS (kernel older than 5.12)
            raise
    import fcntl
    src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        memfd = os.memfd_create('vserver-enter', os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        size = os.fstat(src).st_size
        done = 0
        while done < size:
            done += os.sendfile(memfd, src, None, size - done)
    finally:
        os.close(src)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                | fcntl.F_SEAL_WRITE)
    return memfd, path


MAX_FDS = 16          # fds handed over with a plan: seven namespaces and a pty


class Stage:
    """The second stage as seen from the host side: its pid and the socket its plan goes down."""

    def __init__(self, pid, plan_w):
        self.pid = pid
        self.plan_w = plan_w

    def send(self, plan, fds):
        """The fds first (SCM_RIGHTS, on one byte: the stage gets its own duplicates, whatever seccomp filter or
        ptrace policy the host runs under, unlike pidfd_getfd), then the plan (marshal), then EOF."""
        data = memoryview(marshal.dumps(plan))
        sock = _socket.socket(fileno=self.plan_w)
        try:
            sock.sendmsg([b'F'], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack('%di' % len(fds), *fds))])
            while data:
                data = data[sock.send(data):]
        finally:
            sock.detach()
            self.close()

    def close(self):
        if self.plan_w is not None:
            os.close(self.plan_w)
            self.plan_w = None

    def abort(self):
        """No plan: the second stage exits at once (reaped here)."""
        self.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def spawn() -> Stage:
    """Start the second stage (see the module's doc); returns a Stage."""
    exe, path = safe_image()
    plan_r = plan_w = None
    try:
        plan_r, plan_w = (sock.detach() for sock in _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM))
        for fd in (plan_r, plan_w):
            os.set_inheritable(fd, False)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()  # off the admin's session: its terminal is nobody's controlling terminal here
                os.set_inheritable(plan_r, True)
                keep = sorted({0, 1, 2, plan_r, exe})
                last = -1
                for fd in keep:
                    if fd > last + 1:
                        os.closerange(last + 1, fd)
                    last = fd
                os.closerange(last + 1, 1 << 20)  # the caller's stray fds (`7</etc`) never go further
                os.chdir('/')
                # exe is close-on-exec: execve uses it, the new image does not hold it
                os.execve(exe, [path, '-I', '-S', '-c', BOOT % plan_r], {'LC_ALL': 'C'})
            except BaseException as exc:
                try:
                    os.write(2, ('vserver: cannot start the entry helper: %s\n' % exc).encode(errors='replace'))
                finally:
                    os._exit(EXIT_SETUP)
        os.close(plan_r)
        plan_r = None
        header = ('%s\n%d' % (HERE, parent)).encode()
        os.write(plan_w, b'%08d' % len(header) + header)  # one write, under PIPE_BUF: read whole by the stage
        return Stage(pid, plan_w)
    except BaseException:
        if plan_w is not None:
            os.close(plan_w)
        raise
    finally:
        os.close(exe)
        if plan_r is not None:
            os.close(plan_r)


# --- the second stage -------------------------------------------------------------------------------------

def _fail(stage, exc):
    try:
        os.write(2, ('vserver: cannot enter the guest (%s): %s\n' % (stage, exc)).encode(errors='replace'))
    finally:
        os._exit(EXIT_SETUP)


def drop_to_guest(plan, last_cap):
    """rlimits, uids, gids, groups, bounding set, syscall filter, capabilities, no_new_privs: exactly the
    guest's; then not dumpable. ``last_cap``: read from the host's /proc before joining the guest's mount
    namespace (not the guest's). The filter is loaded after every setns (it denies setns) and while
    CAP_SYS_ADMIN is still effective (loading one without no_new_privs needs it)."""
    for res, soft, hard in plan['rlimits']:
        resource.setrlimit(res, (soft, hard))
    os.setgroups(plan['groups'])
    os.setresgid(*plan['gids'])
    os.setresuid(*plan['uids'])  # init's: root, as this process (its capabilities are set below)
    keep = plan['bcaps']
    for bit in range(last_cap + 1):
        if not keep & (1 << bit):
            K.prctl(K.PR_CAPBSET_DROP, bit)
    K.prctl(K.PR_CAP_AMBIENT, K.PR_CAP_AMBIENT_CLEAR_ALL)
    if plan['seccomp'] is not None:
        K.seccomp_load(plan['seccomp'])
    K.capset(keep, keep, 0)   # effective = permitted = the bounding set: what root's exec in the guest gets
    if plan['nnp']:
        K.prctl(K.PR_SET_NO_NEW_PRIVS, 1)
    K.prctl(K.PR_SET_DUMPABLE, 0)


def _receive_fds(plan_fd):
    """The fds the host side sent first (SCM_RIGHTS on one byte, close-on-exec here); [] with no byte at all (the
    host side gave up)."""
    sock = _socket.socket(fileno=plan_fd)
    try:
        data, ancillary, dummy, dummy = sock.recvmsg(1, _socket.CMSG_SPACE(MAX_FDS * 4), _socket.MSG_CMSG_CLOEXEC)
    finally:
        sock.detach()
    fds = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack('%di' % (len(payload) // 4), payload[:len(payload) // 4 * 4])
    return data, fds


def _take_fds(plan, fds):
    """The fds named in the plan (the host side's numbers, in the order they were sent) replaced by ours."""
    received = iter(fds)
    plan['ns'] = [(kind, next(received)) for kind, dummy in plan['ns']]
    if plan['pty'] is not None:
        peer = next(received)
        for target in plan['ttys']:
            os.dup2(peer, target)
        os.close(peer)


def _child(plan):
    """In the guest's PID namespace: a new session, then the guest's program. Never returns."""
    code, msg = EXIT_SETUP, '%s: did not start' % plan['argv'][0]  # _execvpe returns only by raising
    try:
        os.setsid()
        if plan['ttys']:
            K.set_controlling_tty(plan['ttys'][0])
        _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
        _execvpe(plan['argv'], plan['env'])
    except FileNotFoundError:
        code, msg = EXIT_NOT_FOUND, '%s: command not found in the guest' % plan['argv'][0]
    except BaseException as exc:  # reported on the command's stderr
        code, msg = EXIT_SETUP, '%s: %s' % (plan['argv'][0], exc)
    try:
        os.write(2, ('vserver: %s\n' % msg).encode(errors='replace'))
    finally:
        os._exit(code)


def _execvpe(argv, env):
    """os.execvpe without its lazy import of `warnings`: after joining the guest's mount namespace an import
    would load the module from the guest's tree."""
    name = argv[0]
    if '/' in name:
        os.execve(name, argv, env)
    denied = None
    for directory in env.get('PATH', '').split(':'):
        try:
            os.execve((directory or '.') + '/' + name, argv, env)
        except PermissionError as exc:
            denied = exc
        except (FileNotFoundError, NotADirectoryError):
            pass
    raise denied or FileNotFoundError(name)


def main(plan_fd, parent):  # pylint: disable=unused-argument
    stage = 'plan'
    try:
        # from the host, before the mount namespace changes; done while the host side makes the plan
        K.libc()
        last_cap = K.cap_last_cap()
        first, fds = _receive_fds(plan_fd)
        if not first:  # the host side gave up (the guest is not running, ...): it says why
            os._exit(0)
        plan = marshal.loads(P.read_all(plan_fd))
        os.close(plan_fd)
        _take_fds(plan, fds)
        for kind, fd in plan['ns']:
            stage = 'namespace %s' % kind
            K.setns(fd, 0)
            os.close(fd)
        os.chdir('/')
        os.closerange(3, 1 << 20)  # nothing but 0-2 reaches the guest's PID namespace
        stage = 'credentials'
        drop_to_guest(plan, last_cap)
        for sig in range(1, _signal.NSIG):
            if sig not in (_signal.SIGKILL, _signal.SIGSTOP):
                try:
                    _signal.signal(sig, _signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        _signal.pthread_sigmask(_signal.SIG_BLOCK, FORWARDED)
        stage = 'fork'
        pid = os.fork()
    except BaseException as exc:
        _fail(stage, exc)
    if pid == 0:
        _child(plan)
    relay(pid)


def forward_signals(pid: int, signals: tuple = FORWARDED) -> None:
    """Pass each of ``signals`` received here on to process ``pid`` (the host side to the second stage, the
    second stage to the guest's program)."""
    def forward(signum, dummy):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for sig in signals:
        _signal.signal(sig, forward)


def relay(pid):
    """Forward the signals the host side sends us to the child; exit with its status (128+N for signal N)."""
    forward_signals(pid)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            dummy, status = os.waitpid(pid, 0)
        except ChildProcessError:
            os._exit(EXIT_SETUP)
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))
