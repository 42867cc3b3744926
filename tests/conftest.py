"""Shared fixtures. Tests run as root on the real kernel; each gets private host roots and cgroup parent."""
import os
import secrets
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
COLLECTIONS = os.path.join(TOP, '.build', 'collections')
if not os.path.isdir(os.path.join(COLLECTIONS, 'ansible_collections', 'vserver', 'core')):
    os.makedirs(os.path.join(COLLECTIONS, 'ansible_collections', 'vserver'), exist_ok=True)
    os.symlink(TOP, os.path.join(COLLECTIONS, 'ansible_collections', 'vserver', 'core'))
sys.path.insert(0, COLLECTIONS)

from ansible_collections.vserver.core.plugins.module_utils import _common, _runtime, _template  # noqa: E402

TEST_CGROUP_PREFIX = 'vstest-'


@pytest.fixture
def host_paths(tmp_path):
    """A private set of host roots and a unique cgroup parent, so tests never touch real guests."""
    paths = _common.Paths(
        config_dir=str(tmp_path / 'etc'), run_dir=str(tmp_path / 'run'), tree_dir=str(tmp_path / 'trees'),
        log_dir=str(tmp_path / 'log'), cgroup_parent=TEST_CGROUP_PREFIX + secrets.token_hex(4))
    yield paths
    stop_guests(paths)  # whatever a failing test left running


def stop_guests(paths):
    """Stop (kill, unmount, remove the cgroups of) every guest with runtime state under ``paths``."""
    if os.path.isdir(paths.run_dir):
        for name in os.listdir(paths.run_dir):
            if not name.startswith('.'):
                try:
                    _runtime.cleanup(paths, name)
                except Exception:
                    pass


@pytest.fixture(scope='session')
def busybox_tree(tmp_path_factory):
    """One pristine busybox tree; copy it with ``clone_tree`` for a guest of your own."""
    root = str(tmp_path_factory.mktemp('template') / 'busybox')
    _template.build_busybox(root)
    return root


@pytest.fixture
def make_guest(host_paths, busybox_tree):
    """Create (config + tree) a guest; returns its config doc. ``start=True`` also starts it."""
    from ansible_collections.vserver.core.plugins.module_utils import _config
    created = []

    def factory(name, xid=None, start=False, **extra):
        root = os.path.join(host_paths.tree_dir, name)
        os.makedirs(host_paths.tree_dir, exist_ok=True)
        shutil.copytree(busybox_tree, root, symlinks=True)
        doc = {'name': name, 'xid': xid or _config.free_xid(host_paths), 'root': root, 'init': ['/sbin/init'],
               'stop_timeout': 5, 'stop_signal': 'SIGTERM', 'schema': _config.SCHEMA}  # as stored and read back
        doc.update(extra)
        _config.save(host_paths, doc)
        created.append(doc)
        if start:
            _runtime.start(host_paths, doc)
        return doc

    yield factory
    for doc in created:
        try:
            _runtime.stop(host_paths, dict(doc, stop_timeout=0.5))
        except Exception:
            pass
