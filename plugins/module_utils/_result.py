# -*- coding: utf-8 -*-
# Copyright: vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every manager returns: one shape for the context, capabilities, limits, address, unify and guests managers.

Floor 1 (see docs/architecture.md): no import from this package. Managers fill a Result; front ends (modules through
_ansible.run, the CLI, the supervisor, the guests manager) read it and turn it into their own output with to_dict()."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional


@dataclasses.dataclass
class Result:
    """The outcome of one ``ensure(paths, name, params, check_mode)``.

    changed: the host changed (or would, in check mode). before/after: the managed settings (the module's diff).
    actions: what was done (or would be), in order, as short sentences for humans. restart_required: a change waits
    for the guest's next start. warnings: shown once by the front end. extra: the module's own return values
    (``guest``, ``stats``...), merged at the top level of to_dict()."""

    changed: bool = False
    before: Optional[Dict[str, Any]] = None
    after: Optional[Dict[str, Any]] = None
    actions: List[str] = dataclasses.field(default_factory=list)
    restart_required: bool = False
    warnings: List[str] = dataclasses.field(default_factory=list)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def merge(self, other: 'Result', prefix: str = '') -> None:
        """Fold a sub-manager's result into this one (the guests manager composes the others)."""
        self.changed = self.changed or other.changed
        self.restart_required = self.restart_required or other.restart_required
        self.actions.extend(prefix + action for action in other.actions)
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)

    def to_dict(self) -> Dict[str, Any]:
        out = dict(self.extra)
        out.update(changed=self.changed, actions=list(self.actions), restart_required=self.restart_required)
        if self.before is not None or self.after is not None:
            out['diff'] = {'before': self.before or {}, 'after': self.after or {}}
        if self.warnings:
            out['warnings'] = list(self.warnings)
        return out
