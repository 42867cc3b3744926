# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the two processes a guest start forks (``_runtime.start``).

``intermediate`` is the first child: it joins the guest's cgroup, unshares the namespaces, sets the virtual uptime,
host and domain name, brings ``lo`` up, runs the concerns' netns steps and forks the guest's init, then exits.
``_guest_init`` is that init (PID 1 of the new PID namespace): its root (``_setup_root``), the concerns' child
steps, the privilege drop (``drop_privileges``), then the guest's init program. Both report a failure to the
starter on ``err_w`` and never return.
"""

from __future__ import annotations

import os
import signal
import stat

from ansible_collections.vserver.core.plugins.module_utils import _caps, _kernel as K, _masks, _procfs as P, _runtime_boot

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from typing import Any, Callable, NoReturn

    from ansible_collections.vserver.core.plugins.module_utils._cgroup import CgroupV1, CgroupV2

GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


def _mknod(path, major, minor, mode=0o666):
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chmod(path, mode)


def _setup_root(root):
    """In the guest's new mount namespace: make ``root`` the root, detach the host's, mount the rest."""
    K.mount(None, '/', None, K.MS_REC | K.MS_PRIVATE)
    K.mount(root, root, None, K.MS_BIND | K.MS_REC)
    # nodev: a device node inside the tree (from a tarball or a guest's planting) opens nothing.
    K.mount(None, root, None, K.MS_REMOUNT | K.MS_BIND | K.MS_NODEV)
    os.chdir(root)
    K.pivot_root('.', '.')
    K.umount('.', K.MNT_DETACH)
    os.chdir('/')
    # From here every path resolves inside the guest: a symlink the guest planted cannot lead out.
    for directory in ('proc', 'sys', 'dev'):
        if not os.path.isdir('/' + directory):
            if os.path.lexists('/' + directory):
                os.unlink('/' + directory)
            os.mkdir('/' + directory, 0o755)
    nosuid = K.MS_NOSUID | K.MS_NODEV | K.MS_NOEXEC
    K.mount('proc', '/proc', 'proc', nosuid)
    K.mount('sysfs', '/sys', 'sysfs', K.MS_RDONLY | nosuid)
    K.mount('tmpfs', '/dev', 'tmpfs', K.MS_NOSUID | K.MS_NOEXEC, 'mode=755,size=1024k')
    for node, major, minor in (('null', 1, 3), ('zero', 1, 5), ('full', 1, 7), ('random', 1, 8),
                               ('urandom', 1, 9), ('tty', 5, 0)):
        _mknod('/dev/' + node, major, minor)
    # /dev/console is a null device: the host's console is never reachable (init's output goes to the log).
    _mknod('/dev/console', 1, 3, 0o620)
    os.mkdir('/dev/pts', 0o755)
    K.mount('devpts', '/dev/pts', 'devpts', K.MS_NOSUID | K.MS_NOEXEC, 'newinstance,ptmxmode=0666,mode=620,gid=5')
    os.symlink('pts/ptmx', '/dev/ptmx')
    os.mkdir('/dev/shm', 0o1777)
    K.mount('tmpfs', '/dev/shm', 'tmpfs', nosuid, 'mode=1777,size=65536k')
    os.chmod('/dev/shm', 0o1777)
    for link, target in (('fd', '/proc/self/fd'), ('stdin', '/proc/self/fd/0'), ('stdout', '/proc/self/fd/1'),
                         ('stderr', '/proc/self/fd/2')):
        os.symlink(target, '/dev/' + link)
    # Host-wide /proc and /sys files masked or read-only (docs/security.md).
    _masks.apply()


def _current_caps():
    status = P.parse_status(open('/proc/self/status').read())
    return int(status['CapEff'], 16), int(status['CapPrm'], 16)


def drop_privileges(doc: dict) -> None:
    """Bounding set to the guest's bcaps, ambient and inheritable cleared, optional no_new_privs, then the guest's
    syscall filter (docs/security.md): the last step before exec, while CAP_SYS_ADMIN is still effective (loading a
    filter without no_new_privs needs it), after every mount the runtime makes."""
    section = doc.get('capabilities') or {}
    keep = _caps.mask(_caps.resolve(section))
    last = K.cap_last_cap()
    for bit in range(last + 1):
        if not keep & (1 << bit):
            K.prctl(K.PR_CAPBSET_DROP, bit)
    K.prctl(K.PR_CAP_AMBIENT, K.PR_CAP_AMBIENT_CLEAR_ALL)
    eff, prm = _current_caps()
    K.capset(eff, prm, 0)
    if section.get('no_new_privs'):
        K.prctl(K.PR_SET_NO_NEW_PRIVS, 1)
    program = _caps.seccomp_program(doc)
    if program is not None:
        K.seccomp_load(program)


def _reset_signals():
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _guest_init(doc, root, log_fd, err_w, child_steps):
    """Runs as PID 1 of the new PID namespace; never returns."""
    stage = 'setup'
    try:
        devnull = os.open('/dev/null', os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        stage = 'mounts'
        _setup_root(root)
        kind = _runtime_boot.guest_init_kind(doc['init'][0])
        if kind:
            stage = 'boot mounts'
            _runtime_boot.setup(kind)
        for step in child_steps:
            stage = 'hook %s' % getattr(step, '__name__', step)
            step(doc)
        stage = 'capabilities'
        drop_privileges(doc)
        stage = 'exec'
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 65536)
        _reset_signals()
        argv = doc['init']
        env = {'PATH': GUEST_PATH, 'container': 'vserver', 'HOME': '/', 'TERM': 'linux'}
        if kind == 'systemd':
            env['container_uuid'] = _runtime_boot.container_uuid(doc)
            env['SYSTEMD_GETTY_AUTO'] = '0'   # no console to log in on (/dev/console is a null device)
        os.execve(argv[0], argv, env)
    except BaseException as exc:  # report to the starter, then die
        try:
            os.write(err_w, ('%s: %s' % (stage, exc)).encode()[:4000])
        finally:
            os._exit(127)


def intermediate(doc: dict, group: CgroupV1 | CgroupV2, root: str, log_fd: int, pid_w: int, err_w: int,
                 netns_steps: list[Callable[[dict], Any]], child_steps: list[Callable[[dict], Any]]) -> NoReturn:
    """First child: join cgroup, unshare, configure namespaces (then ``netns_steps``), fork init (which runs
    ``child_steps``), report its pid, exit."""
    try:
        os.setsid()
        group.join(os.getpid())
        import socket  # here, not at the top: `vserver exec` and `stop` load this file and never need it
        K.unshare(K.CLONE_NEWNS | K.CLONE_NEWUTS | K.CLONE_NEWIPC | K.CLONE_NEWNET | K.CLONE_NEWCGROUP
                  | K.CLONE_NEWPID | K.CLONE_NEWTIME)
        # Virtual uptime: the guest's CLOCK_BOOTTIME (and /proc/uptime) starts at zero now, to the nanosecond (whole
        # seconds would start it anywhere in [0, 1) s); the kernel takes a negative offset as seconds + nanoseconds in
        # [0, 1e9), which divmod's floor gives
        secs, nanos = divmod(-int(P.boottime_now() * 1e9), 1000000000)
        with open('/proc/self/timens_offsets', 'w') as handle:
            handle.write('boottime %d %d\n' % (secs, nanos))
        socket.sethostname(doc.get('hostname') or doc['name'])
        K.setdomainname(doc.get('domainname') or '(none)')
        K.link_up(b'lo')
        for step in netns_steps:
            step(doc)
        pid = os.fork()
        if pid == 0:
            os.close(pid_w)
            _guest_init(doc, root, log_fd, err_w, child_steps)
        os.write(pid_w, b'%d' % pid)
        os._exit(0)
    except BaseException as exc:
        try:
            os.write(err_w, ('namespaces: %s' % exc).encode()[:4000])
        finally:
            os._exit(126)
