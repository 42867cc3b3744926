"""Every key each module documents in RETURN, nested ones included, has a type, a description and a sample; and
the checker the integration test (test_return_docs.py) uses to compare real results with RETURN finds what it must."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import return_docs  # noqa: E402


def test_every_module_is_covered():
    assert return_docs.module_names() == ['address', 'capabilities', 'context', 'context_info', 'guests', 'limits',
                                          'unify', 'util_vserver_import']


@pytest.mark.parametrize('module', return_docs.module_names())
def test_every_documented_key_has_a_sample(module):
    doc = return_docs.return_doc(module)
    assert doc, module
    no_sample = [key for key, spec in return_docs.walk(doc) if 'sample' not in spec]
    assert no_sample == [], '%s: RETURN keys without a sample: %s' % (module, ', '.join(no_sample))
    incomplete = [key for key, spec in return_docs.walk(doc) if not spec.get('description') or not spec.get('type')]
    assert incomplete == [], '%s: RETURN keys without description or type: %s' % (module, ', '.join(incomplete))


def test_checker_finds_undocumented_and_missing_keys():
    contains = {'name': {'returned': 'always'}, 'xid': {'returned': 'always'}}
    doc = {'guests': {'type': 'list', 'returned': 'always', 'contains': contains},
           'total': {'type': 'int', 'returned': 'always'}, 'extra': {'type': 'dict', 'returned': 'sometimes'}}
    result = {'changed': True, 'invocation': {}, 'guests': [{'name': 'a', 'xid': 1, 'root': '/x'}, {'name': 'b'}],
              'extra': {'free': 1}, 'secret': 1}
    assert return_docs.undocumented(result, doc) == ['guests[].root', 'secret']
    assert return_docs.missing_always(result, doc) == ['guests[].xid', 'total']


def _size_table():
    """(example, bytes) pairs of the size table in docs/limits.md."""
    with open(os.path.join(return_docs.TOP, 'docs', 'limits.md')) as handle:
        text = handle.read()
    rows = [line.split('|')[1:-1] for line in text.split('## Units and validation', 1)[1].splitlines()
            if line.startswith('| ') and '`' in line]
    pairs = []
    for dummy, examples, sizes in rows:
        examples = [e.strip('"') for e in examples.split('`')[1::2]]
        sizes = [s.strip() for s in sizes.replace(' each', '').split(',')]
        sizes = sizes if len(sizes) == len(examples) else [sizes[0]] * (len(examples) - len(sizes) + 1) + sizes[1:]
        pairs += [(e, None if s == '-' else int(s)) for e, s in zip(examples, sizes)]
    return pairs


def test_documented_size_forms_are_what_limits_accepts():
    from ansible_collections.vserver.core.plugins.module_utils import _limits
    pairs = _size_table()
    assert ('64MB', 67108864) in pairs and ('max', None) in pairs and len(pairs) >= 12
    for example, size in pairs:
        assert _limits.parse_size(example, 'memory') == (_limits.MAX if size is None else size), example
    for refused in ('1.5G', '-1M', '64MBs', '64 MB B', '1P'):
        with pytest.raises(Exception, match='memory'):
            _limits.parse_size(refused, 'memory')
    with pytest.raises(Exception, match='disk'):
        _limits.parse_size('max', 'disk', allow_max=False)
