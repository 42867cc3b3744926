"""SIGKILL a unify run at random points: no path lost or changed, and the next run finishes the work."""
import os
import random
import subprocess
import sys
import time

from ansible_collections.vserver.core.plugins.module_utils import _unify
from test_unify import clear_immutable, expected_classes, inode, manifest, unify, write
from helpers import TOP

SCRIPT = """
import sys
sys.path.insert(0, %r)
from ansible_collections.vserver.core.plugins.module_utils import _common, _mgr_unify
paths = _common.Paths(**%r)
_mgr_unify.ensure(paths, None, {'guests': ['ka', 'kb', 'kc']})
"""


def test_sigkill_at_random_points(host_paths, make_guest):
    seed = int(time.time())
    print('random seed', seed)
    rnd = random.Random(seed)
    data = random.Random(11)
    contents = [data.randbytes(data.randint(1, 6000)) for dummy in range(2400)]
    docs = [make_guest(name) for name in ('ka', 'kb', 'kc')]
    try:
        for n, doc in enumerate(docs):
            for i, blob in enumerate(contents):
                if n == 2 and i % 10 == 0:
                    blob = blob + b'!'  # near-duplicates in the third guest
                write(os.path.join(doc['root'], 'usr/lib/vsk/d%02d/f%04d' % (i % 30, i)), blob)
        roots = [d['root'] for d in docs]
        before = manifest(roots)
        script = SCRIPT % (os.path.join(TOP, '.build', 'collections'), host_paths.as_dict())
        t = time.monotonic()
        unify(host_paths, {}, check_mode=True)
        # python start-up + the dry run's work (scan, read, compare), then the links: kill anywhere in there
        span = 0.3 + (time.monotonic() - t) * 1.5
        kills = 0
        for dummy in range(16):
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, '-c', script])
            delay = rnd.uniform(0.1, span)
            try:
                proc.wait(timeout=delay)
                # A run that finished shows how long a run really takes now: the first on freshly written trees
                # takes several times its successors (measured 1.6-2.2 s against 0.3-0.5 s), and delays drawn
                # from the first estimate would mostly come after the run had ended (too few kills).
                span = (time.monotonic() - t0) * 0.95
                # finished before the kill: start over from private files (and no index) for the next kill
                assert proc.returncode == 0
                unify(host_paths, {'guests': 'all', 'state': 'absent'})
                os.unlink(os.path.join(host_paths.config_dir, _unify.INDEX_NAME))
                print('run finished within %.2fs: de-unified again' % delay)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
                print('killed after %.2fs' % delay)
            now = manifest(roots)
            temps = [p for p in now if _unify.TMP_RE.match(os.path.basename(p))]
            for path in temps:  # a kill between link() and rename(): an extra name of a complete file
                assert now.pop(path) in before.values()
            assert now == before, 'a path was lost or changed by a killed run'
            if kills == 4:
                break
        assert kills >= 3
        final = unify(host_paths, {'guests': ['ka', 'kb', 'kc']})
        assert manifest(roots) == before
        again = unify(host_paths, {})
        assert again['changed'] is False and again['leftovers_removed'] == 0
        for paths in expected_classes(roots).values():
            assert len({inode(p) for p in paths}) == 1, paths
        leftovers = [name for root in roots for dummy, dummy2, files in os.walk(root) for name in files
                     if _unify.TMP_RE.match(name)]
        assert leftovers == []
        print('kills', kills, 'final run', {k: final[k] for k in ('linked', 'leftovers_removed', 'protected')})
    finally:
        clear_immutable(host_paths.tree_dir)
