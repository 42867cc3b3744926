"""Shared helpers for integration tests: run the vserver command against a test's private host roots."""
import os
import subprocess
import sys
import time

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VSERVER = os.path.join(TOP, 'bin', 'vserver')
FILES = os.path.join(TOP, 'tests', 'integration', 'files')


def build_static(source, dest, *cflags):
    """Compile a test program (a path, or a name under tests/integration/files) as a static binary at ``dest``:
    it runs inside any guest tree. gcc comes with `make test` (APT_PACKAGES)."""
    subprocess.run(['gcc', '-static', '-O1'] + list(cflags) + ['-o', str(dest), os.path.join(FILES, str(source))],
                   check=True, capture_output=True, timeout=120)
    return str(dest)


def env_for(paths):
    env = dict(os.environ)
    env.update({'VSERVER_CONFIG_DIR': paths.config_dir, 'VSERVER_RUN_DIR': paths.run_dir,
                'VSERVER_TREE_DIR': paths.tree_dir, 'VSERVER_LOG_DIR': paths.log_dir,
                'VSERVER_CGROUP_PARENT': paths.cgroup_parent})
    return env


def vserver(paths, *args, timeout=60):
    """Run `vserver ARGS...`; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, VSERVER] + list(args), env=env_for(paths), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def guest_sh(paths, name, script, timeout=60):
    """Run a shell script as root inside a running guest; returns CompletedProcess."""
    return vserver(paths, name, 'exec', '/bin/sh', '-c', script, timeout=timeout)


def _userns_allowed():
    """Unprivileged user namespaces (what a guest's root without sys_admin needs for one) are not switched off."""
    try:
        with open('/proc/sys/kernel/unprivileged_userns_clone') as handle:   # Debian's switch, where it exists
            return handle.read().strip() != '0'
    except FileNotFoundError:
        return True


needs_userns = pytest.mark.skipif(not _userns_allowed(), reason='unprivileged user namespaces are off on this host')


def wait_for(predicate, timeout=15, step=0.1):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` seconds pass (then its last
    value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()
