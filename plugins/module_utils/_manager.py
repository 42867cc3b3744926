# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the desired-state managers behind the context and context_info modules
and the ``vserver`` command. Read the real state, compute the difference, act unless in check mode."""

from __future__ import annotations

import os
import re
import shutil

from ansible_collections.vserver.core.plugins.module_utils import _config, _context, _kernel as K, _template
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
    return _context.signal_name(_context.parse_signal(value))


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
        out['stop_timeout'] = _context.parse_stop_timeout(params['stop_timeout'])
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


def _observed_state(state):
    return {'running': 'started', 'frozen': 'frozen', 'stopped': 'stopped', 'broken': 'broken'}[state]


def _clear_immutable(path):
    """Clear the immutable/append-only flags (unified files are immutable) so a purge can remove them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        flags = K.get_flags(fd)
        both = K.FS_IMMUTABLE_FL | K.FS_APPEND_FL
        if flags & both:
            K.set_flags(fd, flags & ~both)
    except OSError:
        pass
    finally:
        os.close(fd)


def purge_tree(root):
    def onerror(func, path, _exc):
        _clear_immutable(path)
        _clear_immutable(os.path.dirname(path))
        func(path)
    if os.path.ismount(root):
        raise VServerError('root %s is a mount point; unmount it (or remove its disk limit) before purge' % root,
                           'purge')
    shutil.rmtree(root, onerror=onerror)


def ensure_context(paths, params, check_mode=False):
    """Bring one guest to the requested state. Returns a module result (changed, actions, diff, guest...)."""
    opts = validate(params)
    name = opts['name']
    actions = []
    with HostLock(paths):
        current = _config.load(paths, name)
        rt = _context.Runtime(paths, name)
        running_state = rt.state()
        before = _view(current, _observed_state(running_state) if current else 'absent')
        result = {'changed': False, 'actions': actions, 'restart_required': False}

        if opts['state'] == 'absent':
            if current is None and not rt.leftovers():
                result['diff'] = {'before': before, 'after': before}
                return result
            if running_state != 'stopped' or rt.leftovers():
                actions.append('stop')
            actions.append('remove config')
            if opts['purge'] and current and os.path.isdir(current.get('root', '')):
                actions.append('purge tree %s' % current['root'])
            if not check_mode:
                if current is not None:
                    _context.stop(paths, current)
                else:
                    _context.cleanup(paths, name)
                _context.load_hooks()
                for hook in _context.HOOKS['absent']:
                    hook(paths, current)
                _config.remove(paths, name)
                if opts['purge'] and current and os.path.isdir(current.get('root', '')):
                    purge_tree(current['root'])
            result.update(changed=True, diff={'before': before, 'after': {'state': 'absent'}})
            return result

        doc = _desired(paths, opts, current)
        root = doc['root']
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
            if any(doc.get(k) != current.get(k) for k in ('hostname', 'domainname')):
                live_uts = True
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
            result['guest'] = _context.status(paths, doc) if current else {'name': name, 'state': 'absent'}
            return result

        built = False
        warnings = []
        try:
            if build:
                os.makedirs(os.path.dirname(root), mode=0o700, exist_ok=True)
                _template.build_busybox(root, doc.get('hostname') or name)
                built = True
            if config_changed:
                _config.save(paths, doc)
            for step in plan:
                if step == 'stop':
                    warnings.extend(_context.stop(paths, current or doc))
                elif step == KILL_UNTRACKED:
                    _context.cleanup(paths, name)
                elif step == 'start':
                    _context.start(paths, doc)
                elif step == 'freeze':
                    _context.freeze(paths, doc)
                elif step == 'thaw':
                    _context.thaw(paths, doc)
                elif step == 'set hostname':
                    _context.set_uts(paths, doc)
        except BaseException:
            if current is None:  # roll back what this run created
                _config.remove(paths, name)
                if built:
                    purge_tree(root)
            raise
        result['guest'] = _context.status(paths, doc)
        if warnings:
            result['warnings'] = warnings
        return result


def info(paths, names=None, with_processes=True):
    """Facts about all (or the named) guests and, optionally, the spectator view of every process."""
    docs = _config.load_all(paths)
    if names:
        for name in names:
            check_name(name, 'names')
        missing = [n for n in names if n not in docs]
        if missing:
            raise VServerError('names: no such guest: %s' % ', '.join(missing), 'names')
        selected = {n: docs[n] for n in names}
    else:
        selected = docs
    guests = []
    for dummy, doc in sorted(selected.items()):
        row = _context.status(paths, doc)
        if doc.get('network'):
            from ansible_collections.vserver.core.plugins.module_utils import _netns
            row['network'] = _netns.describe(paths, doc)
        guests.append(row)
    out = {'changed': False, 'guests': guests}
    if with_processes:
        out['processes'] = _context.processes(paths, docs)
    return out
