# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the limits concern's executor (floor 3): write what _limits_plan planned.

``apply(group, section)`` writes the cgroup files whose kernel value differs (the same code runs at guest start and
live); ``apply_undoable`` returns what ``restore`` needs to undo it. Rlimits: ``set_rlimits`` in the guest's init at
start, ``apply_rlimits_live`` with prlimit(2) on every process of a running guest, with a snapshot to undo.
"""

from __future__ import annotations

import errno
import os
import resource
from typing import Dict, List, Optional

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._limits_parse import MAX, Host
from ansible_collections.vserver.core.plugins.module_utils._limits_plan import (
    PendingWrite, Setting, _keyed, _v1_mem, _v2_parent_cpus, _weight_norm, diff_files, rlimit_pairs, rlimits_differ)

V1_MINUS_ONE = ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.soft_limit_in_bytes',
                'cpu.cfs_quota_us')   # v1 files where -1 means no limit


def _render(setting, current_raw):
    """Lines to write so the file ends up at setting.value (keyed files: one line per device)."""
    if setting.key == 'io.max':
        current = _keyed(current_raw)
        lines = ['%s %s' % (dev, ' '.join('%s=%s' % kv for kv in sorted(vals.items())))
                 for dev, vals in sorted(setting.value.items()) if current.get(dev) != vals]
        lines += ['%s rbps=max wbps=max riops=max wiops=max' % dev for dev in sorted(current)
                  if dev not in setting.value]
        return lines
    if setting.key.startswith('blkio.throttle.'):
        current = _keyed(current_raw)
        lines = ['%s %s' % (dev, val) for dev, val in sorted(setting.value.items()) if current.get(dev) != val]
        lines += ['%s 0' % dev for dev in sorted(current) if dev not in setting.value]
        return lines
    value = setting.value
    if setting.key == 'io.weight':
        return ['default %d' % value]
    if value == MAX and setting.key in V1_MINUS_ONE:
        return ['-1']
    return [str(value)]


def _write_line(group, setting, line):
    try:
        group.write(setting.key, line or '\n')   # an empty write() never reaches the kernel
    except OSError as exc:
        if not (setting.key == 'cpuset.cpus' and not line and exc.errno == errno.ENOSPC
                and group.layout.version == 2):
            raise
        group.write(setting.key, _v2_parent_cpus(group))  # see _limits_plan._v2_cpuset_inherited


def _write_setting(group, setting, raw):
    for line in _render(setting, raw):
        try:
            _write_line(group, setting, line)
        except OSError as exc:
            hint = ''
            if setting.key.startswith('memory') and exc.errno == errno.EBUSY:
                hint = ' (the guest uses more memory than that and the kernel could not reclaim it)'
            elif exc.errno == errno.EINVAL:
                hint = ' (the kernel refused the value)'
            raise VServerError('%s: writing %r to %s failed: %s%s'
                               % (setting.field, line, setting.key, exc.strerror, hint), setting.field)


def apply(group, section: Optional[dict], host: Optional[Host] = None) -> List[str]:
    """Bring the group's cgroup files to the section's values; returns the keys written.

    On failure the files already written get their previous values back, then the error is raised.
    """
    return [setting.key for setting, _raw in apply_undoable(group, section, host)]


def apply_undoable(group, section: Optional[dict], host: Optional[Host] = None) -> List[PendingWrite]:
    """Like ``apply``, but returns [(setting, previous raw value)] so ``restore`` can undo the writes later."""
    return write_pending(group, diff_files(group, section, host))


def write_pending(group, pending: List[PendingWrite]) -> List[PendingWrite]:
    """Write planned files in a safe order; on failure undo the ones written and raise. Returns those written."""
    done = []
    try:
        for setting, raw in _ordered(pending, group):
            _write_setting(group, setting, raw)
            done.append(PendingWrite(setting, raw))
    except BaseException:
        restore(group, done)
        raise
    return done


def restore(group, done: List[PendingWrite]) -> List[str]:
    """Write back the values ``apply_undoable`` replaced, last written first (that order keeps the kernel's
    invariants, see ``_ordered``). Returns the files that could not be restored."""
    failed = []
    for setting, raw in reversed(done):
        try:
            for line in _restore_lines(setting, raw):
                group.write(setting.key, line or '\n')
        except OSError:
            failed.append(setting.key)
    return failed


def _restore_lines(setting, raw):
    if setting.key == 'io.max' or setting.key.startswith('blkio.throttle.'):
        old = Setting(setting.key, _keyed(raw), setting.field, _keyed)
        # what was written: setting.value; to restore, render old against the new state
        return _render(old, _render_state(setting))
    if setting.key in ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.soft_limit_in_bytes'):
        return ['-1' if _v1_mem(raw) == MAX else raw.strip()]
    if setting.key == 'io.weight':
        return ['default %s' % _weight_norm(raw)]
    return [raw.strip()]


def _render_state(setting):
    if setting.key == 'io.max':
        return '\n'.join('%s %s' % (d, ' '.join('%s=%s' % kv for kv in sorted(v.items())))
                         for d, v in setting.value.items())
    return '\n'.join('%s %s' % kv for kv in setting.value.items())


def _ordered(pending, group):
    """Write order that keeps the kernel's invariants true after every single write:
    v1 memory.limit_in_bytes <= memory.memsw.limit_in_bytes, and a CFS burst <= its quota."""
    keys = [s.key for s, _raw in pending]
    first = set()
    if 'memory.memsw.limit_in_bytes' in keys and 'memory.limit_in_bytes' in keys:
        memsw = next(s for s, _raw in pending if s.key == 'memory.memsw.limit_in_bytes')
        current_memsw = _v1_mem(group.read('memory.memsw.limit_in_bytes') or '0')
        new = memsw.value
        grows = new == MAX or (current_memsw != MAX and new > current_memsw)
        first.add('memory.memsw.limit_in_bytes' if grows else 'memory.limit_in_bytes')
    for setting, raw in pending:
        if setting.key in ('cpu.max.burst', 'cpu.cfs_burst_us'):
            try:
                shrinks = setting.value < int(raw.strip())
            except (AttributeError, ValueError):
                shrinks = False
            if shrinks:
                first.add(setting.key)
    return sorted(pending, key=lambda item: 0 if item[0].key in first else 1)


# --- rlimits --------------------------------------------------------------------------------------------------

def _explain_rlimit(name, hard, exc):
    if exc.errno == errno.EPERM:
        return ('rlimits.%s: raising the hard limit to %s needs CAP_SYS_RESOURCE, which this host\'s root lacks; '
                'use at most the host\'s own hard limit'
                % (name, 'unlimited' if hard == resource.RLIM_INFINITY else hard))
    return 'rlimits.%s: %s' % (name, exc)


def set_rlimits(section: Optional[dict], pid: int = 0) -> None:
    """setrlimit/prlimit the section's rlimits on one process (0 = self)."""
    for res, name, soft, hard in rlimit_pairs(section):
        try:
            if pid:
                resource.prlimit(pid, res, (soft, hard))
            else:
                resource.setrlimit(res, (soft, hard))
        except OSError as exc:
            raise VServerError(_explain_rlimit(name, hard, exc), 'rlimits.' + name)
        except ValueError as exc:
            raise VServerError('rlimits.%s: %s' % (name, exc), 'rlimits.' + name)


def rlimits_snapshot(section: Optional[dict], pids: List[int]) -> Dict[int, list]:
    """{pid: [(resource, (soft, hard))]}: the current values of the rlimits the section names, for every
    process whose rlimits differ from it (what ``rlimits_restore`` puts back)."""
    out = {}
    for pid in rlimits_differ(section, pids):
        try:
            out[pid] = [(res, resource.prlimit(pid, res)) for res, _name, _soft, _hard in rlimit_pairs(section)]
        except (ProcessLookupError, PermissionError):
            continue
    return out


def rlimits_restore(snapshot: Dict[int, list]) -> List[int]:
    """Put back the rlimits of a snapshot; returns the pids that could not get them back (raising a hard limit
    again needs CAP_SYS_RESOURCE). Processes that exited meanwhile are skipped."""
    failed = []
    for pid, pairs in sorted(snapshot.items()):
        try:
            for res, limits in pairs:
                resource.prlimit(pid, res, limits)
        except ProcessLookupError:
            continue
        except (OSError, ValueError):
            failed.append(pid)
    return failed


def apply_rlimits_live(section: Optional[dict], pids: List[int]) -> List[int]:
    """prlimit every process of ``pids`` whose rlimits differ; returns those changed (exited ones are skipped)."""
    changed = []
    for pid in rlimits_differ(section, pids):
        try:
            set_rlimits(section, pid)
        except VServerError:
            if os.path.exists('/proc/%d' % pid):
                raise
            continue
        changed.append(pid)
    return changed
