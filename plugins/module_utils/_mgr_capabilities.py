# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the manager of the capabilities module (floor 6, see docs/architecture.md).

Reads the stored section and what the running guest shows, asks the concern's planner (_caps_plan.plan) what changes, then acts:
ccaps sysctls live in the guest's network namespace, the config, and a restart only when asked."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from ansible_collections.vserver.core.plugins.module_utils import _caps, _caps_plan, _config, _kernel as K, _runtime
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths, VServerError
from ansible_collections.vserver.core.plugins.module_utils._result import Result


def in_netns(handle, func):
    """Run ``func()`` in a child that joined the network namespace bound at ``handle``; return its result."""
    try:
        return K.call_in_namespaces([handle], func)
    except OSError as exc:
        raise VServerError('guest network namespace %s: %s' % (handle, exc))


def _running(rt: _runtime.Runtime, after: Dict[str, Any]) -> Optional[_caps_plan.Running]:
    """What guest ``rt`` runs with, or None when it is stopped. Init's status is read once, through its /proc fd."""
    proc_fd = rt.open_init()
    if proc_fd is None:
        return None
    try:
        raw = P.read_at(proc_fd, 'status')
    finally:
        os.close(proc_fd)
    if not raw:
        return None
    status = P.parse_status(raw)
    sysctls = None
    if os.path.exists(rt.netns):
        keys = list(_caps.ccap_sysctls(after))
        sysctls = in_netns(rt.netns, lambda: _caps.read_sysctls(keys))
    return _caps_plan.Running(status=status, last_cap=K.cap_last_cap(), seccomp=_caps.seccomp_running(rt.dir, status),
                              sysctls=sysctls)


def _undo_sysctls(handle, previous, name, exc):
    """The config could not be saved: the guest's namespace gets its previous sysctls back. Raises VServerError
    saying so (an interrupt is re-raised as it is, after the undo)."""
    error = None
    if previous:
        try:
            in_netns(handle, lambda: _caps.write_sysctls(previous) or True)
        except Exception as undo_exc:  # reported below
            error = undo_exc
    if not isinstance(exc, Exception):
        raise exc
    msg = 'capabilities: saving the config of guest %s failed (%s); ' % (name, exc)
    if error is not None:
        msg += ('putting back %s failed (%s): the guest differs from its config until this task runs again or the '
                'guest restarts' % (', '.join(sorted(previous)), error))
    elif previous:
        msg += 'the live change was undone'
    else:
        msg += 'nothing was changed on the guest'
    raise VServerError(msg) from exc


def _execute(paths: Paths, doc: Dict[str, Any], rt: _runtime.Runtime, plan: _caps_plan.Plan) -> bool:
    """The guest first, then the config; a failed save puts the previous sysctls back (docs/security.md). Returns
    whether the guest was restarted."""
    live_now = bool(plan.live) and not plan.restart  # a restart sets them anyway
    if live_now:
        in_netns(rt.netns, lambda: _caps.write_sysctls(plan.live) or True)
    if plan.config_changed:
        try:
            _config.save(paths, dict(doc, capabilities=plan.after))
        except BaseException as exc:
            _undo_sysctls(rt.netns, plan.previous if live_now else {}, doc['name'], exc)
            raise
        doc['capabilities'] = plan.after
    if plan.restart:
        _runtime.stop(paths, doc)
        _runtime.start(paths, doc)
    return plan.restart


def ensure(paths: Paths, name: str, params: Dict[str, Any], check_mode: bool = False, replace: bool = False,
           restart: bool = False) -> Result:
    """Set the options ``params`` gives on guest ``name``'s capabilities section (None keeps the stored value,
    see ``_caps.merge``); with ``replace`` (the guests module: a guest's whole desired state) ``params`` is the
    whole section and an option left out is lifted.

    ccaps apply live (sysctls in the guest's netns); a bounding-set, no_new_privs or filter change on a running
    guest reports restart_required and restarts the guest only with ``restart``."""
    with HostLock(paths):
        doc = _config.load(paths, name)
        if doc is None:
            raise VServerError('guest %s has no config in %s; create it with vserver.core.context first'
                               % (name, paths.config_dir), 'name')
        after = _caps.validate(params if replace else _caps.merge(doc.get('capabilities'), params))
        rt = _runtime.Runtime(paths, name)
        running = _running(rt, after)
        plan = _caps_plan.plan(doc, after, running, restart)
        restarted = _execute(paths, doc, rt, plan) if not check_mode else False
        return Result(
            changed=plan.changed, before=plan.before, after=plan.after, actions=plan.actions,
            restart_required=plan.needs_restart and not restarted,
            extra={'restarted': restarted, 'bcaps': _caps.resolve(after), 'ccaps': after.get('ccaps', []),
                   'running': running is not None,
                   'seccomp': dict({'mode': 'default'}, **(after.get('seccomp') or {})), 'observed': plan.observed})
