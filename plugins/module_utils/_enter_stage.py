# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the second stage of entering a guest (``vserver NAME exec|enter``).

It runs in a fresh interpreter that the host side (``_enter``) executed through a detached read-only bind mount
of its own binary, so the exe of this process, and of the child it forks into the guest's PID namespace, cannot be
reopened for writing (the runc CVE-2019-5736 pattern), and its memory holds nothing of the admin's process. It
imports nothing but the standard library and ``_kernel``, all before it joins the guest's mount namespace: after
that every path resolves inside the guest's tree, where no host code may be loaded from.

Order: read the plan (a marshal document on a pipe), join the guest's cgroup in every hierarchy, join its seven
namespaces (PID last but one: it only applies to children; mount last), apply its rlimits, groups, bounding set,
capabilities and no_new_privs, become non-dumpable, keep only fds 0-2 (the guest's own pty when a terminal is
involved), then fork. Only the child appears in the guest's PID namespace, already holding exactly the guest's
credentials; it starts a new session (the pty as its controlling terminal) and execs the guest's program at once.
This process stays outside the guest's PID namespace, relays signals to the child and exits with its status.
"""

import fcntl
import marshal
import os
import resource
import signal

try:
    from ansible_collections.vserver.core.plugins.module_utils import _kernel as K
except ImportError:  # the second stage runs with only the module_utils directory on sys.path
    import _kernel as K

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGCONT)
EXIT_SETUP = 126     # the guest could not be entered (the reason is written on stderr)
EXIT_NOT_FOUND = 127  # the command does not exist inside the guest


def _fail(stage, exc):
    try:
        os.write(2, ('vserver: cannot enter the guest (%s): %s\n' % (stage, exc)).encode(errors='replace'))
    finally:
        os._exit(EXIT_SETUP)


def drop_to_guest(plan):
    """rlimits, groups, bounding set, capabilities, no_new_privs: exactly the guest's."""
    for res, soft, hard in plan['rlimits']:
        resource.setrlimit(res, (soft, hard))
    os.setgroups(plan['groups'])
    keep = plan['bcaps']
    for bit in range(K.cap_last_cap() + 1):
        if not keep & (1 << bit):
            K.prctl(K.PR_CAPBSET_DROP, bit)
    K.prctl(K.PR_CAP_AMBIENT, K.PR_CAP_AMBIENT_CLEAR_ALL)
    K.capset(keep, keep, 0)   # effective = permitted = the bounding set: what root's exec in the guest gets
    if plan['nnp']:
        K.prctl(K.PR_SET_NO_NEW_PRIVS, 1)
    K.prctl(K.PR_SET_DUMPABLE, 0)


def _child(plan):
    """In the guest's PID namespace: a new session, then the guest's program. Never returns."""
    try:
        os.setsid()
        if plan['tty']:
            fcntl.ioctl(0, K.TIOCSCTTY, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        argv = plan['argv']
        os.execvpe(argv[0], argv, plan['env'])
    except FileNotFoundError:
        code, msg = EXIT_NOT_FOUND, '%s: command not found in the guest' % plan['argv'][0]
    except BaseException as exc:  # reported on the command's stderr
        code, msg = EXIT_SETUP, '%s: %s' % (plan['argv'][0], exc)
    try:
        os.write(2, ('vserver: %s\n' % msg).encode(errors='replace'))
    finally:
        os._exit(code)


def main(plan_fd):
    stage = 'plan'
    try:
        plan = marshal.loads(K.read_all(plan_fd))
        os.close(plan_fd)
        K.libc()  # loaded from the host's library before the mount namespace changes
        stage = 'cgroup'
        for fd in plan['cgroups']:
            os.write(fd, b'0')   # "0": the writing process itself
            os.close(fd)
        for kind, fd in plan['ns']:
            stage = 'namespace %s' % kind
            K.setns(fd, 0)
            os.close(fd)
        os.chdir('/')
        os.closerange(3, 1 << 20)  # nothing but 0-2 reaches the guest's PID namespace
        stage = 'credentials'
        drop_to_guest(plan)
        for sig in range(1, signal.NSIG):
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        stage = 'fork'
        pid = os.fork()
    except BaseException as exc:
        _fail(stage, exc)
    if pid == 0:
        _child(plan)
    relay(pid)


def relay(pid):
    """Forward the signals the host side sends us to the child; exit with its status (128+N for signal N)."""
    def forward(signum, dummy):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            dummy, status = os.waitpid(pid, 0)
        except ChildProcessError:
            os._exit(EXIT_SETUP)
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))
