# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: many guests in one call (the ``guests`` module behind the ``guest`` role).

One Ansible task per option per guest costs ~0.3 s each; a host with 50 guests and five concerns would
spend minutes doing nothing on an idempotent re-run. Here each guest's concerns (context, capabilities,
limits, addresses, autostart mark) go through the very same managers the single-purpose modules use, in
one process. Nothing is computed twice: this file only orders the calls.
"""

from __future__ import annotations

import errno
import os
import stat

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _config, _runtime, _kernel as K, _mgr_context, _template)
from ansible_collections.vserver.core.plugins.module_utils._common import (
    HostLock, VServerError, check_name, write_error, write_fully, write_json)

# Concern managers, each ``ensure(paths, params, check_mode) -> result`` (changed, actions, diff,
# restart_required). They are written by other parts of the collection; a guest that asks for a concern
# whose manager is missing fails with a clear message.
try:
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_capabilities as _caps
except ImportError:  # pragma: no cover
    _caps = None
try:
    from ansible_collections.vserver.core.plugins.module_utils import _limits
except ImportError:  # pragma: no cover
    _limits = None
try:
    from ansible_collections.vserver.core.plugins.module_utils import _netns
except ImportError:  # pragma: no cover
    _netns = None

STATES = ('started', 'stopped', 'present', 'frozen', 'absent')
TEMPLATES = ('busybox', 'none', 'clone')
CONTEXT_KEYS = ('xid', 'root', 'hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout')
GUEST_KEYS = set(CONTEXT_KEYS) | {'name', 'state', 'template', 'clone_from', 'capabilities', 'limits', 'addresses',
                                  'network', 'autostart', 'purge', 'config', 'files', 'root_password_hash',
                                  'root_authorized_keys'}
AUTOSTART_DIR = 'autostart'
# the single-purpose modules' option defaults, so a guest entry means the same as those modules' tasks
CAPS_DEFAULTS = {'bcaps': None, 'bcaps_add': None, 'bcaps_drop': None, 'ccaps': None, 'no_new_privs': False}
LIMITS_DEFAULTS = {'memory': None, 'memory_high': None, 'swap': None, 'nproc': None, 'cpu': None, 'cpu_weight': None,
                   'cpuset': None, 'io': None, 'rlimits': None, 'disk': None, 'disk_backend': 'auto',
                   'disk_fstype': 'ext4'}


def autostart_dir(paths):
    return os.path.join(paths.config_dir, AUTOSTART_DIR)


def _concern(concern):
    """``ensure`` of a concern's manager as f(paths, name, params, check_mode)."""
    module = {'capabilities': _caps, 'limits': _limits, 'network': _netns}[concern]
    if module is None or not hasattr(module, 'ensure'):
        raise VServerError('%s: this installation of vserver.core has no %s manager' % (concern, concern), concern)
    import inspect
    args = list(inspect.signature(module.ensure).parameters)
    if len(args) > 1 and args[1] == 'name':
        if 'replace' not in args:
            return module.ensure

        def whole(paths, name, params, check_mode):
            # a guest entry is the whole desired section: a key removed from it is lifted (docs/roles.md)
            result = module.ensure(paths, name, params, check_mode, replace=True)
            return result.to_dict() if hasattr(result, 'to_dict') else result  # a _result.Result
        return whole

    def by_params(paths, name, params, check_mode):
        return module.ensure(paths, dict(params, name=name), check_mode)
    return by_params


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
            raise VServerError('%s: unknown keys %s; accepted: %s'
                               % (field, ', '.join(unknown), ', '.join(sorted(GUEST_KEYS))), field)
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
        files = spec.get('files') or {}
        if not isinstance(files, dict):
            raise VServerError('%s.files must be a dict of absolute guest paths to contents' % field, field + '.files')
        for fpath, value in files.items():
            _check_guest_path(fpath, '%s.files' % field)
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
        # context options are validated by the context manager itself (same messages as the module)
        ctx = {key: spec.get(key) for key in CONTEXT_KEYS}
        ctx.update(name=name, state='present', template='none' if spec['template'] == 'clone' else spec['template'])
        _mgr_context.validate(ctx)
        out.append(spec)
    return out


# The source tree is the guest's: every object of it is opened relative to its parent directory's fd with
# O_NOFOLLOW and then checked and read through that fd (never looked up again by path). The destination is the
# fresh build sibling (mode 0700, reachable by no guest), so names relative to its directory fds are safe there.
SRC_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DEPTH = 256
LINK_BATCH = 64  # unified files linked under one freeze of every guest


def _copy_meta(src_fd, dst_fd, st):
    """Owner, mode (after the owner: chown clears set-id bits), xattrs and times, all by fd."""
    os.fchown(dst_fd, st.st_uid, st.st_gid)
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src_fd)
    except OSError:
        names = []
    for attr in names:
        try:
            os.setxattr(dst_fd, attr, os.getxattr(src_fd, attr))
        except OSError:
            pass
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_bytes(src_fd, dst_fd, size):
    """At most ``size`` bytes (the size seen at open: a file the guest keeps growing cannot make this endless)."""
    done = 0
    while done < size:
        try:
            count = os.copy_file_range(src_fd, dst_fd, size - done)
        except (OSError, AttributeError):  # another filesystem pair, or Python < 3.8
            count = 0
        if count == 0:
            chunk = os.read(src_fd, min(1 << 20, size - done))
            if not chunk:
                break
            _write_all(dst_fd, chunk)
            count = len(chunk)
        done += count


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _link_unified(fd, name, dfd, flags):
    """Hardlink the inode open as ``fd`` (exactly that one, through /proc/self/fd) into the build directory.
    link(2) refuses an immutable inode: the flag is cleared on that fd around the link, as unification does."""
    K.set_flags(fd, flags & ~K.FS_IMMUTABLE_FL)
    try:
        os.link('/proc/self/fd/%d' % fd, name, dst_dir_fd=dfd, follow_symlinks=True)
    finally:
        K.set_flags(fd, flags)


def _is_unified(fd, st):
    """Hardlinked into the clone only: a regular file with more than one link and the immutable flag. A guest
    cannot set that flag (linux_immutable is outside every guest's bounding set), so only the host's unification
    made it so: any other multiply-linked inode (a host file hardlinked into the tree, a guest's own hardlinks)
    is copied, never shared with the clone."""
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return None
    try:
        flags = K.get_flags(fd)
    except OSError:
        return None
    return flags if flags & K.FS_IMMUTABLE_FL else None


def clone_tree(src, dst, pause=None, paths=None):
    """util-vserver's clone: unified files (immutable, shared) are hardlinked, everything else is copied.

    Returns counts. ``dst`` must not exist. The copy is made in a build sibling of ``dst`` and renamed onto it
    when complete (removed again if the copy fails half-way); hold the host lock, which covers the siblings.
    The source is walked by fd (O_NOFOLLOW on every component): a guest swapping a directory for a symlink
    while this runs can change what is copied, never make the host read, link or change anything outside its
    tree. Clone a running source frozen (``FrozenSource``) so the copy is one consistent view. ``pause`` (a
    context manager factory, ``AllGuestsFrozen``) is entered around each batch of links of unified files: the
    immutable flag is off for those link(2) calls only, while no guest process runs."""
    if os.path.lexists(dst):
        raise VServerError('clone target %s exists' % dst, 'root')
    counts = {'linked': 0, 'copied': 0}
    build = _template.new_build_dir(dst)
    try:
        try:
            sfd = os.open(src, DIR_OPEN)
        except OSError as exc:
            raise VServerError('clone_from: cannot open the source tree %s: %s' % (src, exc.strerror),
                               'clone_from') from exc
        try:
            dfd = os.open(build, DIR_OPEN)
            linked = []
            try:
                _copy_dir(sfd, dfd, counts, linked, 0, pause)
                _copy_meta(sfd, dfd, os.fstat(sfd))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        _check_no_writer(linked)
        _template.install_build(build, dst)
    except BaseException:
        try:
            _mgr_context.remove_build(build, paths)  # with paths: shared files are unlinked with the guests frozen
        except (OSError, VServerError):
            pass  # the next run under the lock removes it
        raise
    return counts


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


def _check_no_writer(linked):
    """The immutable flag of a linked inode was off for the link(2) only; a process that opened it for writing
    in that instant keeps a writable fd on a file every sharer runs: refuse the clone then (checked once)."""
    if not linked:
        return
    from ansible_collections.vserver.core.plugins.module_utils import _unify
    held = set(linked) & _unify.open_for_write()
    if held:
        raise VServerError('clone: %d shared (unified) file(s) were opened for writing while being linked '
                           '(inodes %s); the clone is not made' % (len(held), sorted(i for _d, i in held)),
                           'clone_from')


def _copy_dir(sfd, dfd, counts, linked, depth, pause):
    if depth > MAX_DEPTH:
        raise VServerError('clone: the source tree is deeper than %d directories' % MAX_DEPTH, 'clone_from')
    batch = []  # unified files of this directory, open, linked together under one pause
    try:
        for name in os.listdir(sfd):
            try:
                _copy_entry(sfd, dfd, name, counts, linked, depth, pause, batch)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone or swapped since listed (only when the source runs): not copied
            if len(batch) >= LINK_BATCH:
                _link_batch(batch, dfd, counts, linked, pause)
        _link_batch(batch, dfd, counts, linked, pause)
    finally:
        for fd, _name, _flags, _st in batch:
            os.close(fd)


def _link_batch(batch, dfd, counts, linked, pause):
    if not batch:
        return
    with (pause() if pause else _NoPause()):
        for fd, name, flags, st in batch:
            _link_unified(fd, name, dfd, flags)
            linked.append((st.st_dev, st.st_ino))
            counts['linked'] += 1
    for fd, _name, _flags, _st in batch:
        os.close(fd)
    del batch[:]


class _NoPause:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _copy_entry(sfd, dfd, name, counts, linked, depth, pause, batch):
    st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=sfd)
        except OSError:
            return  # no longer a symlink
        os.symlink(target, name, dir_fd=dfd)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        return
    if stat.S_ISFIFO(st.st_mode):
        os.mkfifo(name, 0o600, dir_fd=dfd)
        fd = os.open(name, SRC_OPEN, dir_fd=dfd)  # the build's own FIFO: never blocks with O_NONBLOCK
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return  # device nodes, sockets: the guest's /dev is built at start; skip
    try:
        fd = os.open(name, SRC_OPEN, dir_fd=sfd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return  # swapped for a symlink or a socket since listed
        raise
    try:
        st = os.fstat(fd)  # from here on: the object opened, whatever the name means now
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            cfd = os.open(name, DIR_OPEN, dir_fd=dfd)
            try:
                _copy_dir(fd, cfd, counts, linked, depth + 1, pause)
                _copy_meta(fd, cfd, st)
            finally:
                os.close(cfd)
        elif stat.S_ISREG(st.st_mode):
            flags = _is_unified(fd, st)
            if flags is not None:
                batch.append((fd, name, flags, st))  # linked (and closed) with its directory's batch
                fd = None
                return
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                _copy_bytes(fd, out, st.st_size)
                _copy_meta(fd, out, st)
            finally:
                os.close(out)
            counts['copied'] += 1
    finally:
        if fd is not None:
            os.close(fd)


def _check_guest_path(path, field):
    if not isinstance(path, str) or not path.startswith('/') or '\x00' in path or \
            any(part in ('..', '.') for part in path.split('/')[1:]) or path.endswith('/'):
        raise VServerError('%s: %r must be an absolute file path inside the guest without "." or ".."'
                           % (field, path), field)


def _open_dir_in_tree(root, parts, create=False):
    """fd of directory root/parts..., resolving every component with O_NOFOLLOW: a symlink the guest planted
    cannot lead the host's write outside the tree."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o700 if part == '.ssh' else 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as exc:
        os.close(fd)
        why = 'a symlink or not a directory there is never followed' if exc.errno in (
            errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise VServerError('cannot reach %s/%s inside the guest tree safely: %s' % (root, '/'.join(parts), why),
                           'files')
    return fd


MAX_MANAGED_READ = 4 << 20  # a managed file (or /etc/shadow) larger than this is not read, and is replaced


def read_in_tree(root, path):
    """(bytes, mode) of the regular file ROOT/PATH, or (None, None) when it is absent or not a regular file.
    Never blocks (O_NONBLOCK: a FIFO the guest planted is opened and refused, not waited on) and never reads
    more than MAX_MANAGED_READ (a larger file reads as absent, so it is replaced)."""
    parts = path.strip('/').split('/')
    try:
        dfd = _open_dir_in_tree(root, parts[:-1])
    except (VServerError, FileNotFoundError):
        return None, None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None, None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANAGED_READ:
            return None, None
        chunks, size = [], 0
        while size <= MAX_MANAGED_READ:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b''.join(chunks), stat.S_IMODE(st.st_mode)
            chunks.append(chunk)
            size += len(chunk)
        return None, None  # grew past the cap while read
    finally:
        os.close(fd)


def write_in_tree(root, path, data, mode):
    """Atomically replace ROOT/PATH (no symlink followed anywhere), owned by root: every byte written and the
    size checked, fsync, rename, fsync of the directory. The temp file has a random name created with O_EXCL
    (whatever the guest planted there, a name that exists is never used: another is drawn). On failure the old
    file stays, the temp file is removed and VServerError names the file."""
    import secrets
    parts = path.strip('/').split('/')
    dfd = _open_dir_in_tree(root, parts[:-1], create=True)
    tmp = None
    try:
        for _attempt in range(16):
            name = '.%s.vserver-%s' % (parts[-1][:200], secrets.token_hex(8))
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dfd)
            except FileExistsError:
                continue
            tmp = name
            break
        else:
            raise OSError(errno.EEXIST, 'no free temp name in 16 tries')
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
            write_fully(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        tmp = None
        os.fsync(dfd)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        raise write_error(os.path.join(root, path.lstrip('/')), exc) from exc
    finally:
        os.close(dfd)


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
        current, mode = read_in_tree(root, '/etc/shadow')
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
        current, current_mode = read_in_tree(root, fpath)
        if current == data and current_mode == mode:
            continue
        actions.append('write %s' % fpath)
        if not check_mode:
            write_in_tree(root, fpath, data, mode)
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


def ensure_one(paths, spec, allow_restart=False, check_mode=False, actions=None):
    """Context, then each concern, then the run state; one guest. ``actions`` (a list) collects what was done,
    also when a later step fails."""
    name = spec['name']
    actions = [] if actions is None else actions
    diff_before, diff_after = {}, {}
    restart_required = False
    if spec['state'] == 'absent':
        res = _mgr_context.ensure_context(paths, {'name': name, 'state': 'absent', 'purge': bool(spec.get('purge'))},
                                      check_mode)
        mark = _autostart(paths, name, False, check_mode) if os.path.exists(
            os.path.join(autostart_dir(paths), name)) else None
        actions.extend(res['actions'] + ([mark] if mark and mark not in res['actions'] else []))  # purge: done
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
            with HostLock(paths):  # the build sibling is swept by runs holding the lock
                for stale in _template.stale_builds(root):
                    _mgr_context.remove_build(stale, paths)
                with FrozenSource(paths, spec['clone_from']):
                    clone_tree(source['root'], root, pause=lambda: AllGuestsFrozen(paths), paths=paths)
    ctx = {key: spec.get(key) for key in CONTEXT_KEYS}
    ctx.update(name=name, state='present', template='none' if template == 'clone' else template)
    if template == 'clone':
        ctx['root'] = root
    if check_mode and template in ('clone', 'none') and _template.tree_is_empty(root):
        # the clone (or the role's bootstrap, skipped in check mode) would have made the tree: only report
        ctx['template'] = 'busybox'
    res = _mgr_context.ensure_context(paths, ctx, check_mode)
    actions.extend(a for a in res['actions'] if not (template in ('clone', 'none') and a.startswith('build tree')))
    restart_required = bool(res.get('restart_required'))  # root or init changed under a running guest
    diff_before['context'] = res.get('diff', {}).get('before')
    diff_after['context'] = res.get('diff', {}).get('after')
    doc = _config.load(paths, name)
    exists = doc is not None
    if exists and os.path.isdir(doc.get('root') or ''):
        actions.extend(_files(doc['root'], spec, check_mode))
    elif spec.get('files') or spec.get('root_password_hash') or spec.get('root_authorized_keys') is not None:
        actions.append('write guest files')
    sections = []
    if spec.get('capabilities') is not None:
        sections.append(('capabilities', dict(CAPS_DEFAULTS, **spec['capabilities'])))
    if spec.get('limits') is not None:
        sections.append(('limits', dict(LIMITS_DEFAULTS, **spec['limits'])))
    if spec.get('addresses') is not None or spec.get('network') is not None:
        params = dict(spec.get('network') or {})
        if spec.get('addresses') is not None:
            params['addresses'] = spec['addresses']
        sections.append(('network', params))
    for concern, params in sections:
        if check_mode and not exists:
            actions.append('configure %s' % concern)  # new guest: every section will be written
            continue
        if concern == 'network':
            params.setdefault('state', 'present')
            params.setdefault('exclusive', True)  # the list is the guest's whole set of addresses
        res = _concern(concern)(paths, name, params, check_mode)
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
    observed = _runtime.Runtime(paths, name).state() if exists else None
    in_state = (('started', 'running'), ('frozen', 'frozen'), ('stopped', 'stopped'), ('present', observed))
    if exists and not restart_required and (state, observed) in in_state:
        pass  # already in the requested run state: no second pass through the context manager
    elif exists or not check_mode:
        res = _mgr_context.ensure_context(paths, {'name': name, 'state': state}, check_mode)
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
