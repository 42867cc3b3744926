# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: many guests in one call (the ``guests`` module behind the ``guest`` role).

One Ansible task per option per guest costs ~0.3 s each; a host with 50 guests and five concerns would
spend minutes doing nothing on an idempotent re-run. Here each guest's concerns (context, capabilities,
limits, addresses, autostart mark) go through the very same managers the single-purpose modules use, in
one process. Nothing is computed twice: this file only orders the calls.
"""

from __future__ import annotations

import os

from ansible_collections.vserver.core.plugins.module_utils import (
    _caps, _cgroup, _config, _procfs as P, _limits, _runtime, _mgr_address, _mgr_capabilities, _mgr_context,
    _mgr_limits, _mgr_unify, _template, _tree)
from ansible_collections.vserver.core.plugins.module_utils._common import (
    HostLock, Paths, VServerError, check_name, write_json)

STATES = ('started', 'stopped', 'present', 'frozen', 'absent')
TEMPLATES = ('busybox', 'none', 'clone')
CONTEXT_KEYS = ('xid', 'root', 'hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout', 'lxcfs')
GUEST_KEYS = set(CONTEXT_KEYS) | {'name', 'state', 'template', 'clone_from', 'capabilities', 'limits', 'addresses',
                                  'network', 'autostart', 'purge', 'config', 'files', 'root_password_hash',
                                  'root_authorized_keys'}
AUTOSTART_DIR = 'autostart'
# the single-purpose modules' option defaults (declared once, by each concern), so a guest entry means the same as
# those modules' tasks
CAPS_DEFAULTS = _caps.DEFAULTS
LIMITS_DEFAULTS = _limits.DEFAULTS


def autostart_dir(paths: Paths) -> str:
    return os.path.join(paths.config_dir, AUTOSTART_DIR)


def _whole_section(manager):
    """A concern manager's ``ensure`` for a guest entry's section: the section given is the whole desired state (a
    key removed from it is lifted, docs/roles.md); the Result as the dict the guest's outcome is built from."""
    def ensure(paths: Paths, name: str, params: dict, check_mode: bool) -> dict:
        return manager.ensure(paths, name, params, check_mode, replace=True).to_dict()
    return ensure


CONCERNS = {'capabilities': _whole_section(_mgr_capabilities), 'limits': _whole_section(_mgr_limits),
            'network': _whole_section(_mgr_address)}


def _context(paths, params, check_mode):
    return _mgr_context.ensure(paths, params['name'], params, check_mode).to_dict()


def validate(guests, prune=False):
    """Check the whole list before anything is touched."""
    if not isinstance(guests, list):
        raise VServerError('guests must be a list of dicts with at least a name', 'guests')
    seen = set()
    xids = {}
    out = []
    for index, raw in enumerate(guests):
        field = 'guests[%d]' % index
        name = _check_keys(field, raw)
        if name in seen:
            raise VServerError('%s: guest %s is listed twice' % (field, name), field + '.name')
        seen.add(name)
        spec = _check_entry(field, raw)
        if spec.get('xid') is not None:
            xid = spec['xid']
            if xid in xids:
                raise VServerError('%s.xid %s is also given to guest %s' % (field, xid, xids[xid]), field + '.xid')
            xids[xid] = name
        # context options are validated by the context manager itself (same messages as the module)
        ctx = {key: spec.get(key) for key in CONTEXT_KEYS}
        ctx.update(name=name, state='present', template='none' if spec['template'] == 'clone' else spec['template'])
        _mgr_context.validate(ctx)
        out.append(spec)
    return out


def _check_keys(field, raw):
    """The entry's name, once it is a dict of known keys with a valid name."""
    if not isinstance(raw, dict) or 'name' not in raw:
        raise VServerError('%s must be a dict with at least a name (got %r)' % (field, raw), field)
    unknown = sorted(set(raw) - GUEST_KEYS)
    if unknown:
        raise VServerError('%s: unknown keys %s; accepted: %s'
                           % (field, ', '.join(unknown), ', '.join(sorted(GUEST_KEYS))), field)
    return check_name(raw['name'], field + '.name')


def _check_entry(field, raw):
    """One entry's own values checked (a copy), with state and template defaulted."""
    spec = dict(raw)
    spec['state'] = spec.get('state') or 'started'
    if spec['state'] not in STATES:
        raise VServerError('%s.state must be one of %s (got %r)' % (field, ', '.join(STATES), spec['state']),
                           field + '.state')
    spec['template'] = spec.get('template') or 'busybox'
    if spec['template'] not in TEMPLATES:
        raise VServerError('%s.template must be one of %s (got %r); debootstrap, mmdebstrap and tarball trees '
                           'are built by the guest role, then passed with template none'
                           % (field, ', '.join(TEMPLATES), spec['template']), field + '.template')
    if spec['template'] == 'clone':
        if not spec.get('clone_from'):
            raise VServerError('%s.clone_from names the guest to clone when template is clone' % field,
                               field + '.clone_from')
        check_name(spec['clone_from'], field + '.clone_from')
    if spec.get('addresses') is not None and not isinstance(spec['addresses'], list):
        spec['addresses'] = [spec['addresses']]
    for key in ('capabilities', 'limits', 'network'):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise VServerError('%s.%s must be a dict of that module\'s options' % (field, key), field + '.' + key)
    _check_files(field, spec)
    return spec


def _check_files(field, spec):
    """files, root_password_hash and root_authorized_keys of one entry."""
    files = spec.get('files') or {}
    if not isinstance(files, dict):
        raise VServerError('%s.files must be a dict of absolute guest paths to contents' % field, field + '.files')
    for fpath, value in files.items():
        _tree.check_guest_path(fpath, '%s.files' % field)
        if not isinstance(value, (str, dict)) or (isinstance(value, dict) and 'content' not in value):
            raise VServerError('%s.files[%s] must be a string or a dict with content (and mode)' % (field, fpath),
                               field + '.files')
    pw = spec.get('root_password_hash')
    if pw is not None and (not isinstance(pw, str) or ':' in pw or '\n' in pw or not pw):
        raise VServerError('%s.root_password_hash must be a crypt(3) hash, "!" (locked) or "*" (no password), '
                           'without ":"' % field, field + '.root_password_hash')
    keys = spec.get('root_authorized_keys')
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        raise VServerError('%s.root_authorized_keys must be a list of public key lines' % field,
                           field + '.root_authorized_keys')


def clone(paths, src, dst):
    """Clone guest tree ``src`` to ``dst`` (``_tree.clone_tree``): unified files are linked while every guest is
    frozen, a build sibling left by a failure is removed with the running guests frozen around shared unlinks."""
    return _tree.clone_tree(src, dst, writers=P.open_for_write, pause=lambda: AllGuestsFrozen(paths),
                            freezer=lambda: _mgr_unify.freezer(paths))


class FrozenSource:
    """Freeze a running source guest's cgroup for the copy (one consistent view; its processes cannot race the
    walk), thaw it after; a guest frozen before stays frozen. A stopped source is copied as it is (nothing runs
    in it; it cannot start while the host lock is held). Measured: the busybox tree (~400 entries) is copied
    in 0.1 to 1.1 s on a loaded 2-core machine (integration test)."""

    def __init__(self, paths, name):
        self.runtime = _runtime.Runtime(paths, name)
        self.name = name
        self.thaw = False

    def __enter__(self):
        state = self.runtime.state()
        if state == 'running':
            group = self.runtime.group
            self.thaw = True
            if not group.freeze():
                group.thaw()
                raise VServerError('clone_from: guest %s runs and did not freeze within 5 s; a running source is '
                                   'only copied frozen (stop it, or retry)' % self.name, 'clone_from')
        return self

    def __exit__(self, *exc):
        if self.thaw:
            self.runtime.group.thaw()
        return False


class AllGuestsFrozen:
    """Every guest of this host frozen (the guests' cgroup parent), for the instant a shared inode's immutable flag
    is off: no guest process can open it for writing meanwhile. Guests frozen before stay frozen."""

    def __init__(self, paths):
        layout = _cgroup.host_layout()
        parent = _cgroup.guest_parent(paths.cgroup_parent, layout)
        head, _sep, tail = parent.rpartition('/')
        self.group = layout.group(head, tail)
        self.group.rel = parent
        self.froze = False

    def __enter__(self):
        if not self.group.exists():
            return self  # no guest has ever run under this parent
        self.froze = True
        if not self.group.freeze():
            self.group.thaw()
            raise VServerError('clone: the guests did not freeze within 5 s; a unified file is only linked while '
                               'no guest can open it (retry)', 'clone_from')
        return self

    def __exit__(self, *exc):
        if self.froze:
            self.group.thaw()
        return False


def _desired_files(root, spec):
    """guest path -> (bytes, mode) for the files and root-login policy the spec asks for."""
    out = {}
    for fpath, value in (spec.get('files') or {}).items():
        if isinstance(value, dict):
            mode = int(str(value.get('mode', '0644')), 8)
            content = value['content']
        else:
            mode, content = 0o644, value
        out[fpath] = (content.encode(), mode)
    if spec.get('root_password_hash') is not None:
        current, mode = _tree.read_in_tree(root, '/etc/shadow')
        lines = (current or b'').decode().splitlines()
        found = False
        for i, line in enumerate(lines):
            fields = line.split(':')
            if fields[0] == 'root' and len(fields) > 1:
                fields[1] = spec['root_password_hash']
                lines[i] = ':'.join(fields)
                found = True
        if not found:
            lines.insert(0, 'root:%s:19000:0:99999:7:::' % spec['root_password_hash'])
        out['/etc/shadow'] = (('\n'.join(lines) + '\n').encode(), mode or 0o640)
    if spec.get('root_authorized_keys') is not None:
        keys = ''.join(k.rstrip('\n') + '\n' for k in spec['root_authorized_keys'])
        out['/root/.ssh/authorized_keys'] = (keys.encode(), 0o600)
    return out


def _files(root, spec, check_mode):
    actions = []
    for fpath, (data, mode) in sorted(_desired_files(root, spec).items()):
        current, current_mode = _tree.read_in_tree(root, fpath)
        if current == data and current_mode == mode:
            continue
        actions.append('write %s' % fpath)
        if not check_mode:
            _tree.write_in_tree(root, fpath, data, mode)
    return actions


def _autostart(paths, name, wanted, check_mode):
    """The boot mark: CONFIG_DIR/autostart/NAME exists for guests that start at boot."""
    mark = os.path.join(autostart_dir(paths), name)
    present = os.path.exists(mark)
    if wanted is None or bool(wanted) == present:
        return None
    if not check_mode:
        if wanted:
            os.makedirs(autostart_dir(paths), mode=0o755, exist_ok=True)
            with open(mark, 'w'):
                pass
        else:
            os.unlink(mark)
    return 'autostart on' if wanted else 'autostart off'


def _adopt(paths, spec, check_mode):
    """Install a config document brought from another host (cold migration), root rewritten to this host."""
    doc = _config.migrate(dict(spec['config']))[0]  # a document of an older schema (another host's) reads as now
    doc['name'] = spec['name']
    doc['root'] = spec.get('root') or paths.default_root(spec['name'])
    with HostLock(paths):  # every config writer holds it (HostLock removes temp files of killed writers)
        current = _config.load(paths, spec['name'])
        if current == doc:
            return None
        taken = _config.xids_in_use(paths, exclude=spec['name'])
        if doc.get('xid') in taken:
            raise VServerError('xid %s of guest %s is taken on this host by guest %s'
                               % (doc.get('xid'), spec['name'], taken[doc['xid']]), 'xid')
        if not check_mode:
            os.makedirs(paths.config_dir, mode=0o755, exist_ok=True)
            write_json(paths.config_file(spec['name']), doc, 0o644)
    return 'adopt config'


class _Outcome:
    """What one guest's run did so far: actions (also when a later step fails), diff per section, restart."""

    def __init__(self, actions):
        self.actions = actions
        self.before = {}
        self.after = {}
        self.restart_required = False

    def section(self, key, res):
        """Record a manager's diff under ``key``."""
        self.before[key] = res.get('diff', {}).get('before')
        self.after[key] = res.get('diff', {}).get('after')

    def result(self, name):
        return {'name': name, 'changed': bool(self.actions), 'actions': self.actions,
                'restart_required': self.restart_required, 'diff': {'before': self.before, 'after': self.after}}


def _ensure_absent(paths, spec, check_mode, actions):
    name = spec['name']
    res = _context(paths, {'name': name, 'state': 'absent', 'purge': bool(spec.get('purge'))}, check_mode)
    mark = _autostart(paths, name, False, check_mode) if os.path.exists(
        os.path.join(autostart_dir(paths), name)) else None
    actions.extend(res['actions'] + ([mark] if mark and mark not in res['actions'] else []))  # purge: done
    return {'name': name, 'changed': bool(actions), 'actions': actions, 'restart_required': False,
            'diff': res.get('diff', {})}


def _clone_step(paths, spec, root, check_mode, out):
    """template clone, tree absent: copy the source guest's tree (frozen if it runs) to ``root``."""
    source = _config.load(paths, spec['clone_from'])
    if source is None and check_mode:
        source = {'root': None}  # the source may be created by this very run
    elif source is None:
        raise VServerError('clone_from: no such guest %s on this host' % spec['clone_from'], 'clone_from')
    out.actions.append('clone tree from %s' % spec['clone_from'])
    if not check_mode:
        with HostLock(paths):  # the build sibling is swept by runs holding the lock
            for stale in _template.stale_builds(root):
                _mgr_context.remove_build(stale, paths)
            with FrozenSource(paths, spec['clone_from']):
                clone(paths, source['root'], root)


def _context_step(paths, spec, root, check_mode, out):
    """The context section (config and tree; the run state comes last, in ``_run_state_step``)."""
    template = spec['template']
    ctx = {key: spec.get(key) for key in CONTEXT_KEYS}
    ctx.update(name=spec['name'], state='present', template='none' if template == 'clone' else template)
    if template == 'clone':
        ctx['root'] = root
    if check_mode and template in ('clone', 'none') and _template.tree_is_empty(root):
        # the clone (or the role's bootstrap, skipped in check mode) would have made the tree: only report
        ctx['template'] = 'busybox'
    res = _context(paths, ctx, check_mode)
    out.actions.extend(a for a in res['actions']
                       if not (template in ('clone', 'none') and a.startswith('build tree')))
    out.restart_required = bool(res.get('restart_required'))  # root or init changed under a running guest
    out.section('context', res)


def _sections(spec):
    """(concern, params) of the concern sections the entry gives, with the single-purpose modules' defaults."""
    sections = []
    if spec.get('capabilities') is not None:
        sections.append(('capabilities', dict(CAPS_DEFAULTS, **spec['capabilities'])))
    if spec.get('limits') is not None:
        sections.append(('limits', dict(LIMITS_DEFAULTS, **spec['limits'])))
    if spec.get('addresses') is not None or spec.get('network') is not None:
        params = dict(spec.get('network') or {})
        if spec.get('addresses') is not None:
            params['addresses'] = spec['addresses']
        params.setdefault('state', 'present')
        params.setdefault('exclusive', True)  # the list is the guest's whole set of addresses
        sections.append(('network', params))
    return sections


def _concerns_step(paths, spec, exists, check_mode, out):
    for concern, params in _sections(spec):
        if check_mode and not exists:
            out.actions.append('configure %s' % concern)  # new guest: every section will be written
            continue
        res = CONCERNS[concern](paths, spec['name'], params, check_mode)
        if res.get('changed'):
            out.actions.extend('%s: %s' % (concern, a) for a in res.get('actions') or ['update'])
            out.section(concern, res)
        out.restart_required = out.restart_required or bool(res.get('restart_required'))


def _run_state_step(paths, spec, exists, allow_restart, check_mode, out):
    """The requested run state, through the context manager only when the guest is not in it already (or a
    change waits for a restart the task allows)."""
    name = spec['name']
    state = spec['state']
    if out.restart_required and state == 'started' and allow_restart:
        state = 'restarted'
        out.restart_required = False
    observed = _runtime.Runtime(paths, name).state() if exists else None
    in_state = (('started', 'running'), ('frozen', 'frozen'), ('stopped', 'stopped'), ('present', observed))
    if exists and not out.restart_required and (state, observed) in in_state:
        return  # already in the requested run state: no second pass through the context manager
    if exists or not check_mode:
        res = _context(paths, {'name': name, 'state': state}, check_mode)
        out.actions.extend(a for a in res['actions'] if a not in ('update config',))
        after = res.get('diff', {}).get('after') or {}
        out.after.setdefault('context', {})
        if isinstance(out.after['context'], dict):
            out.after['context'] = dict(out.after['context'], state=after.get('state'))
        out.restart_required = out.restart_required or bool(res.get('restart_required'))
    elif state in ('started', 'frozen'):
        out.actions.append('start')


def ensure_one(paths, spec, allow_restart=False, check_mode=False, actions=None):
    """Context, then each concern, then the run state; one guest. ``actions`` (a list) collects what was done,
    also when a later step fails."""
    name = spec['name']
    actions = [] if actions is None else actions
    if spec['state'] == 'absent':
        return _ensure_absent(paths, spec, check_mode, actions)
    out = _Outcome(actions)
    if spec.get('config'):
        step = _adopt(paths, spec, check_mode)
        if step:
            actions.append(step)
    root = spec.get('root') or paths.default_root(name)
    if spec['template'] == 'clone' and not os.path.exists(root):
        _clone_step(paths, spec, root, check_mode, out)
    _context_step(paths, spec, root, check_mode, out)
    doc = _config.load(paths, name)
    exists = doc is not None
    if exists and os.path.isdir(doc.get('root') or ''):
        actions.extend(_files(doc['root'], spec, check_mode))
    elif spec.get('files') or spec.get('root_password_hash') or spec.get('root_authorized_keys') is not None:
        actions.append('write guest files')
    _concerns_step(paths, spec, exists, check_mode, out)
    mark = _autostart(paths, name, spec.get('autostart'), check_mode)
    if mark:
        actions.append(mark)
    _run_state_step(paths, spec, exists, allow_restart, check_mode, out)
    return out.result(name)


def ensure(paths: Paths, params: dict, check_mode: bool = False) -> dict:
    """The ``guests`` module: every listed guest, then (with ``prune``) remove the unlisted ones."""
    specs = validate(params.get('guests') or [])
    allow_restart = bool(params.get('allow_restart'))
    prune = bool(params.get('prune'))
    results = []
    # Each manager takes the host lock itself (flock is per open file: nesting would deadlock).
    # Clones after their sources.
    ordered = [s for s in specs if s['template'] != 'clone'] + [s for s in specs if s['template'] == 'clone']
    for spec in ordered:
        results.append(_guarded(paths, spec, allow_restart, check_mode))
    if prune:
        listed = {s['name'] for s in specs}
        for name in _config.names(paths):
            if name not in listed:
                results.append(_guarded(paths, {'name': name, 'state': 'absent', 'template': 'none',
                                                'purge': bool(params.get('purge_pruned'))}, False, check_mode))
    changed = [r for r in results if r['changed']]
    out = {
        'changed': bool(changed),
        'guests': {r['name']: {k: r[k] for k in ('changed', 'actions', 'restart_required', 'failed', 'msg')
                               if k in r} for r in results},
        'actions': ['%s: %s' % (r['name'], a) for r in results for a in r['actions']],
        'restart_required': sorted(r['name'] for r in results if r['restart_required']),
        'diff': {'before': {r['name']: r['diff'].get('before') for r in changed},
                 'after': {r['name']: r['diff'].get('after') for r in changed}},
    }
    failed = [r for r in results if r.get('failed')]
    if failed:
        out['failed'] = True
        out['msg'] = '%d of %d guests failed (the others were converged): %s' % (
            len(failed), len(results), '; '.join('%s: %s' % (r['name'], r['msg']) for r in failed))
    return out


def _guarded(paths, spec, allow_restart, check_mode):
    """ensure_one, with a failure reported for this guest only (failed, msg and what was done before it), so
    one broken guest does not stop the rest of the list."""
    actions = []
    try:
        return ensure_one(paths, spec, allow_restart, check_mode, actions)
    except (VServerError, OSError) as exc:
        return {'name': spec['name'], 'changed': bool(actions), 'actions': actions, 'restart_required': False,
                'failed': True, 'msg': str(exc), 'diff': {}}
