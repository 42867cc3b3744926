# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the manager of the context module (floor 6, see docs/architecture.md), also behind
context_info, the ``vserver`` command, the guests module and the supervisor.

``ensure(paths, name, params, check_mode) -> Result``: validate, read the state under the host lock (``_gather``:
the stored config, the runtime state, the tree), decide (``plan``: no side effect, unit-tested), then act
(``_execute``) unless in check mode."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

from ansible_collections.vserver.core.plugins.module_utils import (
    _config, _runtime, _runtime_views, _kernel as K, _template, _tree)
from ansible_collections.vserver.core.plugins.module_utils import _mgr_address
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths, VServerError, check_name
from ansible_collections.vserver.core.plugins.module_utils._result import Result

STATES = ('present', 'started', 'stopped', 'restarted', 'frozen', 'absent')
TEMPLATES = ('busybox', 'none')
CONTEXT_KEYS = _config.CONTEXT_KEYS
# Changing these on a running guest needs a restart; hostname/domainname apply live, xid is a label.
RESTART_KEYS = ('root', 'init', 'lxcfs')
KILL_UNTRACKED = 'kill untracked processes'
SET_HOSTNAME = 'set hostname'

# The context module's options: one source for the module, the guests module and the CLI.
ARGUMENT_SPEC = {
    'name': {'type': 'str', 'required': True},
    'xid': {'type': 'int'},
    'root': {'type': 'path'},
    'template': {'type': 'str', 'default': 'busybox', 'choices': list(TEMPLATES)},
    'hostname': {'type': 'str'},
    'domainname': {'type': 'str'},
    'init': {'type': 'raw'},
    'stop_signal': {'type': 'str'},
    'stop_timeout': {'type': 'float'},
    'lxcfs': {'type': 'bool'},
    'state': {'type': 'str', 'default': 'present', 'choices': list(STATES)},
    'purge': {'type': 'bool', 'default': False},
}
DEFAULTS = {key: spec.get('default') for key, spec in ARGUMENT_SPEC.items() if not spec.get('required')}
# What a new guest's config gets for a context key the task leaves out (the stop settings: the runtime's defaults).
STORED_DEFAULTS = {'init': _config.DEFAULT_INIT, 'stop_signal': _config.DEFAULT_STOP_SIGNAL,
                   'stop_timeout': _config.DEFAULT_STOP_TIMEOUT}
# The context_info module's options.
INFO_ARGUMENT_SPEC = {
    'names': {'type': 'list', 'elements': 'str'},
    'processes': {'type': 'bool', 'default': True},
    'metrics': {'type': 'bool', 'default': False},
}


def validate(params: Dict[str, Any]) -> Dict[str, Any]:
    """Check every context option before anything is touched; return normalized values."""
    out = {'name': check_name(params.get('name'))}
    for key, choices in (('state', STATES), ('template', TEMPLATES)):
        value = params.get(key) or DEFAULTS[key]
        if value not in choices:
            raise VServerError('%s must be one of %s (got %r)' % (key, ', '.join(choices), value), key)
        out[key] = value
    out.update(_config.check_context(params))
    out['purge'] = bool(params.get('purge'))
    return out


def _desired(paths, opts, current):
    doc = dict(current or {})
    doc['name'] = opts['name']
    if opts.get('xid') is not None:
        taken = _config.xids_in_use(paths, exclude=opts['name'])
        if opts['xid'] in taken:
            raise VServerError('xid %d is taken by guest %s; choose a free id from 2 to 49151 or omit xid'
                               % (opts['xid'], taken[opts['xid']]), 'xid')
        doc['xid'] = opts['xid']
    elif 'xid' not in doc:
        doc['xid'] = _config.free_xid(paths, exclude=opts['name'])
    doc['root'] = opts['root'] or doc.get('root') or paths.default_root(opts['name'])
    for key in ('hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout', 'lxcfs'):
        if opts.get(key) is not None:
            doc[key] = opts[key]
    for key, value in STORED_DEFAULTS.items():
        doc.setdefault(key, list(value) if isinstance(value, list) else value)
    return doc


def _restart_key(doc, key):
    return doc.get(key) is not False if key == 'lxcfs' else doc.get(key)  # lxcfs: absent means on


def _view(doc, state):
    if doc is None:
        return {'state': 'absent'}
    out = {key: doc.get(key) for key in CONTEXT_KEYS if key in doc}
    out['state'] = state
    return out


def _uts_wanted(doc):
    return [doc.get('hostname') or doc['name'], doc.get('domainname') or '(none)']


def _read_uts():
    with open('/proc/sys/kernel/domainname') as handle:
        return [os.uname().nodename, handle.read().strip()]


def _live_uts(rt):
    """[host name, domain name] of a running guest as its UTS namespace holds them (None if it stopped)."""
    proc_fd = rt.open_init()  # through init's /proc fd: never a process that reused its pid
    if proc_fd is None:
        return None
    try:
        return K.call_in_namespaces(['/proc/self/fd/%d/ns/uts' % proc_fd], _read_uts)
    except OSError:
        return None
    finally:
        os.close(proc_fd)


def _undo_uts(paths, doc, old_uts, exc):
    """The config could not be saved: give the running guest its previous host and domain name back."""
    outcome = 'nothing was changed on the guest'
    if old_uts:
        try:
            _runtime.set_uts(paths, dict(doc, hostname=old_uts[0], domainname=old_uts[1]))
            outcome = 'the guest keeps its previous host name %s' % old_uts[0]
        except VServerError as undo_exc:
            outcome = ('giving the guest its previous host name back failed (%s): it differs from its config until '
                       'this task runs again' % undo_exc)
    if not isinstance(exc, Exception):
        raise exc
    raise VServerError('context: saving the config of guest %s failed (%s); %s' % (doc['name'], exc, outcome)) \
        from exc


def _observed_state(state):
    return {'running': 'started', 'frozen': 'frozen', 'stopped': 'stopped', 'broken': 'broken'}[state]


# Tree removal lives in _tree (a mechanism); these wrappers give it the unify freezer (running guests frozen while
# a shared file's protection is lifted), which needs the runtime. check_purgeable and mounts_below stay importable.
check_purgeable = _tree.check_purgeable
mounts_below = _tree.mounts_below


def _freezer(paths):
    """The running guests' freezer of a purge (``_mgr_unify.freezer``; imported here: it loads the unify concern,
    ~20 ms that `vserver NAME start|stop` never needs)."""
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_unify
    return _mgr_unify.freezer(paths)


def purge_tree(root, paths=None):
    """Delete a stopped guest's tree (``_tree.purge_tree``), the running guests frozen around shared unlinks."""
    _tree.purge_tree(root, freezer=lambda: _freezer(paths))


def remove_build(build: str, paths: Paths | None = None) -> None:
    """Remove an unfinished build sibling (``_tree.remove_build``), the running guests frozen likewise."""
    _tree.remove_build(build, freezer=lambda: _freezer(paths))


def _absent(paths: Paths, opts, current, rt, running_state, before, check_mode) -> Result:
    """state=absent: stop, the concerns' absent steps, (purge: mark the config ``purging``, delete the tree,
    the guest's log and its autostart mark), remove the config. The config goes last, so a run killed at any
    point leaves something a re-run finds and finishes: a config marked ``purging`` is purged again even without
    purge=true."""
    name = opts['name']
    result = Result(before=before, after=before)
    actions = result.actions
    root = (current or {}).get('root') or paths.default_root(name)
    purge = current is not None and bool(opts['purge'] or current.get('purging')) and os.path.isdir(root)
    builds = _template.stale_builds(root)
    leftovers = rt.leftovers()
    if current is None and not leftovers and not builds:
        return result
    if purge:
        check_purgeable(root, own_mount=True)  # before anything is touched
    if running_state != 'stopped' or leftovers:
        actions.append('stop')
    actions.extend('remove unfinished build %s' % build for build in builds)
    if purge:
        actions.append('purge tree %s' % root)
    wipe = current is not None and bool(opts['purge'] or current.get('purging'))  # also when the tree is gone
    log = paths.log_file(name)
    leftover_files = [f for f in (log, log + '.1', paths.autostart_mark(name)) if wipe and os.path.lexists(f)]
    actions.extend('remove log %s' % f if f.startswith(log) else 'autostart off' for f in leftover_files)
    if current is not None:
        actions.append('remove config')
    if not check_mode:
        for build in builds:
            remove_build(build, paths)
        if current is not None:
            _runtime.stop(paths, current)
        else:
            _runtime.cleanup(paths, name)
        _runtime.on_absent(paths, current)
        if purge:
            if not current.get('purging'):
                _config.save(paths, dict(current, purging=True))
            purge_tree(root, paths)
        for leftover in leftover_files:
            _unlink_quietly(leftover)
        if current is not None:
            _config.remove(paths, name)
    result.changed = True
    result.after = {'state': 'absent'}
    return result


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _ensure_broken(paths: Paths, opts, broken, check_mode) -> Result:
    """state=stopped/absent for a guest whose config is unusable: the runtime record knows its init and
    cgroup, so it is stopped with the default signal and timeout; absent also removes the broken file."""
    name = opts['name']
    if opts['state'] == 'absent' and opts['purge']:
        raise VServerError('%s; purge cannot tell which tree to remove: remove the guest without purge, then '
                           'delete its tree yourself' % broken, 'purge')
    rt = _runtime.Runtime(paths, name)
    running = rt.state() != 'stopped' or bool(rt.leftovers())
    actions = ['stop'] if running else []
    if opts['state'] == 'absent':
        actions.append('remove config')
    warning = 'config of guest %s is broken (%s)' % (name, broken)
    if running:
        warning += '; stopping it with the default stop_signal SIGTERM and stop_timeout 10 s'
    before = {'state': 'broken', 'error': str(broken)}
    after = {'state': 'absent'} if opts['state'] == 'absent' else before
    result = Result(changed=bool(actions), before=before, after=after, actions=actions, warnings=[warning])
    if not check_mode:
        if running:
            _runtime.stop(paths, {'name': name})
        if opts['state'] == 'absent':
            _runtime.on_absent(paths, None)
            _config.remove(paths, name)
    if opts['state'] == 'stopped':
        result.extra['guest'] = broken_status(paths, name, broken)
    return result


# --- started, stopped, present...: facts, plan, execution ---------------------------------------------------

@dataclasses.dataclass
class Facts:
    """What the planner reads, gathered under the host lock by ``_gather``."""

    running_state: str                      # running, frozen, stopped or broken (Runtime.state)
    leftovers: bool = False                 # runtime traces of the guest (runtime dir, cgroup)
    builds: List[str] = dataclasses.field(default_factory=list)   # unfinished build siblings of the root
    tree_empty: bool = False                # the root is missing or empty: a template builds it
    root_is_dir: bool = True
    init_exists: bool = True                # the init program is in the tree
    live_uts: Optional[List[str]] = None    # [host name, domain name] in a running guest's UTS namespace
    repairs: List[str] = dataclasses.field(default_factory=list)  # runtime state a killed run left wrong
    migrations: List[Any] = dataclasses.field(default_factory=list)  # _config.Migration steps the stored doc took


@dataclasses.dataclass
class Plan:
    """What ``ensure`` does, in order: remove stale builds, build the tree, write the config, repair the runtime
    state, then the runtime ``steps`` (set hostname, stop, kill untracked processes, start, freeze, thaw)."""

    doc: Dict[str, Any]
    template: str = 'busybox'
    create: bool = False
    builds: List[str] = dataclasses.field(default_factory=list)
    build: bool = False
    config_changed: bool = False
    repairs: List[str] = dataclasses.field(default_factory=list)
    steps: List[str] = dataclasses.field(default_factory=list)
    restart_required: bool = False
    after_state: str = 'stopped'
    warnings: List[str] = dataclasses.field(default_factory=list)

    @property
    def actions(self) -> List[str]:
        out = ['remove unfinished build %s' % build for build in self.builds]
        if self.build:
            out.append('build tree %s from template %s' % (self.doc['root'], self.template))
        if self.config_changed:
            out.append('create config' if self.create else 'update config')
        return out + self.repairs + self.steps


# The runtime steps to reach a target state from the observed one.
_STEPS = {
    'started': {'stopped': ['start'], 'frozen': ['thaw'], 'running': [], 'broken': [KILL_UNTRACKED, 'start']},
    'frozen': {'stopped': ['start', 'freeze'], 'running': ['freeze'], 'frozen': [],
               'broken': [KILL_UNTRACKED, 'start', 'freeze']},
}


def _steps(target: str, state: str, leftovers: bool) -> List[str]:
    if target == 'restarted':
        return (['stop'] if state != 'stopped' else []) + ['start']
    if target == 'stopped':  # also clears what an init that died on its own (or a killed start) left behind
        return [] if state == 'stopped' and not leftovers else ['stop']
    return list(_STEPS.get(target, {}).get(state, []))  # present: the run state is left as it is


def _check_tree(opts: Dict[str, Any], doc: Dict[str, Any], facts: Facts) -> bool:
    """Whether the tree must be built; VServerError when the root cannot be used."""
    root = doc['root']
    if facts.tree_empty:
        if opts['template'] == 'none':
            raise VServerError('root %s does not exist or is empty and template is none: give an existing '
                               'guest tree or use template: busybox' % root, 'root')
        return True
    if not facts.root_is_dir:
        raise VServerError('root %s exists and is not a directory' % root, 'root')
    if not facts.init_exists:
        raise VServerError('init %s does not exist in the guest tree %s' % (doc['init'][0], root), 'init')
    return False


def _migration_notes(name: str, migrations: List[Any]) -> List[str]:
    """A running guest whose stored config was written by an older collection: what changes at its next start."""
    if not migrations:
        return []
    later = [m.at_next_start for m in migrations if m.at_next_start]
    return ['guest %s runs with a config of schema %d (an older vserver.core wrote it), now rewritten as schema %d; '
            'at its next start: %s' % (name, migrations[0].to - 1, migrations[-1].to,
                                       '; '.join(later) if later else 'nothing changes')]


def plan(opts: Dict[str, Any], current: Optional[Dict[str, Any]], doc: Dict[str, Any], facts: Facts) -> Plan:
    """Decide what ``ensure`` does for the validated options ``opts``, the stored config ``current`` (None: a new
    guest), the desired config ``doc`` and what the host shows (``facts``). No side effect."""
    target, state = opts['state'], facts.running_state
    out = Plan(doc=doc, template=opts['template'], create=current is None, builds=list(facts.builds),
               build=_check_tree(opts, doc, facts), repairs=list(facts.repairs),
               config_changed=doc != current or bool(facts.migrations))
    out.steps = _steps(target, state, facts.leftovers)
    live = state in ('running', 'frozen')
    if live and current is not None:
        if any(_restart_key(doc, k) != _restart_key(current, k) for k in RESTART_KEYS):
            out.restart_required = target != 'restarted'
        # against the kernel, not the config: a run killed after the config was saved converges on the next
        if _uts_wanted(doc) != facts.live_uts and 'stop' not in out.steps:
            out.steps.insert(0, SET_HOSTNAME)
        out.warnings = _migration_notes(doc['name'], facts.migrations)
        if any(m.restart for m in facts.migrations) and target != 'restarted' and 'stop' not in out.steps:
            out.restart_required = True
    out.after_state = {'present': _observed_state(state), 'restarted': 'started'}.get(target, target)
    return out


def _gather(rt, doc: Dict[str, Any], current, target: str, running_state: str, migrations) -> Facts:
    """Read what ``plan`` needs: the tree, the runtime state, a running guest's host name and repairs."""
    root = doc['root']
    facts = Facts(running_state=running_state, leftovers=bool(rt.leftovers()), builds=_template.stale_builds(root),
                  tree_empty=_template.tree_is_empty(root), root_is_dir=os.path.isdir(root),
                  init_exists=os.path.lexists(os.path.join(root, doc['init'][0].lstrip('/'))),
                  migrations=list(migrations))
    live = running_state in ('running', 'frozen')
    if live and current is not None:
        facts.live_uts = _live_uts(rt)
    if live and target in ('started', 'frozen'):
        proc_fd = rt.open_init()
        if proc_fd is not None:
            try:
                facts.repairs = rt.repairs(proc_fd)
            finally:
                os.close(proc_fd)
    return facts


def _save(paths: Paths, rt, plan_: Plan, steps: List[str]) -> None:
    """The config; a host name change first on the running guest, then the config (undone if it cannot be saved)."""
    doc = plan_.doc
    if steps and steps[0] == SET_HOSTNAME:
        old_uts = _live_uts(rt)
        _runtime.set_uts(paths, doc)
        steps.pop(0)
        try:
            _config.save(paths, doc)
        except BaseException as exc:
            _undo_uts(paths, doc, old_uts, exc)
            raise
    elif plan_.config_changed:
        _config.save(paths, doc)


def _execute(paths: Paths, rt, plan_: Plan, current) -> List[str]:
    """Carry out ``plan_``; a guest this run created is removed again (config, built tree) on failure. Returns
    warnings (bad stop settings of the stored config)."""
    doc, name, root = plan_.doc, plan_.doc['name'], plan_.doc['root']
    if plan_.repairs:
        proc_fd = rt.open_init()
        if proc_fd is not None:
            try:
                rt.repair(proc_fd, plan_.repairs)
            finally:
                os.close(proc_fd)
    built = False
    warnings = []
    steps = list(plan_.steps)
    run = {KILL_UNTRACKED: lambda: _runtime.cleanup(paths, name),
           'start': lambda: warnings.extend(_runtime.start(paths, doc).get('warnings', [])),  # e.g. LXCFS down
           'freeze': lambda: _runtime.freeze(paths, doc), 'thaw': lambda: _runtime.thaw(paths, doc),
           'stop': lambda: warnings.extend(_runtime.stop(paths, current or doc))}
    try:
        for stale in plan_.builds:
            remove_build(stale, paths)
        if plan_.build:
            os.makedirs(os.path.dirname(root), mode=0o700, exist_ok=True)
            _template.build_busybox(root, doc.get('hostname') or name)
            built = True
        _save(paths, rt, plan_, steps)
        for step in steps:
            run[step]()
    except BaseException:
        if current is None:  # roll back what this run created
            _config.remove(paths, name)
            if built:
                purge_tree(root, paths)
        raise
    return warnings


def ensure(paths: Paths, name: str, params: Dict[str, Any], check_mode: bool = False) -> Result:
    """Bring guest ``name`` to the state ``params`` asks for (the context module's options, ARGUMENT_SPEC)."""
    opts = validate(dict(params, name=name))
    with HostLock(paths):
        try:
            current, migrations = _config.load_migrated(paths, name)
        except _config.BrokenConfig as exc:
            if opts['state'] not in ('stopped', 'absent'):
                raise VServerError('%s; repair or remove that file (state=absent removes the guest and its '
                                   'config, keeping its tree) before state=%s' % (exc, opts['state']), 'name')
            return _ensure_broken(paths, opts, exc, check_mode)
        rt = _runtime.Runtime(paths, name)
        running_state = rt.state()
        before = _view(current, _observed_state(running_state) if current else 'absent')
        if opts['state'] == 'absent':
            return _absent(paths, opts, current, rt, running_state, before, check_mode)
        if current is not None and current.get('purging'):
            raise VServerError('guest %s was being purged when a run stopped half-way (its tree may be partly '
                               'deleted); finish with state absent, then create it again' % name, 'state')
        doc = _desired(paths, opts, current)
        todo = plan(opts, current, doc, _gather(rt, doc, current, opts['state'], running_state, migrations))
        if todo.build:
            _template.find_busybox()  # fail early, before anything is written
        result = Result(changed=bool(todo.actions), before=before, after=_view(doc, todo.after_state),
                        actions=todo.actions, restart_required=todo.restart_required, warnings=list(todo.warnings))
        if check_mode or not todo.actions:
            result.extra['guest'] = _runtime.status(paths, doc) if current else {'name': name, 'state': 'absent'}
            return result
        result.warnings.extend(_execute(paths, rt, todo, current))
        result.extra['guest'] = _runtime.status(paths, doc)
        return result


def ensure_context(paths: Paths, params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """``ensure`` as a module result dict (for the guests module, bin/vserver and the supervisor)."""
    return ensure(paths, params.get('name'), params, check_mode).to_dict()


def info(paths: Paths, names: list[str] | None = None, with_processes: bool = True, metrics: bool = False) -> dict:
    """Facts about all (or the named) guests and, optionally, the spectator view of every process and each guest's
    figures for monitoring (``metrics``: _runtime_metrics.sample, what `vserver metrics` exposes)."""
    docs, broken = _config.scan(paths)
    if names:
        for name in names:
            check_name(name, 'names')
        missing = [n for n in names if n not in docs and n not in broken]
        if missing:
            raise VServerError('names: no such guest: %s' % ', '.join(missing), 'names')
    else:
        names = sorted(set(docs) | set(broken))
    guests = []
    for name in sorted(set(names)):
        if name in broken:
            guests.append(broken_status(paths, name, broken[name]))
            continue
        doc = docs[name]
        row = _runtime.status(paths, doc)
        row['disk_limit'] = disk_limit(doc)
        if doc.get('network'):
            row['network'] = _mgr_address.describe(paths, doc)
        guests.append(row)
    if metrics:
        _add_metrics(paths, guests, docs)
    out = {'changed': False, 'guests': guests}
    if with_processes:
        # a guest with a broken config still labels its processes, by name (its xid is null if unreadable)
        labels = dict(docs)
        labels.update((name, {'name': name, 'xid': exc.xid}) for name, exc in broken.items())
        out['processes'] = _runtime_views.processes(paths, labels)
    return out


def _add_metrics(paths, rows, docs):
    from ansible_collections.vserver.core.plugins.module_utils import _runtime_metrics
    for row in rows:
        doc = docs.get(row['name']) or {'name': row['name'], 'xid': row.get('xid')}
        figures = _runtime_metrics.sample(paths, doc, state='broken' if row['state'] == 'broken' else None)
        row['metrics'] = dict((k, v) for k, v in figures.items() if k not in ('name', 'xid', 'state'))


def disk_limit(doc):
    """The guest's disk limit in bytes (its config's limits.disk), or None: its tree shares the host filesystem."""
    disk = (doc.get('limits') or {}).get('disk')
    return disk.get('size') if isinstance(disk, dict) else None


def broken_status(paths, name, broken):
    """The listing row of a guest whose config is unusable: state ``broken``, the problem in ``error``, and
    what the kernel says about its processes (``runtime_state``: running, frozen or stopped)."""
    row = _runtime.status(paths, {'name': name, 'xid': broken.xid})
    row.update(runtime_state=row['state'], state='broken', error=str(broken), config=broken.path)
    return row
