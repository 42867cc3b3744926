# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the planner of a capabilities change (floor 3, a part of the capabilities concern).

``plan`` decides, without side effects, what a change of a guest's ``capabilities`` section does: the config, the
ccaps sysctls written live, and whether the running guest needs a restart. The manager (_mgr_capabilities) gathers
what it reads (``Running``) and executes the ``Plan``. Apart from _caps so that `vserver exec`, which imports _caps,
does not load dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from ansible_collections.vserver.core.plugins.module_utils import _caps, _seccomp


@dataclasses.dataclass
class Running:
    """What a running guest shows: its init's /proc status (parsed), the kernel's last capability, the fingerprint
    of the filter its init runs (``seccomp_running``) and the ccaps sysctls of its netns (None: no netns handle)."""

    status: Dict[str, str]
    last_cap: int
    seccomp: str
    sysctls: Optional[Dict[str, str]] = None


@dataclasses.dataclass
class Plan:
    """What a capabilities change does. ``live``: sysctls written in the running guest's netns now (``previous``:
    their values before, put back if the config cannot be saved); ``needs_restart``: the running guest differs in
    what only a start sets (bounding set, no_new_privs, syscall filter); ``restart``: and it is restarted now."""

    before: Dict[str, Any]
    after: Dict[str, Any]
    config_changed: bool = False
    live: Dict[str, str] = dataclasses.field(default_factory=dict)
    previous: Dict[str, str] = dataclasses.field(default_factory=dict)
    needs_restart: bool = False
    restart: bool = False
    observed: Optional[Dict[str, Any]] = None

    @property
    def actions(self) -> List[str]:
        out = ['update config'] if self.config_changed else []
        if self.live:
            out.append('set %s in the guest network namespace' % ', '.join(
                '%s=%s' % (k.replace('/', '.'), v.replace('\t', ' ')) for k, v in sorted(self.live.items())))
        if self.restart:
            out.append('restart the guest')
        return out

    @property
    def changed(self) -> bool:
        return self.config_changed or bool(self.live) or self.restart


def plan(doc: Dict[str, Any], after: Dict[str, Any], running: Optional[Running], restart: bool = False) -> Plan:
    """The change from guest ``doc``'s stored section to the canonical section ``after`` (``validate``), against
    what the guest runs (``running``, None when it is stopped). No side effect: building the syscall filter to
    compare fingerprints is a computation."""
    before = dict(doc.get('capabilities') or {})
    out = Plan(before=before, after=after, config_changed=before != after)
    if running is None:
        return out
    last = running.last_cap
    current = _caps.observed(running.status, last)
    wanted = [n for n in _caps.resolve(after) if _caps.CAP_BITS[n] <= last]
    if set(current['bcaps']) != set(wanted) or current['no_new_privs'] != bool(after.get('no_new_privs')):
        out.needs_restart = True
    current['seccomp'] = running.seccomp
    if running.seccomp != _seccomp.digest(_caps.seccomp_program(dict(doc, capabilities=after))):
        out.needs_restart = True
    out.observed = current
    if running.sysctls is not None:
        desired = {k: _caps.norm_sysctl(v) for k, v in _caps.ccap_sysctls(after).items()}
        out.live = {k: v for k, v in desired.items() if running.sysctls.get(k) != v}
        out.previous = {k: running.sysctls[k] for k in out.live if k in running.sysctls}
    out.restart = out.needs_restart and restart
    return out
