"""The layers of module_utils point down (docs/architecture.md): every import of one module_utils file by another,
at the top or inside a function, goes to a lower floor, or to the same floor without closing a cycle."""
import ast
import os

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(TOP, 'plugins', 'module_utils')
PACKAGE = 'ansible_collections.vserver.core.plugins.module_utils'

# The floors, bottom up (the same table is in docs/architecture.md). A name ending in '*' is a prefix.
FLOORS = {
    1: ('_kernel', '_procfs', '_common', '_result', '_syscalls', '_ansible'),                       # kernel
    2: ('_cgroup', '_seccomp', '_masks', '_lxcfs', '_logs', '_template', '_walk', '_tree', '_netlink', '_disk',
        '_devices', '_enter_stage', '_bootstrap', '_apt_sources'),                                 # mechanisms
    3: ('_caps', '_limits', '_netns', '_unify', '_legacy', '_caps_*', '_limits_*', '_netns_*', '_unify_*',
        '_legacy_*'),                                                                               # concerns
    4: ('_config',),                                                                               # store
    5: ('_runtime', '_runtime_*', '_enter'),                                                       # runtime
    6: ('_mgr_*', '_host'),                                                                        # managers
    7: ('_cli',),                                                                                  # front ends
}
FLOOR_NAMES = {1: 'kernel', 2: 'mechanisms', 3: 'concerns', 4: 'store', 5: 'runtime', 6: 'managers',
               7: 'front ends'}

# Imports against the layers that are accepted, as (importer, imported): none today. The config store checks each
# section with its concern's validator, so it sits above the concerns; no concern reads a config (its manager
# reads the documents and passes them in). A new exception must be written down here, with its reason.
KNOWN = set()


def floor_of(name):
    for floor, names in FLOORS.items():
        for pattern in names:
            if name == pattern or pattern.endswith('*') and name.startswith(pattern[:-1]):
                return floor
    return None


def imported(tree):
    """Names of sibling module_utils a module's source imports, anywhere in it (top level or inside functions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ''
            if node.level:  # a relative import: from . import _x / from ._x import y
                out.update(a.name for a in node.names if not module) if not module else out.add(module.split('.')[0])
            elif module == PACKAGE:
                out.update(a.name for a in node.names)
            elif module.startswith(PACKAGE + '.'):
                out.add(module[len(PACKAGE) + 1:].split('.')[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + '.'):
                    out.add(alias.name[len(PACKAGE) + 1:].split('.')[0])
    return out


def graph(directory=MODULE_UTILS):
    """{module: set of sibling modules it imports}, for every module_utils/*.py."""
    edges = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith('.py') and entry != '__init__.py':
            with open(os.path.join(directory, entry)) as handle:
                edges[entry[:-3]] = imported(ast.parse(handle.read(), entry))
    return edges


def cycles(edges):
    """Edges inside a strongly connected component (Tarjan): each closes a cycle."""
    index, low, stack, on_stack, comp = {}, {}, [], set(), {}
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            while True:
                member = stack.pop()
                on_stack.discard(member)
                comp[member] = node
                if member == node:
                    break
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return {(a, b) for a, targets in edges.items() for b in targets if b in edges and comp[a] == comp[b]}


def violations(edges):
    """{(importer, imported): why} for every import up a floor, of or from an unplaced file, or between files of
    one floor that closes a cycle."""
    out = {}
    for src, targets in edges.items():
        for dst in targets:
            if floor_of(src) is None or floor_of(dst) is None:
                out[(src, dst)] = 'unplaced: add %s to FLOORS' % (src if floor_of(src) is None else dst)
            elif floor_of(dst) > floor_of(src):
                out[(src, dst)] = 'up a floor: %s (%s) imports %s (%s)' % (
                    src, FLOOR_NAMES[floor_of(src)], dst, FLOOR_NAMES[floor_of(dst)])
    for src, dst in cycles(edges):  # a cycle through an import up a floor is reported as that import
        if floor_of(src) is not None and floor_of(src) == floor_of(dst):
            out.setdefault((src, dst), 'closes a cycle on floor %s: %s -> %s' % (FLOOR_NAMES[floor_of(src)], src, dst))
    return out


def test_every_module_utils_file_has_a_floor():
    assert [name for name in graph() if floor_of(name) is None] == []


def test_imports_point_down_and_close_no_cycle():
    found = violations(graph())
    new = {edge: why for edge, why in found.items() if edge not in KNOWN}
    assert new == {}, 'imports against the layers (docs/architecture.md):\n' + '\n'.join(sorted(new.values()))


@pytest.mark.parametrize('source,expected', [
    ('from %s import _a, _b as B\n' % PACKAGE, {'_a', '_b'}),
    ('def f():\n    from %s import _late\n' % PACKAGE, {'_late'}),
    ('from %s._common import VServerError\n' % PACKAGE, {'_common'}),
    ('import %s._kernel as K\n' % PACKAGE, {'_kernel'}),
    ('import os\nfrom ansible.module_utils.basic import AnsibleModule\n', set()),
])
def test_imports_are_read_at_top_and_inside_functions(source, expected):
    assert imported(ast.parse(source)) == expected


def test_the_checker_catches_an_upward_import_and_a_cycle():
    edges = {'_kernel': {'_runtime'}, '_runtime': {'_kernel'}, '_cgroup': {'_masks'}, '_masks': {'_cgroup'},
             '_caps': {'_seccomp'}, '_seccomp': set(), '_mystery': set()}
    found = violations(edges)
    assert found[('_kernel', '_runtime')].startswith('up a floor')
    assert found[('_cgroup', '_masks')].startswith('closes a cycle')
    assert found[('_masks', '_cgroup')].startswith('closes a cycle')
    assert ('_runtime', '_kernel') not in found   # the cycle is the upward import's
    assert ('_caps', '_seccomp') not in found
    assert floor_of('_mystery') is None and floor_of('_mgr_limits') == 6 and floor_of('_limits_plan') == 3
    assert floor_of('_config') == 4 and floor_of('_runtime_views') == 5 and floor_of('_cli') == 7
