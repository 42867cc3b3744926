# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: why a guest's init exited, as its parent (vserver-supervise) sees it.

In a PID namespace, reboot(2) by a process with CAP_SYS_BOOT does not touch the host: the kernel ends the
namespace's init, which its parent then sees killed by SIGHUP (RB_AUTOBOOT: restart) or SIGINT (RB_POWER_OFF,
RB_HALT_SYSTEM: halt). Only the parent, or the child subreaper an orphaned init was reparented to, gets that wait
status: vserver-supervise (one per host, or one --watch per vserver@ unit) is that process for the guests it
starts. docs/guest-view.md says what happens to a guest started outside it.
"""

from __future__ import annotations

import os
import signal

from ansible_collections.vserver.core.plugins.module_utils import _runtime
from ansible_collections.vserver.core.plugins.module_utils._common import Paths

REBOOT = 'reboot'
HALT = 'halt'


def reason(status: int | None) -> str | None:
    """'reboot', 'halt' or None (any other exit) for a wait status of a guest's init."""
    if status is None or not os.WIFSIGNALED(status):
        return None
    return {signal.SIGHUP: REBOOT, signal.SIGINT: HALT}.get(os.WTERMSIG(status))


def guest_of(paths: Paths, pid: int) -> str | None:
    """The guest whose recorded init was ``pid`` and is gone: call it right after reaping ``pid`` (until then
    the pid cannot be reused)."""
    try:
        names = sorted(n for n in os.listdir(paths.run_dir) if not n.startswith('.'))
    except FileNotFoundError:
        return None
    for name in names:
        rt = _runtime.Runtime(paths, name)
        if rt.record.get('init_pid') == pid and rt.init_pid() is None:
            return name
    return None


def reap_all() -> list[tuple[int, int]]:
    """Reap every exited child: ``[(pid, wait status)]``."""
    out = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, status))


def exits(paths: Paths) -> dict[str, str]:
    """Reap every exited child; ``{guest name: 'reboot' | 'halt'}`` for the guests' inits among them."""
    out = {}
    for pid, status in reap_all():
        why = reason(status)
        if why is None:
            continue
        name = guest_of(paths, pid)
        if name is not None:
            out[name] = why
    return out


def halted(paths: Paths, name: str) -> None:
    """A halted guest: its runtime traces go (it reads as stopped, not crashed); the caller holds the host lock."""
    if _runtime.Runtime(paths, name).init_pid() is None:
        _runtime.cleanup(paths, name)


def refresh_views(paths: Paths, names: list[str] | None = None) -> dict[str, str]:
    """After LXCFS (re)started: fresh LXCFS mounts into every running guest whose config keeps the view on (its
    old ones answer ENOTCONN; a guest started while LXCFS was down gets the view now). ``{name: error}``."""
    from ansible_collections.vserver.core.plugins.module_utils import _config, _lxcfs
    if names is None:
        try:
            names = sorted(n for n in os.listdir(paths.run_dir) if not n.startswith('.'))
        except FileNotFoundError:
            names = []
    failed = {}
    for name in names:
        try:
            doc = _config.load(paths, name)
        except Exception as exc:  # a broken config: that guest is left as it is
            failed[name] = str(exc)
            continue
        if doc is None or not _lxcfs.enabled(doc):
            continue
        proc_fd = _runtime.Runtime(paths, name).open_init()
        if proc_fd is None:
            continue
        try:
            _lxcfs.reattach(proc_fd)
        except OSError as exc:
            failed[name] = str(exc)
        finally:
            os.close(proc_fd)
    return failed
