# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the manager behind the ``util_vserver_import`` module (floor 6).

``ensure(paths, name, params, check_mode)`` reads util-vserver guests (``_legacy.read_guest``: every file mapped or
reported), checks all of them before anything is written (each section with its concern's validator, xids against
each other and against this host's guests), then writes each guest through the very managers the other modules use
(``_mgr_guests.ensure_one``: context, capabilities, limits, address, autostart mark, run state) and takes the
guests util-vserver unified into our unification (``_mgr_unify``: files already linked stay linked and immutable,
and enter our index). A guest that fails half-way is removed again with the guests created before it in this run
(their trees, util-vserver's, are kept). A second run changes nothing.
"""

from __future__ import annotations

import os
import shutil

from ansible_collections.vserver.core.plugins.module_utils import (
    _caps, _config, _legacy, _limits, _mgr_context, _mgr_guests, _mgr_unify, _netns)
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths, VServerError
from ansible_collections.vserver.core.plugins.module_utils._result import Result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

STATES = ('present', 'started', 'stopped')
MOVED_SUFFIX = '.util-vserver'
ARGUMENT_SPEC = {
    'guests': {'type': 'list', 'elements': 'str', 'default': ['all']},
    'legacy_dir': {'type': 'path', 'default': _legacy.LEGACY_DIR},
    'state': {'type': 'str', 'default': 'present', 'choices': list(STATES)},
    'bridge': {'type': 'str'},
    'unify': {'type': 'bool', 'default': True},
    'move_legacy': {'type': 'bool', 'default': False},
}
DEFAULTS = {key: spec.get('default') for key, spec in ARGUMENT_SPEC.items()}
# A concern's field, as the legacy files it came from (for a refused value's message).
FIELD_FILES = {
    'memory': 'rlimits/rss or cgroup/memory.*', 'memory_high': 'rlimits/rss.soft or cgroup/memory.*',
    'swap': 'cgroup/memory.memsw.limit_in_bytes', 'nproc': 'rlimits/nproc or cgroup/pids.max',
    'cpu': 'sched/fill-rate and sched/interval', 'cpu_weight': 'cgroup/cpu.shares', 'cpuset': 'cpuset/cpus',
    'rlimits': 'rlimits/*', 'bcaps_add': 'bcapabilities', 'bcaps_drop': 'bcapabilities',
    'ccaps': 'ccapabilities', 'hostname': 'uts/nodename', 'domainname': 'uts/domainname',
    'init': 'apps/init/cmd.start', 'root': 'vdir',
}
# Where util-vserver installs its own command (Debian's util-vserver package: /usr/sbin/vserver).
LEGACY_COMMANDS = ('/usr/sbin/vserver', '/sbin/vserver')


def validate(params: Optional[Dict[str, Any]], name: Optional[str] = None) -> Dict[str, Any]:
    p = dict(DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None})
    if name is not None:
        p['guests'] = [name]
    if isinstance(p['guests'], str):
        p['guests'] = [p['guests']]
    if not isinstance(p['guests'], list) or not p['guests'] or not all(isinstance(g, str) for g in p['guests']):
        raise VServerError('guests must be a list of util-vserver guest names, or all (got %r)' % (p['guests'],),
                           'guests')
    if p['state'] not in STATES:
        raise VServerError('state must be one of %s (got %r)' % (', '.join(STATES), p['state']), 'state')
    if not isinstance(p['legacy_dir'], str) or not os.path.isabs(p['legacy_dir']):
        raise VServerError('legacy_dir must be an absolute path (got %r)' % (p['legacy_dir'],), 'legacy_dir')
    p['legacy_dir'] = os.path.normpath(p['legacy_dir'])
    return p


def legacy_command() -> Optional[str]:
    """util-vserver's own ``vserver`` command, when installed (it is not ours: ours is a Python stub)."""
    for path in LEGACY_COMMANDS:
        try:
            with open(path, 'rb') as handle:
                head = handle.read(4096)
        except OSError:
            continue
        if b'vserver.core' not in head:
            return path
    return None


def _clash(paths: Paths, p: dict, check_mode: bool) -> tuple:
    """(the directory to read util-vserver's config from, where it was moved or None). Our config store and
    util-vserver's share /etc/vservers by default: a guest directory next to our NAME.json files would be read by
    util-vserver's tools as a guest, and ours would list an ``autostart`` guest of theirs as our boot marks. So
    the import refuses to write our store into theirs unless asked to move theirs aside."""
    legacy = p['legacy_dir']
    moved = legacy + MOVED_SUFFIX
    if os.path.realpath(paths.config_dir) != os.path.realpath(legacy):
        return legacy, None
    if not _legacy.is_legacy_tree(legacy):
        if os.path.isdir(moved) and _legacy.is_legacy_tree(moved):
            return moved, moved  # moved by an earlier run
        return legacy, None
    if not p['move_legacy']:
        raise VServerError(
            'config_dir %s is util-vserver\'s configuration directory (it holds its guest directories): choose '
            'another config_dir for this collection (the host role\'s host_config_dir, e.g. /etc/vserver.core), '
            'or set move_legacy to move util-vserver\'s tree to %s first' % (paths.config_dir, moved), 'config_dir')
    if os.path.lexists(moved):
        raise VServerError('move_legacy: %s exists already; move it away first' % moved, 'move_legacy')
    return legacy, moved


def _selected(p: dict, legacy_dir: str) -> List[str]:
    available = _legacy.guest_dirs(legacy_dir)
    if p['guests'] == ['all']:
        return available
    missing = [g for g in p['guests'] if g not in available]
    if missing:
        raise VServerError('guests: no util-vserver guest directory %s' % ', '.join(
            os.path.join(legacy_dir, g) for g in missing), 'guests')
    return list(p['guests'])


def _check_sections(item: dict) -> None:
    """Each mapped section through its concern's validator: a refused value names the legacy files."""
    entry = item['entry']
    checks = (
        lambda: _mgr_guests.validate([{k: v for k, v in entry.items()
                                       if k not in ('capabilities', 'limits', 'addresses')}]),
        lambda: _caps.validate(dict(_caps.DEFAULTS, **entry['capabilities'])),
        lambda: _limits.validate(entry['limits']),
        lambda: [_netns.parse_address(a) for a in entry['addresses']],
    )
    for check in checks:
        try:
            check()
        except VServerError as exc:
            field = str(exc.field or '').rsplit('.', maxsplit=1)[-1]
            files = FIELD_FILES.get(field, 'its files')
            raise VServerError('%s (%s): %s' % (item['legacy'], files, exc), item['legacy'])


def _check_xids(paths: Paths, items: List[dict], legacy_dir: str) -> None:
    """Static xids unique among the guests read, and free on this host (a guest imported before keeps its own)."""
    seen = {}
    for item in items:
        if item['xid'] is None:
            continue
        if item['xid'] in seen:
            raise VServerError('%s/context: xid %d is also the context of %s/context; each guest needs its own'
                               % (item['legacy'], item['xid'], seen[item['xid']]), item['legacy'] + '/context')
        seen[item['xid']] = item['legacy']
    taken = _config.xids_in_use(paths)
    names = {}
    for item in items:
        name = item['entry']['name']
        if name in names:
            raise VServerError('%s and %s both map to the guest name %s; rename one directory'
                               % (names[name], item['legacy'], name), item['legacy'])
        names[name] = item['legacy']
        owner = taken.get(item['xid'])
        if item['xid'] is not None and owner is not None and owner != name:
            raise VServerError('%s/context: xid %d is taken on this host by guest %s'
                               % (item['legacy'], item['xid'], owner), item['legacy'] + '/context')


def _allocate(paths: Paths, items: List[dict]) -> None:
    """Dynamic contexts: a guest imported before keeps its xid, a new one gets a free xid no static one uses."""
    used = set(_config.xids_in_use(paths)) | {i['xid'] for i in items if i['xid'] is not None}
    for item in items:
        if item['xid'] is not None:
            item['entry']['xid'] = item['xid']
            continue
        doc = _config.load(paths, item['entry']['name'])
        if doc is not None:
            item['entry']['xid'] = doc['xid']
            continue
        xid = next(x for x in range(2, 49152) if x not in used)
        used.add(xid)
        item['entry']['xid'] = xid


def plan(paths: Paths, p: dict, legacy_dir: str) -> List[dict]:
    """Every selected guest read, mapped and checked; raises before anything is written."""
    items = [_legacy.read_guest(legacy_dir, d) for d in _selected(p, legacy_dir)]
    others = [_legacy.read_guest(legacy_dir, d) for d in _legacy.guest_dirs(legacy_dir)
              if d not in {i['legacy'].rsplit('/', 1)[-1] for i in items}] if p['guests'] != ['all'] else []
    _check_xids(paths, items + others, legacy_dir)
    for item in items:
        _check_sections(item)
    _allocate(paths, items)
    items = _ordered(items)
    for item in items:
        entry = item['entry']
        entry['state'] = 'present'
        entry['network'] = {'bridge': p['bridge']} if p['bridge'] and entry['addresses'] else None
        if not entry['addresses']:
            entry['addresses'] = None  # no interfaces: the guest keeps only its loopback
    return items


def _ordered(items: List[dict]) -> List[dict]:
    """The guests in start order: those a guest depends on (apps/init/depends) before it, as util-vserver's boot
    script started them; a cycle keeps the directory order."""
    by_dir = {item['legacy'].rsplit('/', 1)[-1]: item for item in items}
    out, seen = [], set()

    def visit(item, stack):
        key = item['legacy']
        if key in seen or key in stack:
            return
        for dep in item.get('depends') or []:
            if dep in by_dir:
                visit(by_dir[dep], stack | {key})
        seen.add(key)
        out.append(item)
    for item in items:
        visit(item, frozenset())
    return out


def _rollback(paths: Paths, created: List[str]) -> None:
    for name in reversed(created):
        try:
            _mgr_context.ensure(paths, name, {'name': name, 'state': 'absent', 'purge': False}, False)
        except (VServerError, OSError):
            pass


def _import_one(paths: Paths, item: dict, p: dict, check_mode: bool) -> dict:
    entry = dict(item['entry'])
    res = _mgr_guests.ensure_one(paths, _mgr_guests.validate([entry])[0], check_mode=check_mode)
    actions = list(res['actions'])
    if p['unify'] and item['unify'] is not None and not check_mode:
        unified = _mgr_unify.ensure(paths, entry['name'], dict(item['unify'], state='present'), check_mode)
        actions.extend('unify: %s' % a for a in unified.actions if unified.changed)
    elif p['unify'] and item['unify'] is not None and (_config.load(paths, entry['name']) or {}).get('unify') is None:
        actions.append('unify')
    if p['state'] != 'present':
        state = _mgr_context.ensure(paths, entry['name'], {'name': entry['name'], 'state': p['state']}, check_mode)
        actions.extend(a for a in state.actions if a != 'update config')
    return {'legacy': item['legacy'], 'xid': entry['xid'], 'renamed_from': item['renamed_from'],
            'root': entry['root'], 'changed': bool(actions), 'actions': actions,
            'restart_required': bool(res.get('restart_required')), 'mapped': item['mapped'],
            'unmapped': item['unmapped']}


def ensure(paths: Paths, name: Optional[str], params: Optional[Dict[str, Any]], check_mode: bool = False) -> Result:
    """Import util-vserver guests (``name``: one, or None for ``params['guests']``)."""
    p = validate(params, name)
    result = Result()
    with HostLock(paths):
        legacy_dir, moved = _clash(paths, p, check_mode)
        items = plan(paths, p, legacy_dir)
        if moved and legacy_dir != moved:
            result.actions.append('move %s to %s' % (legacy_dir, moved))
            if not check_mode:
                _move_aside(paths, legacy_dir, moved)
                items = plan(paths, p, moved)
        created = []
        guests = {}
        try:
            for item in items:
                if _config.load(paths, item['entry']['name']) is None:
                    created.append(item['entry']['name'])  # before its first write: a failure removes it too
                guests[item['entry']['name']] = out = _import_one(paths, item, p, check_mode)
                result.actions.extend('%s: %s' % (item['entry']['name'], a) for a in out['actions'])
        except (VServerError, OSError):
            if not check_mode:
                _rollback(paths, created)
            raise
    result.changed = bool(result.actions)
    result.restart_required = any(g['restart_required'] for g in guests.values())
    command = legacy_command()
    if command:
        result.warnings.append('util-vserver\'s own vserver command is installed at %s: it manages VServer-kernel '
                               'guests only; this collection\'s vserver command is the one on PATH (call theirs by '
                               'its full path until util-vserver is removed)' % command)
    result.extra.update(guests=guests, legacy_dir=moved or legacy_dir, moved_to=moved, legacy_command=command)
    return result


def _move_aside(paths: Paths, legacy_dir: str, moved: str) -> None:
    """util-vserver's tree to ``moved``; our store's own files (the lock held now, NAME.json) stay where they are."""
    os.makedirs(moved, mode=0o755)
    for item in os.listdir(legacy_dir):
        if item == '.lock' or item.endswith('.json') or item in ('autostart', _mgr_guests.AUTOSTART_DIR):
            continue
        shutil.move(os.path.join(legacy_dir, item), os.path.join(moved, item))
