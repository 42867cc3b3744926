"""A throw-away host with systemd as PID 1, for the tests of what the roles do where systemd runs the host.

This machine's PID 1 is not systemd, so the systemd-specific parts (vserver@.service, the delegated cgroup
unit, the unify timer, boot-time start) are tested in a container that boots systemd: `systemd-nspawn --boot`
of a Debian tree (tests/systemd/build, cached outside the repository), on this machine's kernel, with

- a pure cgroup v2 view (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1), like a modern systemd host; this machine's v2
  hierarchy carries no controllers (they are all bound to v1), so limits are not exercised there;
- root's full capability set and bpf() allowed (nspawn's defaults trim both), as root has on a real host;
- its own network namespace (--private-network): the host's interfaces are never visible or touched;
- the root tree as an overlay on the cached tree (so it survives a reboot of the container, and the cached tree
  stays pristine), /var/lib/vservers bound from a plain directory (unification sets inode flags there);
- this repository and its .venv bound read-only at their own path (same Debian 12 Python): ansible-playbook
  runs inside, connection local, as a transient unit (`systemd-run --wait --pipe`, like an admin's session);
- a cgroup of its own (vstest-sd-*, in the v2 hierarchy and in the name=systemd one nspawn uses) so that
  everything it creates is found and removed afterwards.
"""
import os
import secrets
import shutil
import signal
import subprocess
import time

from helpers import TOP

CGROUP2 = '/sys/fs/cgroup/unified'
PREFIX = 'vstest-sd-'


def build_tree():
    """The cached Debian tree with systemd (built on first use, ~1 minute)."""
    proc = subprocess.run([os.path.join(TOP, 'tests', 'systemd', 'build')], capture_output=True, text=True,
                          timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError('tests/systemd/build failed:\n%s' % proc.stderr[-3000:])
    return proc.stdout.strip().splitlines()[-1]


def _rmdir_tree(path):
    """Remove a cgroup directory and its children (deepest first); cgroup dirs are removed with rmdir."""
    if not os.path.isdir(path):
        return
    for dirpath, dirnames, _files in sorted(os.walk(path), key=lambda entry: -entry[0].count('/')):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


class SystemdContainer:
    def __init__(self, tree, workdir):
        self.tree = tree
        self.workdir = str(workdir)
        self.machine = PREFIX + secrets.token_hex(3)
        self.root = os.path.join(self.workdir, 'root')
        self.upper = os.path.join(self.workdir, 'upper')
        self.ovl_work = os.path.join(self.workdir, 'ovl-work')
        self.trees = os.path.join(self.workdir, 'trees')
        self.named = os.path.join(self.workdir, 'cg-named')
        self.cg2 = os.path.join(CGROUP2, self.machine)
        self.proc = None
        self.leader = None
        self.log_path = os.path.join(self.workdir, 'console.log')
        self.boots = 0

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def setup(self):
        for path in (self.root, self.upper, self.ovl_work, self.trees, self.named):
            os.makedirs(path, exist_ok=True)
        subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o',
                        'lowerdir=%s,upperdir=%s,workdir=%s' % (self.tree, self.upper, self.ovl_work), self.root],
                       check=True, timeout=30)
        os.makedirs(self.cg2, exist_ok=True)
        # the named hierarchy nspawn keeps its (legacy) bookkeeping in; mounting it creates it if needed
        subprocess.run(['mount', '-t', 'cgroup', '-o', 'none,name=systemd', 'cgroup', self.named], check=True,
                       timeout=30)
        os.makedirs(os.path.join(self.named, self.machine), exist_ok=True)

    def nspawn_argv(self):
        """systemd-nspawn's command line (a subclass changes the network or binds more)."""
        argv = ['systemd-nspawn', '--boot', '--quiet', '--register=no', '--keep-unit', '--private-network',
                '--console=passive', '--machine', self.machine,
                # root on a real host: every capability, and bpf() (the v2 device filter) which nspawn's
                # seccomp filter denies by default
                '--capability=all', '--system-call-filter=bpf', '-D', self.root,
                '--bind-ro=%s' % TOP, '--bind=%s:/var/lib/vservers' % self.trees]
        venv = os.path.realpath(os.path.join(TOP, '.venv'))
        if not venv.startswith(TOP + os.sep):   # a checkout whose .venv links to a shared one: bind that too
            argv.append('--bind-ro=%s' % venv)
        return argv

    def boot(self, timeout=90):
        self.boots += 1
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY='1')
        # the launcher joins our cgroups, then becomes systemd-nspawn (which puts the container below them)
        script = ('echo $$ > %s/cgroup.procs && echo $$ > %s/cgroup.procs && exec "$@"'
                  % (self.cg2, os.path.join(self.named, self.machine)))
        with open(self.log_path, 'a') as log:
            log.write('--- boot %d\n' % self.boots)
            log.flush()
            self.proc = subprocess.Popen(['sh', '-c', script, 'launch'] + self.nspawn_argv(), env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('systemd-nspawn exited with %s:\n%s' % (self.proc.returncode, self.console()))
            self.leader = self._leader()
            if self.leader:
                state = self.sh('systemctl is-system-running', check=False, via_unit=False, timeout=20).stdout.strip()
                if state in ('running', 'degraded'):
                    return state
            time.sleep(0.5)
        raise RuntimeError('%s did not finish booting within %ss:\n%s' % (self.machine, timeout, self.console()))

    def _leader(self):
        try:
            with open('/proc/%d/task/%d/children' % (self.proc.pid, self.proc.pid)) as handle:
                kids = handle.read().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def poweroff(self, timeout=60):
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader:
            subprocess.run(['nsenter', '-t', str(self.leader), '-a', 'systemctl', 'poweroff', '--no-block'],
                           capture_output=True, timeout=30, check=False)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.leader = None

    def kill(self):
        """Last resort: kill every process in the container's cgroup, then systemd-nspawn."""
        kill_file = os.path.join(self.cg2, 'cgroup.kill')
        if os.path.exists(kill_file):
            with open(kill_file, 'w') as handle:
                handle.write('1')
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def cleanup(self):
        self.poweroff()
        # mounts: the overlay root (and anything nspawn left below it), the named hierarchy
        with open('/proc/self/mountinfo') as handle:
            points = [line.split()[4] for line in handle]
        for point in sorted((p for p in points if p == self.root or p.startswith(self.root + '/')),
                            key=len, reverse=True):
            subprocess.run(['umount', '-l', point], check=False, timeout=30)
        _rmdir_tree(self.cg2)
        if os.path.ismount(self.named):
            _rmdir_tree(os.path.join(self.named, self.machine))
            subprocess.run(['umount', self.named], check=False, timeout=30)
        shutil.rmtree(os.path.join('/run/systemd/nspawn/propagate', self.machine), ignore_errors=True)
        # guest trees: unified files carry the immutable flag
        subprocess.run(['chattr', '-R', '-i', self.trees], capture_output=True, check=False, timeout=120)
        subprocess.run(['rm', '-rf', '--one-file-system', self.workdir], check=False, timeout=120)

    def console(self):
        try:
            with open(self.log_path) as handle:
                return handle.read()[-4000:]
        except OSError:
            return ''

    # --- running things inside ---------------------------------------------------------------------------------
    def sh(self, script, check=True, via_unit=True, timeout=120, env=None):
        """Run a shell script inside the container: by default as a transient unit of its systemd (so it
        lives in the container's cgroup tree like any admin session); via_unit=False only enters the
        namespaces (for probes while the container is still booting)."""
        argv = ['nsenter', '-t', str(self.leader), '-a', '--']
        if via_unit:
            argv += ['systemd-run', '--quiet', '--wait', '--pipe', '--collect', '--service-type=exec']
            for key, value in (env or {}).items():
                argv.append('--setenv=%s=%s' % (key, value))
        argv += ['/bin/sh', '-c', script]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError('in the container, %r exited %d:\n%s\n%s'
                                 % (script, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
        return proc

    def path(self, inside):
        """The host path of a file inside the container's root tree."""
        return os.path.join(self.root, inside.lstrip('/'))
