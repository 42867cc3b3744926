"""Every key each module returns is documented in its RETURN (recursively where RETURN documents ``contains``),
and every key documented ``returned: always`` is there: each module runs for real through ansible-playbook on
guests under private host roots (a running, a stopped and a broken-config guest, an address on a test bridge,
unify present then absent)."""
import os
import sys

import yaml

from ansible_collections.vserver.core.plugins.module_utils import _config
from ansible_helpers import path_vars, run_playbook, task_results
from helpers import TOP
from test_address import Net
from test_unify import clear_immutable, populate

sys.path.insert(0, os.path.join(TOP, 'tests', 'tools'))
import return_docs  # noqa: E402


PATHS = {key: '{{ %s }}' % key for key in ('config_dir', 'run_dir', 'tree_dir', 'log_dir', 'cgroup_parent')}


def tasks(net, roots):
    named = dict(PATHS, name='rd-a')
    return [
        ('context', {'name': 'rd-b', 'root': roots['rd-b'], 'state': 'started', 'stop_signal': 'SIGKILL'}),
        ('address', dict(named, addresses=[net.cidr4(2), net.cidr6(2)], bridge=net.bridge,
                         gateway=[net.ip4(1), net.ip6(1)])),
        ('limits', dict(named, memory='48M', nproc=40, cpu={'fill_rate': 1, 'interval': 2},
                        rlimits={'nofile': {'soft': 300, 'hard': 600}})),
        ('capabilities', dict(named, bcaps_drop=['CAP_SYS_CHROOT'], ccaps=['ping'])),
        ('context_info', {}),
        ('unify', {'guests': ['rd-a', 'rd-b']}),
        ('unify', {'guests': ['rd-b'], 'state': 'absent'}),
        ('guests', {'guests': [{'name': 'rd-b', 'root': roots['rd-b'], 'template': 'none', 'state': 'stopped'}]}),
        ('context', {'name': 'rd-b', 'state': 'absent'}),
    ]


def test_every_returned_key_is_documented(host_paths, make_guest, tmp_path):
    net = Net()
    roots = {}
    try:
        for name in ('rd-a', 'rd-b'):
            doc = make_guest(name, start=name == 'rd-a', stop_timeout=1, stop_signal='SIGKILL')
            populate(doc['root'], name)
            roots[name] = doc['root']
        _config.remove(host_paths, 'rd-b')      # the context task makes it again, from its existing tree
        os.makedirs(host_paths.config_dir, exist_ok=True)
        with open(os.path.join(host_paths.config_dir, 'rd-bad.json'), 'w') as handle:
            handle.write('{"name": "rd-bad", "xid": "105"}')   # a broken config: listed, never fatal
        steps = tasks(net, roots)
        book = tmp_path / 'all.yml'
        book.write_text(yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': [
            {'name': '%d %s' % (i, module), 'vserver.core.' + module: dict(PATHS, **args)}
            for i, (module, args) in enumerate(steps)]}]))
        rc, data = run_playbook(book, path_vars(host_paths), diff=True, timeout=600)
        results = task_results(data)
        assert rc == 0 and len(results) == len(steps), results
        info = [r for n, r in results if n.endswith('context_info')][0]
        states = {g['name']: g['state'] for g in info['guests']}
        assert states == {'rd-a': 'running', 'rd-b': 'running', 'rd-bad': 'broken'}   # every kind of row is seen
        assert info['guests'][0]['network']['live_addresses']

        problems = []
        for name, result in results:
            module = name.split(' ', 1)[1]
            doc = return_docs.return_doc(module)
            problems += ['%s: %s returned but not in RETURN' % (name, key)
                         for key in return_docs.undocumented(result, doc)]
            problems += ['%s: %s documented as returned always but missing' % (name, key)
                         for key in return_docs.missing_always(result, doc)]
        assert problems == [], '\n'.join(problems)
    finally:
        net.cleanup()
        clear_immutable(host_paths.tree_dir)
