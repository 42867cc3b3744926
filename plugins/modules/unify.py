#!/usr/bin/python
# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: unify
short_description: Share identical files across guest trees (hardlinks or reflinks), or give a guest private copies
version_added: 0.1.0
description:
  - The mainline-kernel successor of util-vserver's C(vhashify). Regular files that are equal in every respect
    (size, content, owner, group, mode, extended attributes including C(security.capability), and the
    modification time unless O(ignore_mtime)) are shared between the guests' trees.
  - Content equality is proven byte by byte, not trusted to a hash. A SHA-256 of each distinct content is kept in
    a per-host index (C(CONFIG_DIR/.unify-index), sqlite3), so a re-run only reads files whose size, mtime,
    ctime or inode changed.
  - Never follows symlinks, never touches devices, FIFOs, sockets, empty files or files any process holds open
    for writing (or maps shared-writable), and never crosses into another filesystem (mount points inside a
    tree are skipped).
  - Every change is atomic. A link is made under a temp name in the same directory and renamed over the path, a
    private copy is written, synced and renamed over. A run killed at any point leaves every path naming a
    complete file with its content; the next run removes the temp names and finishes the work.
  - With O(state=absent) the named guests get a private copy of every file they share (owner, mode, xattrs,
    times and their own internal hardlinks kept) and lose the immutable flags this module set, so their
    packages can be upgraded. Guests named together are de-unified one after the other, so none keeps sharing a
    file with another. Such guests are left out of O(guests=all) runs until they are named again with
    O(state=present).
  - Holds the host lock while it works. See C(docs/unify.md) for the update workflow.
author:
  - vserver.core contributors (@vserver-core)
requirements:
  - Python 3.9 or newer on the managed node (the module fails at once, naming the version, on an older one)
  - Linux, run as root; for O(method=hardlink) with O(protect) a filesystem with the immutable flag (ext4, xfs,
    btrfs); for O(method=reflink) one with C(FIDEDUPERANGE) (btrfs, XFS with C(reflink=1))
  - Python's C(sqlite3) module (part of Debian's python3)
extends_documentation_fragment:
  - vserver.core._attributes
  - vserver.core._attributes.ALL
  - vserver.core._paths
options:
  guests:
    description:
      - Guests whose trees may be changed, or C(all) (every configured guest whose unify state is not
        C(absent)).
      - With O(state=present), guests that were unified before (unify state C(present)) are used as sources.
        The selected guests link to their files, their own paths are not replaced.
    type: list
    elements: str
    default: [all]
  state:
    description:
      - C(present) shares identical files, C(absent) de-unifies the named guests.
    type: str
    choices: [present, absent]
    default: present
  method:
    description:
      - C(hardlink) replaces each duplicate path by a hardlink to one inode (works on every filesystem; protect
        it with O(protect)).
      - C(reflink) keeps separate inodes and shares their extents with C(FIDEDUPERANGE) (XFS with C(reflink=1),
        btrfs). A write inside one guest is copy-on-write and never reaches the others. Owner, mode and
        timestamps stay per file, so only the content must be equal.
      - C(auto) uses C(reflink) on filesystems that support it and C(hardlink) elsewhere.
    type: str
    choices: [hardlink, reflink, auto]
    default: hardlink
  exclude:
    description:
      - rsync-like patterns relative to each guest root; a leading C(/) anchors at the root, a trailing C(/)
        matches directories only, C(*) and C(?) stay within a path component, C(**) crosses them.
      - The default is util-vserver's list C(/etc), C(/var), C(/home), C(/tmp), C(/root), C(/dev), C(/proc),
        C(/sys), C(/run), C(/mnt). Giving O(exclude) replaces that list.
      - The package manager's configuration files found in each guest (dpkg C(var/lib/dpkg/info/*.conffiles))
        are always excluded.
    type: list
    elements: str
  include:
    description:
      - Patterns (same syntax) re-included below an excluded directory, for example C(/var/lib/app/static/**).
    type: list
    elements: str
    default: []
  ignore_mtime:
    description: Files differing only in their modification time are still equal.
    type: bool
    default: false
  protect:
    description:
      - For hardlinks, set the immutable flag on every inode shared by two guests or more, so that no guest's
        root (whose bounding set lacks C(linux_immutable)) can write, truncate, rename over or delete it.
      - Files this module protected lose the flag when they are no longer shared, when a guest is de-unified and
        when O(protect=false).
      - Not used for reflinks (they are copy-on-write).
    type: bool
    default: true
notes:
  - Check mode reads and compares the files exactly like a real run and reports exact counts; it writes nothing,
    not even the index.
  - Diff mode shows counts and the guests' C(unify) config sections, never file lists.
'''

EXAMPLES = r'''
- name: Share identical files across every guest (hardlinks, immutable)
  vserver.core.unify:

- name: Copy-on-write sharing where the filesystem can do it
  vserver.core.unify:
    guests: [web1, web2, web3]
    method: auto
    exclude: [/etc, /var, /home, /tmp, /root, /dev, /proc, /sys, /run, /mnt, /usr/local]
    include: [/var/www/static/**]

- name: De-unify web1 before upgrading its packages
  vserver.core.unify:
    guests: [web1]
    state: absent
'''

RETURN = r'''
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ['shared 14980 path(s) with identical files (hardlink)', 'set the immutable flag on 7490 shared inode(s)',
           'recorded unify state present for guest web']
restart_required:
  description: Always false; unification applies to running guests (they are frozen while a shared file is changed).
  returned: always
  type: bool
  sample: false
guests:
  description: Guests whose trees were (or would be) changed.
  returned: always
  type: list
  elements: str
  sample: [web, db]
sources:
  description: Unified guests used as link sources only.
  returned: always
  type: list
  elements: str
  sample: [base]
files_scanned:
  description: Regular non-empty files considered in the included paths of all scanned guests.
  returned: always
  type: int
  sample: 18234
candidates:
  description: Paths whose inode had the same size and metadata as another inode.
  returned: when O(state=present)
  type: int
  sample: 15120
linked:
  description: Paths replaced by a link (hardlink) or files deduplicated (reflink).
  returned: when O(state=present)
  type: int
  sample: 14980
bytes_saved:
  description: Bytes freed by this run (sizes of the inodes whose last link went, or bytes deduplicated).
  returned: when O(state=present)
  type: int
  sample: 412316860
bytes_shared:
  description: After the run, bytes that sharing saves over private copies (present), or bytes still shared
    with other guests (absent).
  returned: always
  type: int
  sample: 824633720
hashed:
  description: Inodes read and hashed in this run (the index spares the unchanged ones).
  returned: always
  type: int
  sample: 15120
protected:
  description: Inodes that got the immutable flag.
  returned: when O(state=present)
  type: int
  sample: 7490
unprotected:
  description: Inodes whose immutable flag (set by this module) was cleared.
  returned: always
  type: int
  sample: 0
deunified:
  description: Paths that got a private copy.
  returned: when O(state=absent)
  type: int
  sample: 0
skipped_by_reason:
  description: Paths left alone, by reason (excluded, symlink, special, empty, open_for_write, other_filesystem,
    immutable, changed_during_run, link_limit, unreadable, linked_outside (an inode with names outside the scanned
    trees, never changed), ebusy (a running guest did not freeze in time)).
  returned: always
  type: dict
  sample: {excluded: 10, symlink: 400, empty: 3, open_for_write: 1}
leftovers_removed:
  description: Temp names left by a killed run that were removed.
  returned: always
  type: int
  sample: 0
shared_paths:
  description: After the run, paths sharing their inode with another scanned path (present), or paths still
    sharing an inode with something outside the guest (absent).
  returned: always
  type: int
  sample: 29960
bytes_hashed:
  description: Bytes read and hashed in this run.
  returned: always
  type: int
  sample: 824633720
verified:
  description: Extra byte-for-byte comparisons of a changed file against an inode known from the index.
  returned: when O(state=present)
  type: int
  sample: 0
bytes_copied:
  description: Bytes written into private copies.
  returned: when O(state=absent)
  type: int
  sample: 0
methods:
  description: Methods used, per filesystem (C(hardlink), C(reflink)).
  returned: when O(state=present)
  type: list
  elements: str
  sample: [hardlink]
timings:
  description: Seconds spent per phase (scan, prove, act, protect, index), plus C(frozen) (total seconds running
    guests were kept frozen while a shared inode's protection was lifted) and C(frozen_max) (the longest freeze).
  returned: always
  type: dict
  sample: {scan: 0.41, prove: 2.35, act: 0.88, protect: 0.21, index: 0.05, frozen: 0.0, frozen_max: 0.0}
freezes:
  description: How many times running guests were frozen (one per class of files linked, or per batch of at
    most 64 files de-unified).
  returned: always
  type: int
  sample: 2
seconds:
  description: Wall time of the run.
  returned: always
  type: float
  sample: 3.96
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vserver.core.plugins.module_utils import _ansible, _mgr_unify, _unify


def main():
    module = AnsibleModule(argument_spec=_ansible.argument_spec(**_unify.ARGUMENT_SPEC), supports_check_mode=True)
    params = {key: module.params[key] for key in _unify.ARGUMENT_SPEC}
    _ansible.run(module, lambda: _mgr_unify.ensure(_ansible.paths_from(module), None, params, module.check_mode))


if __name__ == '__main__':
    main()
