# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the desired-state managers behind the context and context_info modules
and the ``vserver`` command. Read the real state, compute the difference, act unless in check mode."""

from __future__ import annotations

import os
import re

from ansible_collections.vserver.core.plugins.module_utils import (
    _config, _mgr_unify, _runtime, _kernel as K, _template, _tree)
from ansible_collections.vserver.core.plugins.module_utils._common import (
    HostLock, VServerError, check_name, check_xid)

STATES = ('present', 'started', 'stopped', 'restarted', 'frozen', 'absent')
TEMPLATES = ('busybox', 'none')
CONTEXT_KEYS = ('name', 'xid', 'root', 'hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout')
# Changing these on a running guest needs a restart; hostname/domainname apply live, xid is a label.
RESTART_KEYS = ('root', 'init')
HOSTNAME_RE = re.compile(r'^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
                         r'(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$')
DEFAULT_INIT = ['/sbin/init']
KILL_UNTRACKED = 'kill untracked processes'
REFUSED_ROOTS = ('/', '/bin', '/boot', '/dev', '/etc', '/home', '/lib', '/lib64', '/proc', '/root', '/run', '/sbin',
                 '/sys', '/tmp', '/usr', '/var', '/var/lib')


def _check_signal(value):
    """A stop signal in its canonical stored form (SIGTERM, SIGRTMIN+3); numbers and aliases are normalised."""
    return _runtime.signal_name(_runtime.parse_signal(value))


def _check_init(value):
    if value is None:
        return None
    argv = [value] if isinstance(value, str) else list(value)
    if not argv or not all(isinstance(a, str) and a for a in argv) or not argv[0].startswith('/'):
        raise VServerError('init must be an absolute path inside the guest or an argv list starting with one '
                           '(got %r)' % (value,), 'init')
    if '\x00' in ''.join(argv):
        raise VServerError('init must not contain NUL bytes', 'init')
    return argv


def _check_root(value):
    if value is None:
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise VServerError('root must be an absolute path (got %r)' % (value,), 'root')
    norm = os.path.normpath(value)
    if norm in REFUSED_ROOTS:
        raise VServerError('root must be a dedicated directory for the guest, not %s' % norm, 'root')
    return norm


def validate(params):
    """Check every context option before anything is touched; return normalized values."""
    out = {'name': check_name(params.get('name'))}
    state = params.get('state') or 'present'
    if state not in STATES:
        raise VServerError('state must be one of %s (got %r)' % (', '.join(STATES), state), 'state')
    out['state'] = state
    template = params.get('template') or 'busybox'
    if template not in TEMPLATES:
        raise VServerError('template must be one of %s (got %r)' % (', '.join(TEMPLATES), template), 'template')
    out['template'] = template
    if params.get('xid') is not None:
        out['xid'] = check_xid(params['xid'])
    out['root'] = _check_root(params.get('root'))
    for key in ('hostname', 'domainname'):
        value = params.get(key)
        if value is not None and not HOSTNAME_RE.match(value):
            raise VServerError('%s must be a DNS name of letters, digits, "-" and "." (at most 64 characters, '
                               'got %r)' % (key, value), key)
        out[key] = value
    out['init'] = _check_init(params.get('init'))
    if params.get('stop_signal') is not None:
        out['stop_signal'] = _check_signal(params['stop_signal'])
    if params.get('stop_timeout') is not None:
        out['stop_timeout'] = _runtime.parse_stop_timeout(params['stop_timeout'])
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
    for key in ('hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout'):
        if opts.get(key) is not None:
            doc[key] = opts[key]
    doc.setdefault('init', list(DEFAULT_INIT))
    doc.setdefault('stop_signal', 'SIGTERM')
    doc.setdefault('stop_timeout', 10)
    return doc


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


def purge_tree(root, paths=None):
    """Delete a stopped guest's tree (``_tree.purge_tree``), the running guests frozen around shared unlinks."""
    _tree.purge_tree(root, freezer=lambda: _mgr_unify.freezer(paths))


def remove_build(build, paths=None):
    """Remove an unfinished build sibling (``_tree.remove_build``), the running guests frozen likewise."""
    _tree.remove_build(build, freezer=lambda: _mgr_unify.freezer(paths))


def _absent(paths, opts, current, rt, running_state, result, check_mode):
    """state=absent: stop, the concerns' absent hooks, (purge: mark the config ``purging``, delete the tree,
    the guest's log and its autostart mark), remove the config. The config goes last, so a run killed at any
    point leaves something a re-run finds and finishes: a config marked ``purging`` is purged again even without
    purge=true."""
    name = opts['name']
    actions = result['actions']
    root = (current or {}).get('root') or paths.default_root(name)
    purge = current is not None and bool(opts['purge'] or current.get('purging')) and os.path.isdir(root)
    builds = _template.stale_builds(root)
    leftovers = rt.leftovers()
    before = result['diff']['before']
    if current is None and not leftovers and not builds:
        result['diff'] = {'before': before, 'after': before}
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
        _runtime.load_hooks()
        for hook in _runtime.HOOKS['absent']:
            hook(paths, current)
        if purge:
            if not current.get('purging'):
                _config.save(paths, dict(current, purging=True))
            purge_tree(root, paths)
        for leftover in leftover_files:
            _unlink_quietly(leftover)
        if current is not None:
            _config.remove(paths, name)
    result.update(changed=True, diff={'before': before, 'after': {'state': 'absent'}})
    return result


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _ensure_broken(paths, opts, broken, check_mode):
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
    result = {'changed': bool(actions), 'actions': actions, 'restart_required': False, 'warnings': [warning],
              'diff': {'before': before, 'after': after}}
    if not check_mode:
        if running:
            _runtime.stop(paths, {'name': name})
        if opts['state'] == 'absent':
            _runtime.load_hooks()
            for hook in _runtime.HOOKS['absent']:
                hook(paths, None)
            _config.remove(paths, name)
    if opts['state'] == 'stopped':
        result['guest'] = broken_status(paths, name, broken)
    return result


def ensure_context(paths, params, check_mode=False):
    """Bring one guest to the requested state. Returns a module result (changed, actions, diff, guest...)."""
    opts = validate(params)
    name = opts['name']
    actions = []
    with HostLock(paths):
        try:
            current = _config.load(paths, name)
        except _config.BrokenConfig as exc:
            if opts['state'] not in ('stopped', 'absent'):
                raise VServerError('%s; repair or remove that file (state=absent removes the guest and its '
                                   'config, keeping its tree) before state=%s' % (exc, opts['state']), 'name')
            return _ensure_broken(paths, opts, exc, check_mode)
        rt = _runtime.Runtime(paths, name)
        running_state = rt.state()
        before = _view(current, _observed_state(running_state) if current else 'absent')
        result = {'changed': False, 'actions': actions, 'restart_required': False,
                  'diff': {'before': before, 'after': before}}

        if opts['state'] == 'absent':
            return _absent(paths, opts, current, rt, running_state, result, check_mode)
        if current is not None and current.get('purging'):
            raise VServerError('guest %s was being purged when a run stopped half-way (its tree may be partly '
                               'deleted); finish with state absent, then create it again' % name, 'state')

        doc = _desired(paths, opts, current)
        root = doc['root']
        builds = _template.stale_builds(root)  # a killed build's sibling: never a tree, removed under the lock
        actions.extend('remove unfinished build %s' % b for b in builds)
        build = False
        if _template.tree_is_empty(root):
            if opts['template'] == 'none':
                raise VServerError('root %s does not exist or is empty and template is none: give an existing '
                                   'guest tree or use template: busybox' % root, 'root')
            build = True
        elif not os.path.isdir(root):
            raise VServerError('root %s exists and is not a directory' % root, 'root')
        elif not os.path.lexists(os.path.join(root, doc['init'][0].lstrip('/'))):
            raise VServerError('init %s does not exist in the guest tree %s' % (doc['init'][0], root), 'init')
        if build:
            _template.find_busybox()  # fail early, before anything is written
        config_changed = doc != current
        if build:
            actions.append('build tree %s from template %s' % (root, opts['template']))
        if config_changed:
            actions.append('create config' if current is None else 'update config')

        target = opts['state']
        live_uts = False
        live = running_state in ('running', 'frozen')
        if live and current is not None:
            if any(doc.get(k) != current.get(k) for k in RESTART_KEYS):
                result['restart_required'] = target != 'restarted'
            # against the kernel, not the config: a run killed after the config was saved converges on the next
            live_uts = _uts_wanted(doc) != _live_uts(rt)
        plan = []
        if target == 'restarted':
            plan = (['stop'] if running_state != 'stopped' else []) + ['start']
        elif target == 'started':
            plan = {'stopped': ['start'], 'frozen': ['thaw'], 'running': [], 'broken': [KILL_UNTRACKED, 'start']}[
                running_state]
        elif target == 'stopped':  # also clears what an init that died on its own (or a killed start) left behind
            plan = [] if running_state == 'stopped' and not rt.leftovers() else ['stop']
        elif target == 'frozen':
            plan = {'stopped': ['start', 'freeze'], 'running': ['freeze'], 'frozen': [],
                    'broken': [KILL_UNTRACKED, 'start', 'freeze']}[running_state]
        if live_uts and 'stop' not in plan and live:
            plan.insert(0, 'set hostname')
        repairs = []
        if live and target in ('started', 'frozen'):  # runtime state a killed run left wrong
            proc_fd = rt.open_init()
            if proc_fd is not None:
                try:
                    repairs = rt.repairs(proc_fd)
                    if repairs and not check_mode:
                        rt.repair(proc_fd, repairs)
                finally:
                    os.close(proc_fd)
        actions.extend(repairs + plan)

        after_state = {'present': _observed_state(running_state), 'restarted': 'started'}.get(target, target)
        result['diff'] = {'before': before, 'after': _view(doc, after_state)}
        result['changed'] = bool(actions)
        if check_mode or not actions:
            result['guest'] = _runtime.status(paths, doc) if current else {'name': name, 'state': 'absent'}
            return result

        built = False
        warnings = []
        try:
            for stale in builds:
                remove_build(stale, paths)
            if build:
                os.makedirs(os.path.dirname(root), mode=0o700, exist_ok=True)
                _template.build_busybox(root, doc.get('hostname') or name)
                built = True
            if 'set hostname' in plan:  # live first, then the config (undone if the config cannot be saved)
                old_uts = _live_uts(rt)
                _runtime.set_uts(paths, doc)
                plan.remove('set hostname')
                try:
                    _config.save(paths, doc)
                except BaseException as exc:
                    _undo_uts(paths, doc, old_uts, exc)
                    raise
            elif config_changed:
                _config.save(paths, doc)
            for step in plan:
                if step == 'stop':
                    warnings.extend(_runtime.stop(paths, current or doc))
                elif step == KILL_UNTRACKED:
                    _runtime.cleanup(paths, name)
                elif step == 'start':
                    _runtime.start(paths, doc)
                elif step == 'freeze':
                    _runtime.freeze(paths, doc)
                elif step == 'thaw':
                    _runtime.thaw(paths, doc)
                elif step == 'set hostname':
                    _runtime.set_uts(paths, doc)
        except BaseException:
            if current is None:  # roll back what this run created
                _config.remove(paths, name)
                if built:
                    purge_tree(root, paths)
            raise
        result['guest'] = _runtime.status(paths, doc)
        if warnings:
            result['warnings'] = warnings
        return result


def info(paths, names=None, with_processes=True):
    """Facts about all (or the named) guests and, optionally, the spectator view of every process."""
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
            from ansible_collections.vserver.core.plugins.module_utils import _netns
            row['network'] = _netns.describe(paths, doc)
        guests.append(row)
    out = {'changed': False, 'guests': guests}
    if with_processes:
        # a guest with a broken config still labels its processes, by name (its xid is null if unreadable)
        labels = dict(docs)
        labels.update((name, {'name': name, 'xid': exc.xid}) for name, exc in broken.items())
        out['processes'] = _runtime.processes(paths, labels)
    return out


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
