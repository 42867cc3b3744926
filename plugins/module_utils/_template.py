# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: build guest trees from built-in templates (no network needed)."""

from __future__ import annotations

import os
import shutil

from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._kernel import run
from ansible_collections.vserver.core.plugins.module_utils import _tree

BUSYBOX_CANDIDATES = ('/bin/busybox', '/usr/bin/busybox', '/sbin/busybox')
DIRS = ('bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc/init.d', 'proc', 'sys', 'dev', 'tmp', 'var/log', 'var/run',
        'var/tmp', 'root', 'home', 'run', 'mnt')

FILES = {
    'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
    'etc/group': 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n',
    'etc/shadow': 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n',
    'etc/inittab': '::sysinit:/etc/init.d/rcS\n::shutdown:/etc/init.d/rcK\n',
    'etc/init.d/rcS': '#!/bin/sh\necho "guest $(hostname) up"\n',
    'etc/init.d/rcK': '#!/bin/sh\necho "guest $(hostname) going down"\n',
    'etc/hosts': '127.0.0.1 localhost\n::1 localhost\n',
    'etc/profile': 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n',
}
MODES = {'etc/shadow': 0o640, 'etc/init.d/rcS': 0o755, 'etc/init.d/rcK': 0o755}
# the build siblings are tree operations (_tree); they stay importable from here
build_prefix, stale_builds, new_build_dir, install_build = (
    _tree.build_prefix, _tree.stale_builds, _tree.new_build_dir, _tree.install_build)


def find_busybox() -> tuple[str, list[str]]:
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path):
            proc = run([path, '--list-full'], check=False)
            if proc.returncode == 0 and 'sbin/init' in proc.stdout:
                return path, proc.stdout.split()
    raise VServerError('template busybox needs a static busybox on the host (Debian: apt-get install '
                       'busybox-static)', 'template')


def tree_is_empty(root: str) -> bool:
    return not os.path.exists(root) or (os.path.isdir(root) and not os.listdir(root))


def _fill(root, busybox, applets, hostname):
    os.chmod(root, 0o755)
    for directory in DIRS:
        os.makedirs(os.path.join(root, directory), mode=0o755, exist_ok=True)
    os.chmod(os.path.join(root, 'tmp'), 0o1777)
    os.chmod(os.path.join(root, 'var/tmp'), 0o1777)
    os.chmod(os.path.join(root, 'root'), 0o700)
    shutil.copy2(busybox, os.path.join(root, 'bin/busybox'))
    for applet in applets:
        rel = applet.lstrip('/')
        if rel == 'bin/busybox':
            continue
        target = os.path.join(root, rel)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.lexists(target):
            os.symlink('/bin/busybox', target)
    files = dict(FILES)
    files['etc/hostname'] = (hostname or 'localhost') + '\n'
    for rel, content in files.items():
        path = os.path.join(root, rel)
        with open(path, 'w') as handle:
            handle.write(content)
        os.chmod(path, MODES.get(rel, 0o644))


def build_busybox(root: str, hostname: str | None = None) -> None:
    """Build a minimal guest tree at ``root`` (which must be absent or empty).

    The tree is made in a build sibling and renamed onto ``root`` only when complete, so a killed build
    never leaves a half tree at ``root``; the caller removes stale siblings (``stale_builds``) under the lock."""
    if not tree_is_empty(root):
        raise VServerError('root %s exists and is not empty; the busybox template only fills new trees' % root,
                           'root')
    if os.path.ismount(root):
        raise VServerError('root %s is a mount point: a new tree is built beside it and renamed into place, '
                           'which a mount point cannot take; unmount it or give an existing tree with template none'
                           % root, 'root')
    busybox, applets = find_busybox()
    build = new_build_dir(root)
    try:
        _fill(build, busybox, applets, hostname)
        install_build(build, root)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
