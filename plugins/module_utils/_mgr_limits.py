# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the manager of the ``limits`` module (floor 6).

``ensure(paths, name, params, check_mode, replace, restart) -> Result``: set the options ``params`` gives on a
guest's limits section, live on a running guest. ``plan_change`` decides (no writes); ``_execute`` acts: the kernel
first, then the config, and a config that cannot be saved undoes the live change (see docs/limits.md, "Live
changes and the config").
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Optional

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _common, _config, _disk, _limits_apply, _limits_parse, _limits_plan, _runtime)
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError
from ansible_collections.vserver.core.plugins.module_utils._result import Result


@dataclasses.dataclass
class LimitsPlan:
    """What one ``ensure`` would change: the section before and after, the cgroup files and processes of a running
    guest that differ from ``after``, and the disk steps. Decisions only: nothing here has been written."""
    doc: Dict[str, Any]
    before: Dict[str, Any]
    after: Dict[str, Any]
    running: bool
    pending: List[_limits_plan.PendingWrite]
    rlimit_pids: List[int]
    disk: _disk.DiskPlan
    restart: bool

    @property
    def disk_waits(self) -> bool:
        """The disk change needs the guest stopped and may not restart it: it waits for the next start."""
        return self.disk.needs_stop and not self.restart

    @property
    def disk_now(self) -> bool:
        return bool(self.disk.actions) and not self.disk_waits

    @property
    def config_changed(self) -> bool:
        return self.before != self.after

    @property
    def changed(self) -> bool:
        return self.config_changed or bool(self.pending) or bool(self.rlimit_pids) or self.disk_now

    def actions(self) -> List[str]:
        out = ['update config'] if self.config_changed else []
        if self.pending:
            out.append('write %s' % ', '.join(s.key for s, _raw in self.pending))
        if self.rlimit_pids:
            out.append('prlimit %d processes' % len(self.rlimit_pids))
        if self.disk_waits:
            out.extend('at the next start: %s' % a for a in self.disk.actions)
        else:
            out.extend(self.disk.actions)
        return out


def plan_change(doc: Dict[str, Any], params: Dict[str, Any], rt, host: _limits_parse.Host, layout,
                replace: bool = False, restart: bool = False) -> LimitsPlan:
    """Decide what setting ``params`` on the guest of ``doc`` changes. ``rt``: the guest's runtime (init_pid(),
    group). An option that is None keeps its stored value; with ``replace`` ``params`` is the whole section."""
    stored = doc.get('limits')
    after = _limits_parse.validate(params if replace else _limits_parse.merge(stored, params), host, layout)
    if after.get('disk'):
        after['disk'] = _disk.disk_resolve(doc['root'], after['disk'])
    _limits_plan.check_supported(after, layout)
    before = copy.deepcopy(stored or {})
    running = rt.init_pid() is not None
    pending, rlimit_pids = [], []
    dplan = _disk.disk_plan(doc['root'], after.get('disk'), running)
    if running:
        pending = _limits_plan.diff_files(rt.group, after, host)
        rlimit_pids = _limits_plan.rlimits_differ(after, rt.group.procs())
    return LimitsPlan(doc, before, after, running, pending, rlimit_pids, dplan, restart)


def ensure(paths: Paths, name: str, params: dict, check_mode: bool = False, replace: bool = False,
           restart: bool = False, *, host: Optional[_limits_parse.Host] = None, layout=None) -> Result:
    """Set the options ``params`` gives on guest ``name``'s limits section; live on a running guest.

    ``replace`` (the guests module, which holds a guest's whole desired state): an option left out is lifted.
    ``restart``: a disk change that needs the guest stopped may restart it. Result.extra: restarted, running,
    live (cgroup files written / would be written), rlimit_pids, limits (the section after), backend."""
    layout = layout or _cgroup.host_layout()
    host = host or _limits_parse.Host(layout=layout)
    with _common.HostLock(paths):
        doc = _config.load(paths, name)
        if doc is None:
            raise VServerError('guest %s has no config in %s; create it with vserver.core.context first'
                               % (name, paths.config_dir), 'name')
        rt = _runtime.Runtime(paths, name, layout)
        plan = plan_change(doc, params, rt, host, layout, replace, restart)
        live = [s.key for s, _raw in plan.pending]
        restarted = False
        if plan.changed and not check_mode:
            written, restarted = _execute(paths, plan, rt, host, layout)
            if plan.running:
                live = written
        return Result(changed=plan.changed, before=plan.before, after=plan.after, actions=plan.actions(),
                      restart_required=plan.disk_waits and not restarted,
                      extra={'restarted': restarted, 'running': plan.running, 'live': live,
                             'rlimit_pids': len(plan.rlimit_pids), 'limits': plan.after,
                             'backend': 'cgroup v%d' % layout.version})


def _execute(paths, plan, rt, host, layout):
    """Kernel first, then the config. A run killed between the two leaves the kernel ahead of the config: the next
    run compares with the kernel and only saves the config. Returns (cgroup files written, restarted)."""
    written, snapshot = [], {}
    if plan.running:
        written, snapshot = _apply_live(rt.group, plan.after, host)
    restarted = False
    if plan.disk_now:
        restarted = _apply_disk(paths, plan, rt, layout, (written, snapshot))
    new = dict(plan.doc, limits=plan.after)
    try:
        _config.save(paths, new)
    except BaseException as exc:
        _undo_live(paths, new, rt, (written, snapshot), (plan.disk.actions if plan.disk_now else (), restarted),
                   exc)
        raise
    if restarted:
        _runtime.start(paths, new, layout)
    return [setting.key for setting, _raw in written], restarted


def _apply_live(group, after, host):
    """Write the cgroup files, then prlimit the guest's processes; a failure undoes both and is raised."""
    written = _limits_apply.apply_undoable(group, after, host)
    snapshot = {}
    try:
        snapshot = _limits_apply.rlimits_snapshot(after, group.procs())
        _limits_apply.apply_rlimits_live(after, list(snapshot))
    except BaseException:
        _limits_apply.rlimits_restore(snapshot)
        _limits_apply.restore(group, written)
        raise
    return written, snapshot


def _apply_disk(paths, plan, rt, layout, live):
    """Run the disk steps, stopping the guest first when they need it; returns whether it was stopped (the
    caller starts it again). A failure gives the guest back as it was (started again, or its live change undone)."""
    written, snapshot = live
    restarted = False
    if plan.disk.needs_stop and plan.running:
        _runtime.stop(paths, plan.doc)
        restarted = True
    try:
        _disk.disk_execute(plan.doc['root'], plan.after.get('disk'), plan.disk)
    except BaseException:
        if restarted:  # bring the guest back as it was
            _runtime.start(paths, plan.doc, layout)
        else:
            _limits_apply.rlimits_restore(snapshot)
            _limits_apply.restore(rt.group, written)
        raise
    return restarted


def _undo_live(paths, doc, rt, live, disk, exc):
    """The config could not be saved: give the running guest its previous cgroup values and rlimits back, so the
    kernel and the config still agree. Raises VServerError saying what was undone and what could not be (an
    interrupt is re-raised as it is, after the undo)."""
    written, snapshot = live
    disk_actions, restarted = disk
    failed = ['rlimits of pid %d' % pid for pid in _limits_apply.rlimits_restore(snapshot)]
    if not restarted:
        failed = _limits_apply.restore(rt.group, written) + failed
    if not isinstance(exc, Exception):
        raise exc
    msg = 'limits: saving the config of guest %s failed (%s); ' % (doc['name'], exc)
    if failed:
        msg += ('the live change could not be undone for %s: the guest runs with values its config does not '
                'record until this task runs again (it compares with the kernel) or the guest restarts'
                % ', '.join(failed))
    elif written or snapshot:
        msg += 'the live change was undone: the guest keeps its previous limits'
    else:
        msg += 'nothing was changed on the guest'
    if disk_actions:
        msg += '; the disk change was made and stays (%s): run the task again once the config can be written' \
            % '; '.join(disk_actions)
        if restarted:
            msg += _start_again(paths, doc, rt.layout)
    raise VServerError(msg) from exc


def _start_again(paths, doc, layout):
    try:
        _runtime.start(paths, doc, layout)
        return ' (the guest was started again)'
    except Exception as start_exc:  # report both failures
        return ' (starting the guest again failed too: %s)' % start_exc


def ensure_dict(paths: Paths, name: str, params: dict, check_mode: bool = False, **kwargs) -> dict:
    """``ensure`` with the module's result dict back (the tests, and callers that print it)."""
    return ensure(paths, name, params, check_mode, **kwargs).to_dict()
