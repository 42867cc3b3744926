# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: freezing the running guests around a lifted protection (floor 2, a mechanism).

A shared (unified) inode is immutable; when the host must lift the flag (to link, rename or unlink one of its
names), every running guest that reaches it is frozen first and thawed only after the flag is back. The cgroups
to freeze are passed in (``Freezer(groups)``): which guests run is the runtime's knowledge, read by the manager
(``_mgr_unify.freezer(paths)``).

Imports only floor 1 (_kernel).
"""

from __future__ import annotations

import errno
import os
import threading
import time

from ansible_collections.vserver.core.plugins.module_utils._kernel import FS_APPEND_FL, FS_IMMUTABLE_FL, O_READ, \
    get_flags, set_flags

FREEZE_BATCH = 64  # files renamed (de-unify) or unlinked (purge) per freeze of the running guests


class Freezer:
    """Freezes the running guests that could write through an inode while the host lifts its protection.

    Made once per run under the host lock (no guest starts meanwhile) from the guests whose cgroup has a process.
    ``frozen(names)`` freezes those of ``names`` that run (all of them with None), waits until the kernel
    reports every task frozen (none is then inside a system call, e.g. between open()'s permission check and
    its write access), and thaws on exit only what it froze. The time each freeze lasted is kept."""

    def __init__(self, groups=None):
        """``groups``: name -> cgroup (a _cgroup group) of each running guest; None or empty: none runs."""
        self.groups = dict(groups or {})
        self.lock = threading.Lock()  # one freeze at a time (the act phase runs classes in threads)
        self.stuck = set()  # guests that did not freeze in time: not waited for again in this run
        self.frozen_count = 0
        self.frozen_seconds = 0.0
        self.frozen_max = 0.0

    def running(self, names=None) -> list:
        return sorted(self.groups if names is None else (n for n in names if n in self.groups))

    @staticmethod
    def _files(group):
        if hasattr(group, 'dir_for'):
            state = os.path.join(group.dir_for('freezer'), 'freezer.state')
            return state, ('FROZEN', 'THAWED'), state, 'FROZEN'
        return os.path.join(group.path, 'cgroup.freeze'), ('1', '0'), \
            os.path.join(group.path, 'cgroup.events'), 'frozen 1'

    @staticmethod
    def _read(path):
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            return ''

    def frozen(self, names=None, timeout: float = 5.0) -> '_Frozen':
        return _Frozen(self, self.running(names), timeout)


class FreezeError(OSError):
    """Running guests did not freeze in time: nothing was lifted."""


class _Frozen:
    def __init__(self, freezer, names, timeout):
        self.freezer, self.names, self.timeout = freezer, names, timeout
        self.mine = []
        self.started = None

    def __enter__(self):
        if not self.names:
            return self
        self.freezer.lock.acquire()
        self.started = time.monotonic()
        waits = []
        try:
            stuck = self.freezer.stuck.intersection(self.names)
            if stuck:
                raise FreezeError(errno.EBUSY, 'guest(s) %s did not freeze earlier in this run'
                                  % ', '.join(sorted(stuck)))
            for name in self.names:
                ctl, (on, dummy), events, done = Freezer._files(self.freezer.groups[name])
                if Freezer._read(ctl).strip() == on:
                    waits.append((events, done))  # frozen by the admin: it stays frozen
                    continue
                with open(ctl, 'w') as handle:
                    handle.write(on)
                self.mine.append(name)
                waits.append((events, done))
            pause = 0.0002
            while True:
                if all(done in Freezer._read(events).split('\n') for events, done in waits):
                    return self
                if time.monotonic() - self.started > self.timeout:
                    late = [name for name, (events, done) in zip(self.names, waits)
                            if done not in Freezer._read(events).split('\n')]
                    self.freezer.stuck.update(late)
                    raise FreezeError(errno.EBUSY, 'guest(s) %s did not freeze in %ss'
                                      % (', '.join(late), self.timeout))
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
        except BaseException:
            self._thaw()
            self.freezer.lock.release()
            raise

    def _thaw(self):
        for name in self.mine:
            ctl, (dummy, off), dummy2, dummy3 = Freezer._files(self.freezer.groups[name])
            try:
                with open(ctl, 'w') as handle:
                    handle.write(off)
            except OSError:
                pass
        self.mine = []

    def __exit__(self, *exc):
        if not self.names:
            return False
        self._thaw()
        self.freezer.lock.release()
        took = time.monotonic() - self.started
        self.freezer.frozen_count += 1
        self.freezer.frozen_seconds += took
        self.freezer.frozen_max = max(self.freezer.frozen_max, took)
        return False


def unlink_protected(dfd: int, name: str, freezer: Freezer, names=None) -> None:
    """Remove one name of an immutable inode whose other names stay: the flag is lifted only while the
    running guests ``names`` (all with None) are frozen, and put back on the same inode before they thaw."""
    fd = os.open(name, O_READ, dir_fd=dfd)
    try:
        flags = get_flags(fd)
        with freezer.frozen(names):
            set_flags(fd, flags & ~(FS_IMMUTABLE_FL | FS_APPEND_FL))
            try:
                os.unlink(name, dir_fd=dfd)
            finally:
                if os.fstat(fd).st_nlink:
                    set_flags(fd, flags)
    finally:
        os.close(fd)
