# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the manager of the ``unify`` module (floor 6; see docs/architecture.md).

``ensure(paths, name, params, check_mode) -> Result`` unifies (state=present) or de-unifies (state=absent) the
selected guests under the host lock: read the guests' configs and pick the guests (``select``), scan (``_walk``),
plan (``_unify``, ``_unify_prove``), act (``_unify_act``, ``_unify_absent``), then record each guest's ``unify``
config section. The configs and which guests run (the cgroups to freeze while a shared inode's protection is
lifted) are read here (``select``, ``freezer``) and passed down: the concern reads neither.
"""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, NamedTuple, Optional

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime, _unify, _unify_absent, \
    _unify_act, _unify_prove
from ansible_collections.vserver.core.plugins.module_utils._common import HostLock, Paths, VServerError
from ansible_collections.vserver.core.plugins.module_utils._procfs import open_for_write
from ansible_collections.vserver.core.plugins.module_utils._result import Result
from ansible_collections.vserver.core.plugins.module_utils._unify_freeze import Freezer
from ansible_collections.vserver.core.plugins.module_utils._unify_index import INDEX_NAME, OURS_IMMUTABLE, Index
from ansible_collections.vserver.core.plugins.module_utils._walk import Scan, walk

ACT_WORKERS = 8
MERGED = ('deunified', 'bytes_copied', 'unprotected', 'leftovers_removed', 'files_scanned', 'hashed',
          'bytes_hashed', 'shared_paths', 'bytes_shared')


class Outcome(NamedTuple):
    """One scan-plan-act run: changed?, the counts before and after (the diff), the module's return values."""
    changed: bool
    before: Dict[str, int]
    after: Dict[str, int]
    values: Dict[str, Any]


def freezer(paths: Optional[Paths]) -> Freezer:
    """A Freezer of the guests whose cgroup has a process (``paths`` None: none is known). Made under the host
    lock: no guest starts meanwhile."""
    groups = {}
    if paths is not None:
        names = set(_config.names(paths))
        try:
            names.update(n for n in os.listdir(paths.run_dir) if not n.startswith('.'))
        except OSError:
            pass
        for name in sorted(names):
            try:
                group = _runtime.Runtime(paths, name).group
                if group.exists() and group.procs():
                    groups[name] = group
            except (OSError, VServerError):
                continue
    return Freezer(groups)


def select(paths: Paths, p: Dict[str, Any]) -> _unify.Selection:
    """Read the guests' configs, the unify sections too (this is their reader: ``_config.scan`` checks only
    ``LISTED`` unless asked), and pick the guests of a run (``_unify.select``)."""
    docs, broken = _config.scan(paths, _config.SECTIONS)
    return _unify.select(p, docs, broken)


def _params(name, params):
    params = dict(params or {})
    if name is not None:
        given = params.get('guests')
        if given is not None and _unify.validate({'guests': given})['guests'] != [name]:
            raise VServerError('guests: %r names other guests than %r' % (given, name), 'guests')
        params['guests'] = [name]
    return _unify.validate(params)


def ensure(paths: Paths, name: Optional[str], params: Optional[Dict[str, Any]],
           check_mode: bool = False) -> Result:
    """Unify (state=present) or de-unify (state=absent) guests. ``name``: one guest, or 'all'; None: the guests
    of ``params['guests']`` (default all). The module's return values are in ``Result.extra``; ``before`` and
    ``after`` hold the counts and the guests' unify sections (the diff)."""
    p = _params(name, params)
    with HostLock(paths):
        sel = select(paths, p)
        if p['state'] == 'absent' and len(sel.selected) > 1:
            # One guest at a time. De-unification gives private copies to the inodes a guest shares with names
            # outside its scan; de-unified together, two guests would keep the inodes they share with each other,
            # only no longer immutable: root in one guest could then write into the other's files.
            outcome = _merge([_run(paths, p, [guest], [], {guest: sel.roots[guest]}, check_mode)
                              for guest in sel.selected])
        else:
            outcome = _run(paths, p, sel.selected, sel.sources, sel.roots, check_mode)
        before = {guest: sel.docs[guest].get('unify') for guest in sel.selected}
        after = {guest: _unify.section(p) for guest in sel.selected}
        recorded = [guest for guest in sel.selected if before[guest] != after[guest]]
        if not check_mode:
            for guest in recorded:
                doc = _config.load(paths, guest)
                doc['unify'] = after[guest]
                _config.save(paths, doc)
    extra = dict(outcome.values, guests=sel.selected, sources=sel.sources)
    return Result(changed=bool(outcome.changed or recorded), before=dict(outcome.before, guests=before),
                  after=dict(outcome.after, guests=after), actions=_actions(extra, recorded, after), extra=extra)


def _actions(values, recorded, sections):
    """What was done (or would be), as short sentences."""
    sentences = (
        ('leftovers_removed', 'removed %d temp name(s) left by a killed run'),
        ('linked', 'shared %d path(s) with identical files (' + '/'.join(values.get('methods') or ()) + ')'),
        ('protected', 'set the immutable flag on %d shared inode(s)'),
        ('deunified', 'gave %d path(s) a private copy'),
        ('unprotected', 'cleared the immutable flag of %d inode(s)'),
    )
    out = [text % values[key] for key, text in sentences if values.get(key)]
    out.extend('recorded unify state %s for guest %s' % (sections[guest]['state'], guest) for guest in recorded)
    return out


def _merge(outcomes: List[Outcome]) -> Outcome:
    """One outcome from the per-guest de-unification runs (counts added up)."""
    values = dict(outcomes[-1].values)
    for key in MERGED:
        values[key] = sum(o.values[key] for o in outcomes)
    skipped = collections.Counter()
    timings = collections.Counter()
    for o in outcomes:
        skipped.update(o.values['skipped_by_reason'])
        timings.update(o.values['timings'])
    values['skipped_by_reason'] = dict(skipped)
    values['timings'] = {k: round(v, 4) for k, v in timings.items()}
    values['timings']['frozen_max'] = max(o.values['timings'].get('frozen_max', 0) for o in outcomes)
    values['freezes'] = sum(o.values['freezes'] for o in outcomes)
    values['seconds'] = round(sum(o.values['seconds'] for o in outcomes), 3)
    return Outcome(any(o.changed for o in outcomes),
                   {k: sum(o.before[k] for o in outcomes) for k in outcomes[0].before},
                   {k: sum(o.after[k] for o in outcomes) for k in outcomes[0].after}, values)


def _scan(scan, p, selected, sources, roots):
    """Walk the trees of the run into ``scan``: selected guests are mutable, sources only linked to."""
    busy = open_for_write()
    # one tree after the other: the walk is CPU-bound Python (threads only take turns on the GIL, and
    # child processes measured slower here than the merge they save)
    for guest in selected + sources:
        root = roots[guest]
        if p['state'] == 'absent':
            walk(root, guest, True, None, scan, busy, whole=True)
        else:
            walk(root, guest, guest in selected, _unify.rules_of(p, root), scan, busy)


def _run(paths, p, selected, sources, roots, check_mode) -> Outcome:
    started = time.monotonic()
    index = Index(os.path.join(paths.config_dir, INDEX_NAME))
    scan = Scan(_unify.Node, _unify.TMP_PREFIX, _unify.TMP_RE)
    try:
        _scan(scan, p, selected, sources, roots)
        stats = _unify.Stats(timings={'scan': time.monotonic() - started})
        index.load({n.dev for n in scan.nodes.values()})
        for node in scan.nodes.values():
            row = index.rows.get((node.dev, node.ino))
            if row is not None:
                node.ours = bool((row.flags or 0) & OURS_IMMUTABLE)
        dev_method = _unify.probe(list(scan.nodes.values()), p['method']) if p['state'] == 'present' else {}
        guard = freezer(paths)
        leftovers = _unify_act.remove_leftovers(scan, check_mode, guard)  # the first write of the run
        if p['state'] == 'absent':
            outcome = _absent(scan, index, stats, check_mode, guard)
        else:
            outcome = _present(scan, index, p, stats, check_mode, dev_method, guard)
        stats.timings.update(frozen=guard.frozen_seconds, frozen_max=guard.frozen_max)
        outcome.values.update(
            leftovers_removed=leftovers, files_scanned=scan.files,
            skipped_by_reason=_unify.skipped_by_reason(scan.skipped, stats.skipped),
            hashed=stats.hashed, bytes_hashed=stats.bytes_hashed, seconds=round(time.monotonic() - started, 3),
            freezes=guard.frozen_count, timings={k: round(v, 4) for k, v in stats.timings.items()})
        return outcome._replace(changed=outcome.changed or leftovers > 0)
    finally:
        scan.dirs.close()
        index.close()


def _absent(scan, index, stats, check_mode, guard) -> Outcome:
    nodes = list(scan.nodes.values())
    before = _unify.outside_counts(nodes)
    copied, unprotected, after = _unify_absent.deunify(nodes, index, stats, check_mode, guard)
    return Outcome(bool(copied or unprotected), before, after, dict(
        deunified=copied, bytes_copied=stats.bytes_copied, unprotected=unprotected, **after))


def _act_class(cls, index, check_mode, dev_method, changes, guard):
    """Plan and carry out one proven class (run in a worker thread: classes share no inode)."""
    local = _unify.Stats()
    try:
        if dev_method.get(cls[0].dev) == 'reflink':
            step, skips = _unify.plan_reflink(cls)
            n, s = _unify_act.reflink(step, skips, local, changes, check_mode)
            return n, s, local
        step, skips = _unify.plan_link(cls, lambda node: _unify.node_flags(node, index))
        for skip in skips:
            local.skip(*skip)
        if step is None:
            return 0, 0, local
        if check_mode:
            return _unify_act.simulate_link(step) + (local,)
        return _unify_act.link(step, local, changes, guard) + (local,)
    except OSError as exc:  # e.g. flags refused on this filesystem: leave the class alone, go on
        local.skip(_unify.reason(exc), sum(len(node.paths) for node in cls))
        return 0, 0, local


def _present(scan, index, p, stats, check_mode, dev_method, guard) -> Outcome:
    nodes = list(scan.nodes.values())
    before = _unify.shared_counts(nodes)
    cands = _unify.candidate_groups(nodes, dev_method, p['ignore_mtime'])
    stats.candidates = sum(len(n.paths) for g in cands for n in g)
    mark = time.monotonic()
    classes = _unify_prove.prove(cands, index, stats, {d for d, m in dev_method.items() if m == 'reflink'})
    stats.timings['prove'] = time.monotonic() - mark
    mark = time.monotonic()
    changes = _unify_act.Changes()
    linked = saved = 0
    # Classes share no inode: several threads keep the filesystem's journal busy while one waits.
    with ThreadPoolExecutor(max_workers=1 if check_mode else ACT_WORKERS) as pool:
        for n, s, local in pool.map(lambda c: _act_class(c, index, check_mode, dev_method, changes, guard), classes):
            linked += n
            saved += s
            stats.add(local)
    stats.timings['act'] = time.monotonic() - mark
    mark = time.monotonic()
    steps = _unify.plan_protect(nodes, p['protect'], dev_method, lambda node: _unify.node_flags(node, index))
    protected, unprotected = _unify_act.protect(steps, stats, changes, check_mode)
    stats.timings['protect'] = time.monotonic() - mark
    mark = time.monotonic()
    after = _unify.shared_counts(nodes)
    if not check_mode:
        _unify_act.save_index(index, nodes, changes)
    stats.timings['index'] = time.monotonic() - mark
    return Outcome(bool(linked or protected or unprotected), before, after, dict(
        candidates=stats.candidates, linked=linked, bytes_saved=saved, protected=protected, unprotected=unprotected,
        verified=stats.verified, methods=sorted(set(dev_method.values())) or [
            p['method'] if p['method'] != 'auto' else 'hardlink'], **after))
