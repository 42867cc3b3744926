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
import shutil
import stat

from ansible_collections.vserver.core.plugins.module_utils import _config, _manager
from ansible_collections.vserver.core.plugins.module_utils._common import (
    HostLock, VServerError, check_name, write_json)  # noqa: F401

# Concern managers, each ``ensure(paths, params, check_mode) -> result`` (changed, actions, diff,
# restart_required). They are written by other parts of the collection; a guest that asks for a concern
# whose manager is missing fails with a clear message.
try:
    from ansible_collections.vserver.core.plugins.module_utils import _capabilities
except ImportError:  # pragma: no cover
    _capabilities = None
try:
    from ansible_collections.vserver.core.plugins.module_utils import _limits
except ImportError:  # pragma: no cover
    _limits = None
try:
    from ansible_collections.vserver.core.plugins.module_utils import _address
except ImportError:  # pragma: no cover
    _address = None

STATES = ('started', 'stopped', 'present', 'frozen', 'absent')
TEMPLATES = ('busybox', 'none', 'clone')
CONTEXT_KEYS = ('xid', 'root', 'hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout')
GUEST_KEYS = set(CONTEXT_KEYS) | {'name', 'state', 'template', 'clone_from', 'capabilities', 'limits', 'addresses',
                                  'network', 'autostart', 'purge', 'config'}
AUTOSTART_DIR = 'autostart'
FS_IOC_GETFLAGS = 0x80086601
FS_IMMUTABLE_FL = 0x10


def autostart_dir(paths):
    return os.path.join(paths.config_dir, AUTOSTART_DIR)


def _concern(name):
    module = {'capabilities': _capabilities, 'limits': _limits, 'network': _address}[name]
    if module is None or not hasattr(module, 'ensure'):
        raise VServerError('%s: this installation of vserver.core has no %s manager' % (name, name), name)
    return module.ensure


def validate(guests, prune=False):
    """Check the whole list before anything is touched."""
    if not isinstance(guests, list):
        raise VServerError('guests must be a list of dicts with at least a name', 'guests')
    seen = set()
    xids = {}
    out = []
    for index, raw in enumerate(guests):
        field = 'guests[%d]' % index
        if not isinstance(raw, dict) or 'name' not in raw:
            raise VServerError('%s must be a dict with at least a name (got %r)' % (field, raw), field)
        unknown = sorted(set(raw) - GUEST_KEYS)
        if unknown:
            raise VServerError('%s: unknown keys %s; accepted: %s' % (field, ', '.join(unknown),
                                                                       ', '.join(sorted(GUEST_KEYS))), field)
        name = check_name(raw['name'], field + '.name')
        if name in seen:
            raise VServerError('%s: guest %s is listed twice' % (field, name), field + '.name')
        seen.add(name)
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
        if spec.get('xid') is not None:
            xid = spec['xid']
            if xid in xids:
                raise VServerError('%s.xid %s is also given to guest %s' % (field, xid, xids[xid]), field + '.xid')
            xids[xid] = name
        if spec.get('addresses') is not None and not isinstance(spec['addresses'], list):
            spec['addresses'] = [spec['addresses']]
        for key in ('capabilities', 'limits', 'network'):
            if spec.get(key) is not None and not isinstance(spec[key], dict):
                raise VServerError('%s.%s must be a dict of that module\'s options' % (field, key), field + '.' + key)
        # context options are validated by the context manager itself (same messages as the module)
        ctx = {key: spec.get(key) for key in CONTEXT_KEYS}
        ctx.update(name=name, state='present', template='none' if spec['template'] == 'clone' else spec['template'])
        _manager.validate(ctx)
        out.append(spec)
    return out


def _is_immutable(path):
    import fcntl
    import struct
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return bool(struct.unpack('l', fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack('l', 0)))[0] & FS_IMMUTABLE_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def _copy_xattrs(src, dst):
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for attr in names:
        try:
            os.setxattr(dst, attr, os.getxattr(src, attr, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass


def clone_tree(src, dst):
    """util-vserver's clone: unified files (immutable, shared) are hardlinked, everything else is copied.

    Returns counts. ``dst`` must not exist; it is removed again if the copy fails half-way.
    """
    if os.path.lexists(dst):
        raise VServerError('clone target %s exists' % dst, 'root')
    counts = {'linked': 0, 'copied': 0}
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    try:
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            target_dir = dst if rel == '.' else os.path.join(dst, rel)
            st = os.lstat(dirpath)
            os.mkdir(target_dir, stat.S_IMODE(st.st_mode))
            for entry in dirnames + filenames:
                source = os.path.join(dirpath, entry)
                target = os.path.join(target_dir, entry)
                est = os.lstat(source)
                if stat.S_ISDIR(est.st_mode):
                    continue
                if stat.S_ISLNK(est.st_mode):
                    os.symlink(os.readlink(source), target)
                elif stat.S_ISREG(est.st_mode):
                    if est.st_nlink > 1 and _is_immutable(source):
                        os.link(source, target)
                        counts['linked'] += 1
                        continue
                    shutil.copyfile(source, target, follow_symlinks=False)
                    counts['copied'] += 1
                elif stat.S_ISFIFO(est.st_mode):
                    os.mkfifo(target, stat.S_IMODE(est.st_mode))
                else:  # device nodes, sockets: the guest's /dev is built at start; skip
                    continue
                os.lchown(target, est.st_uid, est.st_gid)
                if not stat.S_ISLNK(est.st_mode):
                    os.chmod(target, stat.S_IMODE(est.st_mode))
                _copy_xattrs(source, target)
                os.utime(target, ns=(est.st_atime_ns, est.st_mtime_ns), follow_symlinks=False)
        for dirpath, _, _ in os.walk(src, topdown=False):
            rel = os.path.relpath(dirpath, src)
            target_dir = dst if rel == '.' else os.path.join(dst, rel)
            st = os.lstat(dirpath)
            os.lchown(target_dir, st.st_uid, st.st_gid)
            _copy_xattrs(dirpath, target_dir)
            os.utime(target_dir, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return counts


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
    doc = dict(spec['config'])
    doc['name'] = spec['name']
    doc['root'] = spec.get('root') or paths.default_root(spec['name'])
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


def ensure_one(paths, spec, allow_restart=False, check_mode=False):
    """Context, then each concern, then the run state; one guest."""
    name = spec['name']
    actions = []
    diff_before, diff_after = {}, {}
    restart_required = False
    if spec['state'] == 'absent':
        res = _manager.ensure_context(paths, {'name': name, 'state': 'absent', 'purge': bool(spec.get('purge'))},
                                      check_mode)
        mark = _autostart(paths, name, False, check_mode) if os.path.exists(
            os.path.join(autostart_dir(paths), name)) else None
        actions.extend(res['actions'] + ([mark] if mark else []))
        return {'name': name, 'changed': bool(actions), 'actions': actions, 'restart_required': False,
                'diff': res.get('diff', {})}
    if spec.get('config'):
        step = _adopt(paths, spec, check_mode)
        if step:
            actions.append(step)
    template = spec['template']
    root = spec.get('root') or paths.default_root(name)
    if template == 'clone' and not os.path.exists(root):
        source = _config.load(paths, spec['clone_from'])
        if source is None and check_mode:
            source = {'root': None}  # the source may be created by this very run
        elif source is None:
            raise VServerError('clone_from: no such guest %s on this host' % spec['clone_from'], 'clone_from')
        actions.append('clone tree from %s' % spec['clone_from'])
        if not check_mode:
            clone_tree(source['root'], root)
        elif source['root'] is None or not os.path.isdir(source['root']):
            pass
    ctx = {key: spec.get(key) for key in CONTEXT_KEYS}
    ctx.update(name=name, state='present', template='none' if template == 'clone' else template)
    if template == 'clone':
        ctx['root'] = root
        if check_mode and not os.path.exists(root):
            ctx['template'] = 'busybox'  # the clone would exist here; only report
    res = _manager.ensure_context(paths, ctx, check_mode)
    actions.extend(a for a in res['actions'] if not (template == 'clone' and a.startswith('build tree')))
    diff_before['context'] = res.get('diff', {}).get('before')
    diff_after['context'] = res.get('diff', {}).get('after')
    exists = _config.load(paths, name) is not None
    sections = []
    if spec.get('capabilities') is not None:
        sections.append(('capabilities', dict(spec['capabilities'])))
    if spec.get('limits') is not None:
        sections.append(('limits', dict(spec['limits'])))
    if spec.get('addresses') is not None or spec.get('network') is not None:
        params = dict(spec.get('network') or {})
        if spec.get('addresses') is not None:
            params['addresses'] = spec['addresses']
        sections.append(('network', params))
    for concern, params in sections:
        if check_mode and not exists:
            actions.append('configure %s' % concern)  # new guest: every section will be written
            continue
        params['name'] = name
        params.setdefault('state', 'present')
        res = _concern(concern)(paths, params, check_mode)
        if res.get('changed'):
            actions.extend('%s: %s' % (concern, a) for a in res.get('actions') or ['update'])
            diff_before[concern] = res.get('diff', {}).get('before')
            diff_after[concern] = res.get('diff', {}).get('after')
        restart_required = restart_required or bool(res.get('restart_required'))
    mark = _autostart(paths, name, spec.get('autostart'), check_mode)
    if mark:
        actions.append(mark)
    state = spec['state']
    if restart_required and state == 'started' and allow_restart:
        state = 'restarted'
        restart_required = False
    if exists or not check_mode:
        res = _manager.ensure_context(paths, {'name': name, 'state': state}, check_mode)
        actions.extend(a for a in res['actions'] if a not in ('update config',))
        after = res.get('diff', {}).get('after') or {}
        diff_after.setdefault('context', {})
        if isinstance(diff_after['context'], dict):
            diff_after['context'] = dict(diff_after['context'], state=after.get('state'))
        restart_required = restart_required or bool(res.get('restart_required'))
    elif state in ('started', 'frozen'):
        actions.append('start')
    return {'name': name, 'changed': bool(actions), 'actions': actions, 'restart_required': restart_required,
            'diff': {'before': diff_before, 'after': diff_after}}


def ensure(paths, params, check_mode=False):
    """The ``guests`` module: every listed guest, then (with ``prune``) remove the unlisted ones."""
    specs = validate(params.get('guests') or [])
    allow_restart = bool(params.get('allow_restart'))
    prune = bool(params.get('prune'))
    results = []
    # Each manager takes the host lock itself (flock is per open file: nesting would deadlock).
    # Clones after their sources.
    ordered = [s for s in specs if s['template'] != 'clone'] + [s for s in specs if s['template'] == 'clone']
    for spec in ordered:
        results.append(ensure_one(paths, spec, allow_restart, check_mode))
    if prune:
        listed = {s['name'] for s in specs}
        for name in _config.names(paths):
            if name not in listed:
                results.append(ensure_one(paths, {'name': name, 'state': 'absent', 'template': 'none',
                                                  'purge': bool(params.get('purge_pruned'))}, False, check_mode))
    changed = [r for r in results if r['changed']]
    return {
        'changed': bool(changed),
        'guests': {r['name']: {k: r[k] for k in ('changed', 'actions', 'restart_required')} for r in results},
        'actions': ['%s: %s' % (r['name'], a) for r in results for a in r['actions']],
        'restart_required': sorted(r['name'] for r in results if r['restart_required']),
        'diff': {'before': {r['name']: r['diff'].get('before') for r in changed},
                 'after': {r['name']: r['diff'].get('after') for r in changed}},
    }
