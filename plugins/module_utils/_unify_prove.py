# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: unify's proof that candidate inodes are identical (floor 3, with _unify).

Content equality is proven byte by byte, never trusted to a hash: the members of a candidate group are read in
lock-step (worker threads) and split chunk by chunk with byte comparisons (``partition``: each file is read once,
one SHA-256 per distinct content). Inodes whose index row is fresh take their digests from the index; two sets
with the same digest that were not read together are compared again (or, reflinked, shown to share extents).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple

from ansible_collections.vserver.core.plugins.module_utils._kernel import extents, get_flags
from ansible_collections.vserver.core.plugins.module_utils._unify import Node, Stats, open_node
from ansible_collections.vserver.core.plugins.module_utils._unify_index import ALGO, Index
from ansible_collections.vserver.core.plugins.module_utils._walk import read_full

CHUNK = 1 << 20
BATCH_BYTES = 64 << 20
BATCH_FILES = 64
WORKERS = 4


class ContentClass(NamedTuple):
    """Nodes proven byte-identical (and, for hardlinks, with equal xattrs), and the SHA-256 of their bytes."""
    digest: bytes
    nodes: List[Node]


class ReadJob(NamedTuple):
    """A batch of same-size nodes to read together; ``xattrs``: their xattrs must be equal too (hardlinks)."""
    nodes: List[Node]
    xattrs: bool


def xattr_key(target) -> bytes:
    """Digest of a file's sorted xattr (name, value) pairs, security.capability included; b'' if none.

    ``target`` is an open fd (or a path, not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return b''
        raise
    if not names:
        return b''
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b'\0')
        value = os.getxattr(target, name, follow_symlinks=follow)
        h.update(struct.pack('Q', len(value)) + value)
    return h.digest()


def content_digest(fd: int) -> bytes:
    """SHA-256 of a file's bytes, read through ``fd`` from offset 0 (as ``partition`` hashes them)."""
    h = hashlib.new(ALGO)
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return h.digest()
        h.update(chunk)
        offset += len(chunk)


def _open_members(nodes, xattrs, fds):
    """(xattr digest or None) -> [(node, fd)] for the nodes that can be opened; their fds go to ``fds``."""
    byx = {}
    for node in nodes:
        fd = open_node(node)
        if fd is None:
            continue
        fds.append(fd)
        if node.flags is None:
            try:
                node.flags = get_flags(fd)
            except OSError:
                node.flags = 0
        if xattrs:
            if node.xattr is None:
                try:
                    node.xattr = xattr_key(fd)
                except OSError:
                    continue
            byx.setdefault(node.xattr, []).append((node, fd))
        else:
            byx.setdefault(None, []).append((node, fd))
    return byx


def _split(classes, step):
    """Read the next ``step`` bytes of every member; split each class by those bytes. Returns (classes, eof)."""
    new = []
    eof = True
    for h, group in classes:
        subs = []  # (bytes read, members that read them)
        for node, fd in group:
            chunk = read_full(fd, step)
            if chunk:
                eof = False
            for seen, members in subs:
                if seen == chunk:
                    members.append((node, fd))
                    break
            else:
                subs.append((chunk, [(node, fd)]))
        for i, (chunk, grp) in enumerate(subs):
            hh = h if i == len(subs) - 1 else h.copy()
            hh.update(chunk)
            new.append((hh, grp))
    return new, eof


def partition(nodes: List[Node], xattrs: bool = True) -> List[ContentClass]:
    """Split nodes (same size) into classes of byte-identical content (and equal xattrs), reading each
    file once.

    Returns ContentClass(sha256 digest, [nodes]) records. Files that cannot be opened are left out. One hash object per
    class: identical files are hashed once.
    """
    fds = []
    try:
        byx = _open_members(nodes, xattrs, fds)
        classes = [(hashlib.new(ALGO), members) for members in byx.values()]
        step = min(CHUNK, max(nodes[0].size if nodes else 0, 1))
        eof = False
        while not eof:
            classes, eof = _split(classes, step)
        return [ContentClass(h.digest(), [node for node, dummy in group]) for h, group in classes]
    finally:
        for fd in fds:
            os.close(fd)


def _batches(nodes):
    size = max(1, min(nodes[0].size, CHUNK))
    per = max(2, min(BATCH_FILES, BATCH_BYTES // size))
    return [nodes[i:i + per] for i in range(0, len(nodes), per)]


def _read_jobs(groups, index, reflink_devs):
    """Take digests from fresh index rows; the (batch, xattrs?) jobs that must read the other members."""
    jobs = []
    for group in groups:
        xattrs = group[0].dev not in reflink_devs
        for node in group:
            row = index.fresh(node)
            if row is not None and row.hash is not None and (row.xattr is not None or not xattrs):
                node.hash, node.xattr = row.hash, row.xattr
        unknown = [n for n in group if n.hash is None]
        if unknown:
            jobs.extend(ReadJob(batch, xattrs) for batch in _batches(unknown))
    return jobs


def _run_jobs(jobs):
    """Partition each job's batch in worker threads; id(node) -> the nodes proven identical to it."""
    proven_of = {}
    if jobs:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for result in pool.map(lambda job: partition(job.nodes, job.xattrs), jobs):
                for digest, members in result:
                    for node in members:
                        node.hash = digest
                        proven_of[id(node)] = members
    return proven_of


def _same_extents(a, b):
    fa = open_node(a)
    fb = open_node(b) if fa is not None else None
    try:
        if fa is None or fb is None:
            return False
        ea = extents(fa)
        return bool(ea) and ea == extents(fb)
    finally:
        for fd in (fa, fb):
            if fd is not None:
                os.close(fd)


def _join(lists, reflink, xattrs, stats):
    """Sets of nodes with the same digest that were not read together (index hits, separate batches): joined
    after a byte compare of one member each, or, reflinked, when their extents are the very same blocks."""
    merged = list(lists[0])
    rest = []
    for other in lists[1:]:
        if reflink and _same_extents(merged[0], other[0]):
            merged.extend(other)
            continue
        result = partition([merged[0], other[0]], xattrs)
        stats.verified += 1
        if len(result) == 1 and len(result[0].nodes) == 2:
            merged.extend(other)
        else:
            rest.append(other)
    return [members for members in [merged] + rest if len(members) > 1]


def _classes_of(group, proven_of, xattrs):
    """(digest, xattr digest) -> the lists of nodes of ``group`` proven identical among themselves."""
    sets: Dict[tuple, list] = {}
    seen = set()
    for node in group:
        if node.hash is None or id(node) in seen:
            continue
        members = proven_of.get(id(node)) or [node]
        seen.update(id(m) for m in members)
        sets.setdefault((node.hash, node.xattr if xattrs else None), []).append(members)
    return sets.values()


def prove(groups: List[List[Node]], index: Index, stats: Stats, reflink_devs=()) -> List[List[Node]]:
    """groups: lists of candidate nodes (same key). Returns lists of nodes proven byte-identical (len >= 2).

    For hardlinks the xattrs must be equal too; reflinked files keep their own inode and metadata."""
    jobs = _read_jobs(groups, index, reflink_devs)
    stats.hashed += sum(len(job.nodes) for job in jobs)
    stats.bytes_hashed += sum(n.size for job in jobs for n in job.nodes)
    proven_of = _run_jobs(jobs)
    out = []
    for group in groups:
        reflink = group[0].dev in reflink_devs
        for lists in _classes_of(group, proven_of, not reflink):
            if len(lists) == 1:
                if len(lists[0]) > 1:
                    out.append(lists[0])
                continue
            if not any(n.mutable for members in lists for n in members):
                continue
            out.extend(_join(lists, reflink, not reflink, stats))
    return out
