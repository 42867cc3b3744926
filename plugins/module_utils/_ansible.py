# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: what every module shares (host path options, the one error path)."""

from __future__ import annotations

import json
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule

# The oldest managed-node Python the runtime supports (os.pidfd_open, os.waitstatus_to_exitcode, ...). Checked when a
# module imports this file, before any other module_utils is loaded and before anything is done on the host.
MIN_PYTHON = (3, 9)


def _refuse_old_python():
    """What fail_json prints, without an AnsibleModule (whose option checks would run first): one clear message."""
    version = '%d.%d.%d' % sys.version_info[:3]
    msg = ('vserver.core needs Python %d.%d or newer on the managed node; %s is Python %s (set ansible_python_interpreter'
           ' to a newer one)' % (MIN_PYTHON + (sys.executable, version)))
    sys.stdout.write(json.dumps({'failed': True, 'msg': msg, 'python_version': version}) + '\n')
    sys.stdout.flush()
    raise SystemExit(1)


if sys.version_info < MIN_PYTHON:
    _refuse_old_python()

from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError  # noqa: E402
from ansible_collections.vserver.core.plugins.module_utils._result import Result  # noqa: E402

PATH_OPTIONS = dict(
    config_dir=dict(type='path'),
    run_dir=dict(type='path'),
    tree_dir=dict(type='path'),
    log_dir=dict(type='path'),
    cgroup_parent=dict(type='str'),
)


def argument_spec(**spec: dict) -> dict:
    out = dict(PATH_OPTIONS)
    out.update(spec)
    return out


def hide_nested(module: AnsibleModule, option: str, key: str) -> None:
    """Mask ``key`` of every dict in the list option ``option`` in the module's results and logs (a secret inside a
    free-form list of dicts, which argument_spec's no_log cannot reach). One-character values ('!', '*') are markers,
    not secrets: masking them would garble every string holding that character."""
    for item in module.params.get(option) or []:
        value = item.get(key) if isinstance(item, dict) else None
        if isinstance(value, str) and len(value) > 1:
            module.no_log_values.add(value)


def paths_from(module: AnsibleModule) -> Paths:
    params = module.params
    return Paths(**{key: params.get(key) for key in PATH_OPTIONS})


def run(module: AnsibleModule, manager: Callable[[], Result | dict[str, Any]]) -> None:
    """Call ``manager()`` (a Result or a dict); turn domain errors into one ``fail_json`` naming the field; a
    result with ``failed`` set (and its ``msg``) fails the task too, keeping every other key of the result."""
    try:
        result = manager()
        if isinstance(result, Result):
            result = result.to_dict()
    except VServerError as exc:
        extra = {'field': exc.field} if exc.field else {}
        module.fail_json(msg=str(exc), **extra)
    except OSError as exc:
        module.fail_json(msg='%s' % exc, exception=traceback.format_exc())
    for warning in result.pop('warnings', None) or []:  # exit_json(warnings=...) is deprecated
        module.warn(warning)
    if result.get('failed'):  # a manager that carried on past a failure (guests: one broken guest of many)
        module.fail_json(**result)
    module.exit_json(**result)
