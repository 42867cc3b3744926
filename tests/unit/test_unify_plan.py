"""unify's decisions, without root: which inodes are candidates, which get linked (and to which target), which are
left alone and why, which get the immutable flag; on made-up inodes (no I/O) and, for xattrs and excludes, on
files of the test's own tmp dir."""
import collections
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _kernel as K, _mgr_unify, _unify, _unify_act, \
    _unify_index, _unify_prove, _walk
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._unify import LinkStep, ProtectStep, Skip

Stat = collections.namedtuple('Stat', 'st_dev st_ino st_size st_mode st_uid st_gid st_mtime_ns st_ctime_ns st_nlink')


def node(ino, names=(('a', True),), size=100, mode=0o100644, uid=0, gid=0, mtime=1, dev=1, nlink=None, flags=0,
         ours=False):
    """An inode named once per (guest, mutable) of ``names``; ``nlink`` more than that: names outside."""
    n = _unify.Node(Stat(dev, ino, size, mode, uid, gid, mtime, mtime, nlink or len(names)), None)
    for i, (guest, mutable) in enumerate(names):
        n.paths.append(_walk.Entry(ino * 10 + i, 'f', guest, mutable))
        n.guests.add(guest)
        n.mutable = n.mutable or mutable
    n.flags, n.ours = flags, ours
    return n


def flags_of(n):
    return n.flags


def inos(groups):
    return sorted(sorted(n.ino for n in g) for g in groups)


# --- candidates -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('other, ignore_mtime, grouped', [
    (dict(), False, True),
    (dict(uid=1000), False, False),  # different owner
    (dict(gid=5), False, False),  # different group
    (dict(mode=0o100755), False, False),  # different mode
    (dict(mtime=2), False, False),  # different mtime...
    (dict(mtime=2), True, True),  # ...unless ignore_mtime
    (dict(size=101), False, False),  # different size
    (dict(dev=2), False, False),  # another filesystem
])
def test_hardlink_candidates_need_equal_metadata(other, ignore_mtime, grouped):
    a, b = node(1), node(2, **other)
    groups = _unify.candidate_groups([a, b], {1: 'hardlink', 2: 'hardlink'}, ignore_mtime)
    assert inos(groups) == ([[1, 2]] if grouped else [])


def test_reflink_candidates_ignore_metadata():
    """Reflinked files keep their own inode: owner, mode and mtime may differ, size and device may not."""
    nodes = [node(1), node(2, uid=1000, mode=0o100600, mtime=9), node(3, size=7)]
    assert inos(_unify.candidate_groups(nodes, {1: 'reflink'}, False)) == [[1, 2]]
    assert inos(_unify.candidate_groups(nodes, {1: 'hardlink'}, False)) == []


def test_candidates_need_a_selected_guest():
    """Sources only (guests unified before and not selected) are never changed: no candidate among them alone."""
    src = [node(1, names=(('s1', False),)), node(2, names=(('s2', False),))]
    assert _unify.candidate_groups(src, {}, False) == []
    assert inos(_unify.candidate_groups(src + [node(3)], {}, False)) == [[1, 2, 3]]


def test_already_unified_is_no_candidate_but_is_protected():
    """One inode named in two guests (unified by an earlier run): nothing to link, the flag is wanted."""
    shared = node(1, names=(('a', True), ('b', True)))
    assert _unify.candidate_groups([shared], {}, False) == []
    assert _unify.plan_protect([shared], True, {}, flags_of) == [ProtectStep(shared, True, True)]
    shared.flags, shared.ours = K.FS_IMMUTABLE_FL, True
    assert _unify.plan_protect([shared], True, {}, flags_of) == []  # and then nothing is left to do


# --- link plans -----------------------------------------------------------------------------------------

def test_link_target_prefers_sources_then_most_paths():
    mine = node(1, names=(('a', True),))
    twice = node(2, names=(('b', True), ('c', True)))
    source = node(3, names=(('s', False),))
    step, skips = _unify.plan_link([mine, twice, source], flags_of)
    assert skips == [] and step.target is source  # reachable from a guest we may not change
    assert {n.ino for n in step.others} == {1, 2}
    step, dummy = _unify.plan_link([mine, twice], flags_of)
    assert step.target is twice and step.others == [mine]


@pytest.mark.parametrize('kwargs, reason', [
    (dict(nlink=3), 'linked_outside'),  # a name outside the scanned trees (e.g. a hardlink in /srv)
    (dict(flags=K.FS_IMMUTABLE_FL), 'immutable'),  # immutable, and not by us
    (dict(flags=K.FS_APPEND_FL), 'immutable'),  # append-only
])
def test_link_leaves_inodes_alone(kwargs, reason):
    a, b, c = node(1), node(2, names=(('b', True),)), node(3, names=(('c', True),), **kwargs)
    step, skips = _unify.plan_link([a, b, c], flags_of)
    assert skips == [Skip(reason, 1)]
    assert c is not step.target and c not in step.others
    step, skips = _unify.plan_link([a, c], flags_of)
    assert step is None  # one usable inode: nothing to link


def test_link_reuses_inodes_we_protected():
    a = node(1, flags=K.FS_IMMUTABLE_FL, ours=True)
    b = node(2, names=(('b', True),))
    step, skips = _unify.plan_link([a, b], flags_of)
    assert skips == [] and step is not None and {step.target.ino} | {n.ino for n in step.others} == {1, 2}


def test_link_needs_a_mutable_other():
    target = node(1, names=(('s', False), ('t', False)))
    src = node(2, names=(('u', False),))
    assert _unify.plan_link([target, src], flags_of) == (None, [])


def test_check_mode_counts_what_would_be_linked():
    """Only the selected guests' paths move; an inode whose last name moves is gone (its bytes saved)."""
    source = node(1, names=(('s', False),))
    a = node(2, names=(('a', True),))
    mixed = node(3, names=(('b', True), ('s2', False)))
    step, dummy = _unify.plan_link([source, a, mixed], flags_of)
    assert step == LinkStep(mixed, [a])  # reachable from a source and the most paths; the source is not mutable
    assert _unify_act.simulate_link(step) == (1, 100)
    assert not a.alive and sorted(e.guest for e in mixed.paths) == ['a', 'b', 's2'] and mixed.nlink == 3
    other = node(4, names=(('c', True), ('s3', False)))
    assert _unify_act.simulate_link(LinkStep(source, [other])) == (1, 0)  # the source's name of it stays
    assert other.alive and [e.guest for e in other.paths] == ['s3'] and source.guests == {'s', 'c'}


def test_act_class_check_mode_is_planned_without_io():
    a, b = node(1), node(2, names=(('b', True),))
    changes = _unify_act.Changes()
    n, s, local = _mgr_unify._act_class([a, b], None, True, {1: 'hardlink'}, changes, None)
    assert (n, s) == (1, 100) and not local.skipped and not changes.touched


def test_reflink_plan():
    source = node(1, names=(('s', False),))
    a, outside = node(2), node(3, nlink=2)
    step, skips = _unify.plan_reflink([a, outside, source])
    assert step.source is source and step.others == [a] and skips == [Skip('linked_outside', 1)]


# --- protection ---------------------------------------------------------------------------------------------

def test_protect_decisions():
    shared = node(1, names=(('a', True), ('b', True)))
    set_by_other = node(2, names=(('a', True), ('b', True)), flags=K.FS_IMMUTABLE_FL)
    alone_ours = node(3, flags=K.FS_IMMUTABLE_FL, ours=True)  # protected by us, no longer shared
    alone = node(4)
    outside = node(5, names=(('a', True), ('b', True)), nlink=3)  # a name outside: never modified
    source_ours = node(6, names=(('s', False),), flags=K.FS_IMMUTABLE_FL, ours=True)  # not ours to change now
    dead = node(7, names=(('a', True), ('b', True)))
    dead.alive = False
    nodes = [shared, set_by_other, alone_ours, alone, outside, source_ours, dead]
    steps = _unify.plan_protect(nodes, True, {}, flags_of)
    assert steps == [ProtectStep(shared, True, True), ProtectStep(set_by_other, True, False),
                     ProtectStep(alone_ours, False, True)]
    assert _unify.plan_protect(nodes, True, {1: 'reflink'}, flags_of) == []  # copy-on-write needs no flag


def test_protect_off_unprotects_only_ours():
    ours = node(1, names=(('a', True), ('b', True)), flags=K.FS_IMMUTABLE_FL, ours=True)
    theirs = node(2, names=(('a', True), ('b', True)), flags=K.FS_IMMUTABLE_FL)
    assert _unify.plan_protect([ours, theirs], False, {}, flags_of) == [ProtectStep(ours, False, True)]


def test_protect_executor_records_without_io():
    n = node(1, names=(('a', True), ('b', True)), flags=K.FS_IMMUTABLE_FL)
    changes = _unify_act.Changes()
    stats = _unify.Stats()
    assert _unify_act.protect([ProtectStep(n, True, False)], stats, changes, False) == (0, 0)
    assert n.ours and n in changes.touched
    assert _unify_act.protect([ProtectStep(node(2), True, True)], stats, changes, True) == (1, 0)  # check mode


# --- content and xattrs, excludes (files of the test's tmp dir) ---------------------------------------------

def scan_of(trees, rules=None):
    scan = _walk.Scan(_unify.Node, _unify.TMP_PREFIX, _unify.TMP_RE)
    for guest, root in trees:
        _walk.walk(str(root), guest, True, rules or _walk.Rules([]), scan, set())
    return scan


def test_prove_requires_equal_xattrs_for_hardlinks_only(tmp_path):
    for name in ('a', 'b', 'c', 'd'):
        (tmp_path / name).write_bytes(b'same bytes' * 100)
    (tmp_path / 'd').write_bytes(b'other byte' * 100)
    try:
        os.setxattr(str(tmp_path / 'c'), 'user.vstest', b'1')
    except OSError:
        pytest.skip('no user xattrs on this filesystem')
    scan = scan_of([('g', tmp_path)])
    try:
        nodes = list(scan.nodes.values())
        index = _unify_index.Index(str(tmp_path / 'idx'))
        names = {id(n): n.paths[0].name for n in nodes}
        classes = _unify_prove.prove([nodes], index, _unify.Stats())
        assert [sorted(names[id(n)] for n in c) for c in classes] == [['a', 'b']]
        for n in nodes:
            n.hash = n.xattr = None
        classes = _unify_prove.prove([nodes], index, _unify.Stats(), reflink_devs={nodes[0].dev})
        assert [sorted(names[id(n)] for n in c) for c in classes] == [['a', 'b', 'c']]
    finally:
        scan.dirs.close()


def test_excluded_paths_are_never_candidates(tmp_path):
    for guest in ('g1', 'g2'):
        for rel in ('usr/bin/tool', 'etc/passwd', 'var/lib/static/x', 'var/lib/other', 'usr/x.pyc', 'etc/conf'):
            path = tmp_path / guest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rel.encode())
        info = tmp_path / guest / 'var/lib/dpkg/info'
        info.mkdir(parents=True)
        (info / 'p.conffiles').write_text('/usr/bin/tool\n')  # a package's configuration file: always excluded
    p = _unify.validate({'include': ['/var/lib/static/**'], 'exclude': list(_unify.DEFAULT_EXCLUDE) + ['*.pyc']})
    scan = _walk.Scan(_unify.Node, _unify.TMP_PREFIX, _unify.TMP_RE)
    try:
        for guest in ('g1', 'g2'):
            root = str(tmp_path / guest)
            _walk.walk(root, guest, True, _unify.rules_of(p, root), scan, set())
        seen = sorted({scan.dirs.path(e)[len(str(tmp_path)) + 3:] for n in scan.nodes.values() for e in n.paths})
        assert seen == ['/var/lib/static/x']
        groups = _unify.candidate_groups(list(scan.nodes.values()), {}, True)
        assert [len(g) for g in groups] == [2]
    finally:
        scan.dirs.close()


# --- options ------------------------------------------------------------------------------------------------

def test_one_source_for_the_options():
    assert set(_unify.DEFAULTS) == set(_unify.ARGUMENT_SPEC)
    p = _unify.validate(_unify.DEFAULTS)
    assert p['guests'] == ['all'] and p['exclude'] == list(_unify.DEFAULT_EXCLUDE) and p['include'] == []
    assert _unify.ARGUMENT_SPEC['state']['choices'] == list(_unify.STATES)
    p['include'].append('/x')
    assert _unify.DEFAULTS['include'] == []  # validate copies the defaults


def test_manager_name_and_guests():
    assert _mgr_unify._params('web', {})['guests'] == ['web']
    assert _mgr_unify._params('web', {'guests': ['web']})['guests'] == ['web']
    assert _mgr_unify._params(None, {'guests': 'all'})['guests'] == ['all']
    with pytest.raises(VServerError) as err:
        _mgr_unify._params('web', {'guests': ['db']})
    assert err.value.field == 'guests'


def test_skipped_by_reason_adds_the_walk_and_the_act_phase():
    assert _unify.skipped_by_reason({'open_for_write': 2, 'symlink': 1}, {'open_for_write': 1, 'immutable': 0}) == \
        {'open_for_write': 3, 'symlink': 1}
