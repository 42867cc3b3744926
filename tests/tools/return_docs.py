"""Each module's RETURN documentation, parsed, and checks of real module results against it.

Used by tests/unit/test_module_docs.py (every documented key has a sample) and
tests/integration/test_return_docs.py (every key a module returns is documented)."""
import ast
import os

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES_DIR = os.path.join(TOP, 'plugins', 'modules')

# Keys Ansible itself adds to (or reads from) a task result: not the module's to document.
ANSIBLE_KEYS = frozenset((
    'changed', 'failed', 'msg', 'invocation', 'diff', 'warnings', 'deprecations', 'skipped', 'skip_reason',
    'exception', 'item', 'ansible_loop_var', 'ansible_facts', '_ansible_no_log', '_ansible_item_label',
    '_ansible_verbose_always', '_ansible_verbose_override', 'failed_when_result', 'changed_when_result'))


def module_names():
    return sorted(n[:-3] for n in os.listdir(MODULES_DIR) if n.endswith('.py') and not n.startswith('_'))


def return_doc(module):
    """The parsed RETURN YAML of plugins/modules/MODULE.py (read without importing the module)."""
    with open(os.path.join(MODULES_DIR, module + '.py')) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['RETURN']:
            return yaml.safe_load(node.value.value) or {}
    raise AssertionError('%s has no RETURN' % module)


def walk(doc, prefix=''):
    """(dotted key, its documentation) for every documented key, nested ones (``contains``) included."""
    for key, spec in doc.items():
        yield prefix + key, spec
        if isinstance(spec, dict) and isinstance(spec.get('contains'), dict):
            inner = prefix + key + ('[].' if spec.get('type') == 'list' else '.')
            yield from walk(spec['contains'], inner)


def undocumented(result, doc, prefix='', top=True):
    """Keys of ``result`` that ``doc`` does not document, recursing where ``doc`` documents ``contains``."""
    out = []
    for key, value in result.items():
        if top and (key in ANSIBLE_KEYS or key.startswith('_ansible')):
            continue
        spec = doc.get(key)
        if spec is None:
            out.append(prefix + key)
            continue
        contains = spec.get('contains')
        if not isinstance(contains, dict):
            continue
        if spec.get('type') == 'list' and isinstance(value, list):
            for element in value:
                if isinstance(element, dict):
                    out.extend(undocumented(element, contains, prefix + key + '[].', top=False))
        elif isinstance(value, dict):
            out.extend(undocumented(value, contains, prefix + key + '.', top=False))
    return sorted(set(out))


def missing_always(result, doc, prefix=''):
    """Keys documented ``returned: always`` that ``result`` lacks (recursively where it has them)."""
    out = []
    for key, spec in doc.items():
        if key in ANSIBLE_KEYS:
            continue
        if key not in result:
            if spec.get('returned') == 'always':
                out.append(prefix + key)
            continue
        contains, value = spec.get('contains'), result[key]
        if not isinstance(contains, dict):
            continue
        if spec.get('type') == 'list' and isinstance(value, list):
            for element in value:
                if isinstance(element, dict):
                    out.extend(missing_always(element, contains, prefix + key + '[].'))
        elif isinstance(value, dict):
            out.extend(missing_always(value, contains, prefix + key + '.'))
    return sorted(set(out))
