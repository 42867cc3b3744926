# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the guest config store (one JSON document per guest under CONFIG_DIR).

Top-level keys belong to the ``context`` module; ``capabilities``, ``limits``, ``network`` and ``unify``
are sections owned by their modules. Writers hold the host lock (``_common.HostLock``).
"""

from __future__ import annotations

import os

from ansible_collections.vserver.core.plugins.module_utils._common import (
    XID_MAX, XID_MIN, VServerError, check_name, read_json, write_json)

SECTIONS = ('capabilities', 'limits', 'network', 'unify')


def load(paths, name):
    check_name(name)
    doc = read_json(paths.config_file(name))
    if doc is not None and doc.get('name') != name:
        raise VServerError('%s names guest %r, not %r' % (paths.config_file(name), doc.get('name'), name))
    return doc


def names(paths):
    try:
        entries = os.listdir(paths.config_dir)
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.endswith('.json') and not entry.startswith('.'):
            out.append(entry[:-5])
    return sorted(out)


def load_all(paths):
    docs = {}
    for name in names(paths):
        try:
            doc = load(paths, name)
        except VServerError:
            continue
        if doc:
            docs[name] = doc
    return docs


def save(paths, doc):
    os.makedirs(paths.config_dir, mode=0o755, exist_ok=True)
    write_json(paths.config_file(doc['name']), doc, 0o644)


def remove(paths, name):
    try:
        os.unlink(paths.config_file(name))
    except FileNotFoundError:
        pass


def xids_in_use(paths, exclude=None):
    return {doc.get('xid'): name for name, doc in load_all(paths).items() if name != exclude}


def free_xid(paths, exclude=None):
    used = xids_in_use(paths, exclude)
    for xid in range(XID_MIN, XID_MAX + 1):
        if xid not in used:
            return xid
    raise VServerError('no free xid left between %d and %d' % (XID_MIN, XID_MAX), 'xid')


def by_xid(paths):
    return {doc['xid']: name for name, doc in load_all(paths).items() if 'xid' in doc}
