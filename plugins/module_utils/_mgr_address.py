# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the manager behind the ``address`` module (floor 6).

``ensure(paths, name, params, check_mode)`` validates the options (``_netns``), computes the new ``network``
section under the host lock, checks it against the host and the other guests' configs (read here: the concern
never reads a config), plans the live change of a running guest against the kernel (``_netns_plan``, with the
guest's init pid and netns handle from the runtime), runs it, then saves the config; a config that cannot be saved
undoes the live change. ``describe`` gives the network facts of one guest for listings.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ansible_collections.vserver.core.plugins.module_utils import _config, _netns, _runtime
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths, VServerError
from ansible_collections.vserver.core.plugins.module_utils._netns_plan import (
    DEFAULT_INTERFACE, execute, plan_live, settle, undo_live, undo_outcome)
from ansible_collections.vserver.core.plugins.module_utils._netlink import NetState
from ansible_collections.vserver.core.plugins.module_utils._result import Result


def ensure(paths: Paths, name: str, params: Dict[str, Any], check_mode: bool = False,
           replace: bool = False) -> Result:
    """Bring a guest's network section (and a running guest's interface) to the requested state.

    ``replace``: the addresses given are the guest's whole set (``exclusive``, ``state`` present unless given), as a
    guest entry of the ``guests`` module means them; other options keep their stored values either way."""
    params = dict(params, name=name)
    if replace:
        for key, value in (('state', 'present'), ('exclusive', True)):
            if params.get(key) is None:
                params[key] = value
    opts = _netns.validate(params)
    with HostLock(paths):
        doc = _config.load(paths, name)
        if doc is None:
            raise VServerError('guest %s has no config; create it with vserver.core.context first' % name, 'name')
        current = doc.get('network') or None
        host = NetState(routes=False)
        section = _netns.desired(current, opts)
        if section is not None:
            _netns.resolve_gateways(section, opts['gateway'] is not None, host)
            _netns.check_conflicts(name, section, host, _config.load_all(paths))
        result = Result(before=_netns.section_view(current), after=_netns.section_view(section))
        pid, handle = _live_runtime(paths, name, repair=not check_mode, actions=result.actions)
        plan = None
        if pid:
            guest = NetState(handle)
            host = settle(section, doc.get('xid') or 0, host, guest)
            plan = plan_live(section, doc.get('xid') or 0, pid, host, guest, current)
            result.actions += plan.actions
        config_changed = result.before != result.after
        if config_changed:
            result.actions.insert(0, 'update config' if section and current else
                                  ('remove network config' if not section else 'create network config'))
        result.changed = bool(result.actions)
        result.extra.update(running=bool(pid), network=dict(result.after),
                            forwarding_needed=_netns.forwarding(section, host))
        result.warnings += _forwarding_warnings(name, result)
        if not check_mode and result.actions:
            _apply(paths, doc, section, current, plan, handle, pid, config_changed)
        if pid:
            result.extra['live_addresses'] = _netns.live_addresses(
                handle, (section or current or {}).get('interface') or DEFAULT_INTERFACE)
        return result


def _forwarding_warnings(name, result):
    needed = sorted(k for k, v in result.extra['forwarding_needed'].items() if v)
    if not needed or not result.actions:
        return []
    return ['guest %s reaches only its own subnet and the host: its gateway is this host, which does not forward %s '
            '(left unchanged; the host role\'s host_ip_forward turns forwarding on)' % (name, ' and '.join(needed))]


def _apply(paths, doc, section, current, plan, handle, pid, config_changed):
    """The guest's namespace first, then the config; a config that cannot be saved undoes the live change
    (docs/network.md, "Live changes and the config"). A run killed between the two leaves the kernel ahead of the
    config: the next run plans against the kernel and only saves the config."""
    xid = doc.get('xid') or 0
    if plan is not None:
        try:
            execute(plan, handle)
        except BaseException:
            undo_live(plan, current, section, xid, pid, handle)
            raise
    if not config_changed:
        return
    new = dict(doc)
    if section:
        new['network'] = section
    else:
        new.pop('network', None)
    try:
        _config.save(paths, new)
    except BaseException as exc:
        failed = undo_live(plan, current, section, xid, pid, handle) if plan is not None else None
        if not isinstance(exc, Exception):
            raise
        raise VServerError('address: saving the config of guest %s failed (%s); %s'
                           % (doc['name'], exc, undo_outcome(plan, failed))) from exc


def _live_runtime(paths, name, repair=False, actions=None) -> Tuple[Optional[int], Optional[str]]:
    """``(init pid, netns handle)`` of a running guest, else ``(None, None)``. The handle is checked against
    init's network namespace; a lost one is bound again when ``repair`` (the caller holds the host lock; the
    action goes to ``actions``), else VServerError saying what repairs it."""
    rt = _runtime.Runtime(paths, name)
    pid, handle = rt.netns_handle(repair)
    if rt.repaired and actions is not None:
        actions.append('repair netns handle')
    return pid, handle


def describe(paths: Paths, doc: Dict[str, Any]) -> Dict[str, Any]:
    """Network facts of one guest for context_info: config plus what the kernel shows when running."""
    section = doc.get('network') or {}
    out = dict(_netns.section_view(section))
    out.setdefault('addresses', [])
    try:
        pid, handle = _live_runtime(paths, doc['name'])
    except VServerError as exc:  # a lost netns handle: say so, a listing repairs nothing
        out['live_addresses'] = None
        out['netns_error'] = str(exc)
        return out
    if pid:
        try:
            out['live_addresses'] = _netns.live_addresses(handle, section.get('interface') or DEFAULT_INTERFACE)
        except OSError:
            out['live_addresses'] = None
    return out


def ensure_params(paths: Paths, params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """The old manager signature (name inside ``params``, a dict back), for callers not yet on ``ensure``."""
    return ensure(paths, params.get('name'), params, check_mode).to_dict()
