# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: unification -- share identical files across guest trees (floor 3, a concern).

This file holds the options (``ARGUMENT_SPEC``, ``DEFAULTS``, ``validate``), which guests a run reads and
changes (``select``), and the plan: which inodes are candidates, which become one, which get the immutable
flag, each decision a typed step (``LinkStep``, ``ReflinkStep``, ``ProtectStep``, ``Skip``). The manager
(``_mgr_unify.ensure``) runs the phases:

scan    walk each guest tree with lstat only (``_walk``: directories opened one component at a time with
        O_NOFOLLOW, every later operation relative to those fds, never into another filesystem), apply the
        rsync-like exclude/include rules, note leftovers of a killed run; skip files any process holds open
        for writing;
plan    group inodes by (device, size, owner, group, mode[, mtime]) (``candidate_groups``), then prove content
        and xattr equality (``_unify_prove``: members read in lock-step, split chunk by chunk with byte
        comparisons, one SHA-256 per distinct content kept in the index ``_unify_index``); inodes unchanged
        since the last run take their hash from the index and are only re-read to be proven equal to a new one;
act     (``_unify_act``) hardlink: ``link(/proc/self/fd/N, dir/.vsunify.RANDOM.link)`` then ``rename`` over the
        path, so each path always names a complete file; protected (immutable) inodes get their flag cleared
        around the link and set again. reflink: FIDEDUPERANGE (the kernel compares the bytes again under its
        locks) -- separate inodes, shared extents, true copy-on-write;
absent  (``_unify_absent``) de-unify one guest: every inode it shares with anything outside it gets a private
        copy (owner, mode, xattrs incl. security.capability, atime/mtime kept; internal hardlinks kept), written
        to a temp name, synced, renamed over; flags we set are cleared.

Imports floors 1-2 only (_common, _kernel, _walk, _unify_index, _unify_freeze); never the config store nor the
runtime: the manager reads the guests' configs and passes them in (``select``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import errno
import os
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._kernel import FS_APPEND_FL, FS_IMMUTABLE_FL, \
    get_flags, reflink_supported
from ansible_collections.vserver.core.plugins.module_utils._unify_index import FLAGS_IMMUTABLE, FLAGS_KNOWN, \
    INDEX_NAME, Index
from ansible_collections.vserver.core.plugins.module_utils._walk import Inode, Rules, open_dirs, open_entry, \
    read_regular_at

# Names other files use: _config (validate), _mgr_unify (select), the tests (INDEX_NAME, TMP_RE).
__all__ = ('ARGUMENT_SPEC', 'DEFAULTS', 'DEFAULT_EXCLUDE', 'INDEX_NAME', 'TMP_RE', 'validate', 'select')

DEFAULT_EXCLUDE = ('/etc', '/var', '/home', '/tmp', '/root', '/dev', '/proc', '/sys', '/run', '/mnt')
METHODS = ('hardlink', 'reflink', 'auto')
STATES = ('present', 'absent')
TMP_PREFIX = '.vsunify.'
TMP_RE = re.compile(r'^\.vsunify\.[0-9a-f]{16}\.(link|copy)$')

# The module's options (plugins/modules/unify.py adds the host path options of _ansible). exclude has no
# default: None means DEFAULT_EXCLUDE.
ARGUMENT_SPEC = dict(
    guests=dict(type='list', elements='str', default=['all']),
    state=dict(type='str', choices=list(STATES), default='present'),
    method=dict(type='str', choices=list(METHODS), default='hardlink'),
    exclude=dict(type='list', elements='str'),
    include=dict(type='list', elements='str', default=[]),
    ignore_mtime=dict(type='bool', default=False),
    protect=dict(type='bool', default=True),
)
DEFAULTS = {key: spec.get('default') for key, spec in ARGUMENT_SPEC.items()}


# --- parameters -------------------------------------------------------------------------------------

def _check_patterns(value, field):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise VServerError('%s must be a list of rsync-like patterns such as "/usr/share/doc" or "*.pyc" '
                           '(got %r)' % (field, value), field)
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip('/') or '\0' in item or \
                '..' in item.strip('/').split('/') or '//' in item:
            raise VServerError('%s: each pattern must be a non-empty rsync-like pattern relative to the guest root, '
                               'such as "/usr/share/doc", "/opt/app/" or "*.pyc", without ".." or "//" (got %r)'
                               % (field, item), field)
        out.append(item)
    return out


def _check_guests(guests):
    if guests is None or guests == 'all':
        guests = ['all']
    if isinstance(guests, str):
        guests = [guests]
    if not isinstance(guests, (list, tuple)) or not guests or not all(isinstance(g, str) for g in guests):
        raise VServerError('guests must be a list of guest names, or "all" (got %r)' % (guests,), 'guests')
    if 'all' in guests and len(guests) > 1:
        raise VServerError('guests: "all" cannot be combined with names (got %r)' % (guests,), 'guests')
    return list(guests)


def validate(params: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Normalise module/role parameters (or a guest's ``unify`` config section); raise VServerError naming the
    field before anything is touched."""
    p = copy.deepcopy(DEFAULTS)
    p.update({k: v for k, v in (params or {}).items() if v is not None})
    unknown = set(p) - set(DEFAULTS)
    if unknown:
        raise VServerError('unknown unify option(s): %s (accepted: %s)'
                           % (', '.join(sorted(unknown)), ', '.join(sorted(DEFAULTS))), sorted(unknown)[0])
    p['guests'] = _check_guests(p['guests'])
    if p['state'] not in STATES:
        raise VServerError('state must be one of %s (got %r)' % (', '.join(STATES), p['state']), 'state')
    if p['method'] not in METHODS:
        raise VServerError('method must be one of %s (got %r)' % (', '.join(METHODS), p['method']), 'method')
    for key in ('ignore_mtime', 'protect'):
        if not isinstance(p[key], bool):
            raise VServerError('%s must be true or false (got %r)' % (key, p[key]), key)
    p['exclude'] = _check_patterns(p['exclude'], 'exclude')
    p['include'] = _check_patterns(p['include'], 'include') or []
    if p['exclude'] is None:
        p['exclude'] = list(DEFAULT_EXCLUDE)
    return p


def section(p: Dict[str, Any]) -> Dict[str, Any]:
    """The ``unify`` config section a run leaves on each selected guest."""
    if p['state'] == 'absent':
        return {'state': 'absent'}
    return {'state': 'present', 'method': p['method'], 'protect': p['protect']}


# --- which guests ---------------------------------------------------------------------------------------

class Selection(NamedTuple):
    """The guests of a run: config documents, the guests changed (``selected``), the unified guests only linked
    to (``sources``), and every guest's real root."""
    docs: Dict[str, dict]
    selected: List[str]
    sources: List[str]
    roots: Dict[str, str]


def _named(p, docs, broken):
    if p['guests'] == ['all']:
        if p['state'] == 'absent':
            return sorted(docs)
        return sorted(n for n, d in docs.items() if (d.get('unify') or {}).get('state') != 'absent')
    selected = []
    for name in p['guests']:
        if name in broken:
            raise VServerError('guests: %s' % broken[name], 'guests')
        if name not in docs:
            raise VServerError('guests: no guest named %r on this host (known: %s)'
                               % (name, ', '.join(sorted(docs)) or 'none'), 'guests')
        if name not in selected:
            selected.append(name)
    return selected


def select(p: Dict[str, Any], docs: Dict[str, dict], broken: Dict[str, Exception]) -> Selection:
    """Pick the guests of a run from the guests' configs: ``docs`` the good ones by name, ``broken`` the errors of
    the others by name (``_config.scan``, the unify sections checked too: ``_mgr_unify.select`` reads them); raise
    VServerError naming 'guests' for an unknown or broken guest, or trees that overlap."""
    selected = _named(p, docs, broken)
    sources = []
    if p['state'] == 'present':
        sources = sorted(n for n, d in docs.items() if n not in selected and
                         (d.get('unify') or {}).get('state') == 'present')
    roots = {}
    for name in selected + sources:
        root = docs[name].get('root')
        if not root:
            raise VServerError('guest %s has no root in its config' % name, 'guests')
        roots[name] = os.path.realpath(root)
    items = sorted(roots.items(), key=lambda kv: kv[1])
    for (a, ra), (b, rb) in zip(items, items[1:]):
        if rb == ra or rb.startswith(ra.rstrip('/') + '/'):
            raise VServerError('guests: the trees of %s (%s) and %s (%s) overlap' % (a, ra, b, rb), 'guests')
    return Selection(docs, selected, sources, roots)


def conffiles(root: str, cap: int = 1 << 20) -> List[str]:
    """Package manager configuration files of a guest (dpkg ``*.conffiles``): literal '/'-rooted paths.

    The guest owns these files: every directory is opened with O_NOFOLLOW from the root, and only regular
    files are read (``_walk.read_regular_at``), each up to ``cap`` bytes: a FIFO, a device or a symlink planted
    there is skipped."""
    try:
        fds = open_dirs(root, ('var', 'lib', 'dpkg', 'info'))
    except OSError:
        return []
    out = []
    try:
        try:
            names = os.listdir(fds[-1])
        except OSError:
            return out
        for name in sorted(names):
            if name.endswith('.conffiles'):
                data = read_regular_at(fds[-1], name, cap)
                if data is not None:
                    out.extend(_conffile_paths(data))
    finally:
        for fd in fds:
            os.close(fd)
    return out


def _conffile_paths(data):
    out = []
    for line in data.decode('utf-8', 'replace').splitlines():
        words = line.split()
        path = next((w for w in reversed(words) if w.startswith('/')), None)
        if path and '..' not in path.split('/'):
            out.append('/' + path.strip('/'))
    return out


def rules_of(p: Dict[str, Any], root: str) -> Rules:
    """The walk's filter for one guest: the run's patterns plus the guest's package configuration files."""
    return Rules(p['exclude'], p['include'], conffiles(root))


# --- records ----------------------------------------------------------------------------------------

class Node(Inode):
    """One inode seen in the scanned trees (``paths``: _walk.Entry) and what this run learnt about it.

    hash/xattr: content and xattr digests (None until known); flags: its inode flags (None until read);
    ours: we set its immutable flag; alive: a scanned path still names it; after: its fstat after we
    changed it, when no scanned path names it any more."""
    __slots__ = ('hash', 'xattr', 'flags', 'ours', 'alive', 'after')

    def __init__(self, st, dirs):
        Inode.__init__(self, st, dirs)
        self.hash = self.xattr = self.flags = None
        self.ours = False
        self.alive = True
        self.after = None


class Skip(NamedTuple):
    """Paths left alone, and why (the key of ``skipped_by_reason``)."""
    reason: str
    paths: int


class LinkStep(NamedTuple):
    """Hardlink every mutable path of ``others`` to ``target``."""
    target: Node
    others: List[Node]


class ReflinkStep(NamedTuple):
    """Share the extents of ``source`` with each of ``others`` (FIDEDUPERANGE)."""
    source: Node
    others: List[Node]


class ProtectStep(NamedTuple):
    """Set (want) or clear the immutable flag of ``node``; ``change`` False: the flag already is as wanted,
    only who set it is recorded (e.g. set by a run killed before it saved the index)."""
    node: Node
    want: bool
    change: bool


@dataclasses.dataclass
class Stats:
    """Counters of one run (summed over the classes acted on in threads with ``add``)."""
    candidates: int = 0
    hashed: int = 0
    bytes_hashed: int = 0
    verified: int = 0
    bytes_copied: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, paths: int = 1) -> None:
        self.skipped[reason] += paths

    def add(self, other: 'Stats') -> None:
        self.hashed += other.hashed
        self.bytes_hashed += other.bytes_hashed
        self.verified += other.verified
        self.bytes_copied += other.bytes_copied
        self.skipped.update(other.skipped)


def reason(exc: OSError) -> str:
    """The ``skipped_by_reason`` key of a failed operation."""
    if exc.errno == errno.EMLINK:
        return 'link_limit'
    if exc.errno == errno.ESTALE:
        return 'changed_during_run'
    return errno.errorcode.get(exc.errno, 'error').lower()


# --- inode helpers ------------------------------------------------------------------------------------

def open_node(node: Inode) -> Optional[int]:
    """An fd on the node's inode, opened through one of its paths (None if none still names it)."""
    for entry in node.paths:
        try:
            fd = open_entry(node.dirs, entry)
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (node.dev, node.ino) and st.st_size == node.size:
            return fd
        os.close(fd)
    return None


def node_flags(node: Node, index: Index) -> int:
    """The node's inode flags: known, from a fresh index row, else read (0 if unreadable)."""
    if node.flags is None:
        row = index.fresh(node)
        if row is not None and row.flags is not None and row.flags & FLAGS_KNOWN:
            node.flags = FS_IMMUTABLE_FL if row.flags & FLAGS_IMMUTABLE else 0
        else:
            fd = open_node(node)
            try:
                node.flags = get_flags(fd) if fd is not None else 0
            except OSError:
                node.flags = 0
            finally:
                if fd is not None:
                    os.close(fd)
    return node.flags


# --- the plan ---------------------------------------------------------------------------------------

def probe(nodes, method: str) -> Dict[int, str]:
    """The method per device holding candidates: hardlink, or reflink where a read-only FIDEDUPERANGE probe
    says it works. Raises VServerError (field 'method') for method=reflink on a filesystem without it."""
    sizes = collections.Counter((node.dev, node.size) for node in nodes)
    probe_nodes = {}
    for node in nodes:
        if sizes[(node.dev, node.size)] > 1:
            probe_nodes.setdefault(node.dev, node)
    dev_method = {}
    for dev, node in probe_nodes.items():
        if method == 'hardlink':
            dev_method[dev] = 'hardlink'
            continue
        fd = open_node(node)
        ok = False
        if fd is not None:
            try:
                ok = reflink_supported(fd, node.size)
            finally:
                os.close(fd)
        if method == 'reflink' and not ok:
            raise VServerError('method: reflink needs a filesystem that shares extents (XFS with reflink=1, '
                               'btrfs); the tree at %s does not; use method hardlink or auto'
                               % node.dirs.path(node.paths[0]), 'method')
        dev_method[dev] = 'reflink' if ok else 'hardlink'
    return dev_method


def candidate_groups(nodes, dev_method: Dict[int, str], ignore_mtime: bool) -> List[List[Node]]:
    """Inodes that may become one: same device and size, and for hardlinks the same mode, owner, group and
    (unless ``ignore_mtime``) mtime; groups of two or more with at least one mutable (selected) member."""
    by_size = collections.defaultdict(list)
    for node in nodes:
        by_size[(node.dev, node.size)].append(node)
    out = []
    for (dev, dummy), group in by_size.items():
        if len(group) < 2:
            continue
        if dev_method.get(dev) == 'reflink':  # separate inodes keep their own metadata
            subs = [group]
        else:
            by_meta = collections.defaultdict(list)
            for node in group:
                by_meta[(node.mode, node.uid, node.gid, None if ignore_mtime else node.mtime)].append(node)
            subs = by_meta.values()
        out.extend(grp for grp in subs if len(grp) >= 2 and any(n.mutable for n in grp))
    return out


def plan_link(cls: List[Node], flags_of: Callable[[Node], int]) -> Tuple[Optional[LinkStep], List[Skip]]:
    """For one class of proven-identical inodes: the target every other mutable inode's paths are linked to.

    Never changed: an inode with names outside the scanned trees (more links than paths seen), an immutable
    or append-only inode we did not protect. The target: an inode reachable from guests we may not change,
    then the one with the most paths, then the most links."""
    usable, skips = [], []
    for node in cls:
        if node.nlink > len(node.paths):
            skips.append(Skip('linked_outside', len(node.paths)))
            continue
        if flags_of(node) & (FS_IMMUTABLE_FL | FS_APPEND_FL) and not node.ours:
            skips.append(Skip('immutable', len(node.paths)))
            continue
        usable.append(node)
    if len(usable) < 2:
        return None, skips
    usable.sort(key=lambda n: (any(not e.mutable for e in n.paths), len(n.paths), n.nlink, -n.ino), reverse=True)
    others = [n for n in usable[1:] if n.mutable]
    return (LinkStep(usable[0], others) if others else None), skips


def plan_reflink(cls: List[Node]) -> Tuple[ReflinkStep, List[Skip]]:
    """For one class of identical inodes on a reflink filesystem: the source whose extents the others share.
    Inodes with names outside the scanned trees are never changed; immutable ones are skipped when acting."""
    cls = sorted(cls, key=lambda n: (any(not e.mutable for e in n.paths), n.nlink, -n.ino), reverse=True)
    others, skips = [], []
    for node in cls[1:]:
        if not node.mutable:
            continue
        if node.nlink > len(node.paths):
            skips.append(Skip('linked_outside', len(node.paths)))
            continue
        others.append(node)
    return ReflinkStep(cls[0], others), skips


def plan_protect(nodes, protect: bool, dev_method: Dict[int, str],
                 flags_of: Callable[[Node], int]) -> List[ProtectStep]:
    """After the links: the immutable flag of every hardlinked inode whose names are all in the scanned trees.
    Wanted on an inode shared by two guests or more (``protect``); removed from one we protected that is no
    longer shared (or with protect off), unless no selected guest reaches it."""
    steps = []
    for node in nodes:
        if not node.alive or dev_method.get(node.dev) == 'reflink':
            continue
        if node.nlink > len(node.paths):
            continue  # names outside the scanned trees: never modified
        if protect and len(node.guests) > 1:
            want = True
        elif node.ours:
            want = False
        else:
            continue
        if not want and not node.mutable:
            continue
        have = bool(flags_of(node) & FS_IMMUTABLE_FL)
        if have != want or node.ours != want:
            steps.append(ProtectStep(node, want, have != want))
    return steps


def skipped_by_reason(walk: Dict[str, int], act: Dict[str, int]) -> Dict[str, int]:
    """Paths left alone by reason: the walk's and the act phase's counts added up (none of zero)."""
    out = collections.Counter(walk)
    out.update(act)
    return {k: v for k, v in out.items() if v}


def shared_counts(nodes) -> Dict[str, int]:
    """Paths whose inode has two scanned paths or more, and the bytes that saves over private copies."""
    paths = shared = 0
    for node in nodes:
        k = len(node.paths)
        if node.alive and k > 1:
            paths += k
            shared += node.size * (k - 1)
    return {'shared_paths': paths, 'bytes_shared': shared}


def outside_counts(nodes) -> Dict[str, int]:
    """Paths (and bytes) of inodes the scanned trees share with names outside them."""
    shared = [n for n in nodes if n.alive and n.paths and n.nlink > len(n.paths)]
    return {'shared_paths': sum(len(n.paths) for n in shared), 'bytes_shared': sum(n.size for n in shared)}
