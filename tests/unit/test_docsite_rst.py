"""tests/tools/docsite_rst.py: the docs/*.md guides as antsibull-docs extra docs. The committed RST is current, and
the converted Markdown is RST docutils reads without a warning, with the text, tables and code of the source."""
import os
import subprocess
import sys

import docutils.frontend
import docutils.parsers.rst
import docutils.utils

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools')
sys.path.insert(0, TOOLS)
import docsite_rst  # noqa: E402


def _parse(text):
    """The doctree of ``text`` and docutils' messages of level WARNING and above."""
    messages = []

    def observer(msg):
        if msg['level'] >= docutils.utils.Reporter.WARNING_LEVEL:
            messages.append(msg.astext())
    doc = docutils.utils.new_document('<test>', docutils.frontend.get_default_settings(docutils.parsers.rst.Parser))
    doc.reporter.attach_observer(observer)
    doc.reporter.report_level = docutils.utils.Reporter.SEVERE_LEVEL + 1   # collect, do not print
    docutils.parsers.rst.Parser().parse(text, doc)
    return doc, messages


def test_committed_pages_are_current():
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, 'docsite_rst.py'), '--check'], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
    assert sorted(docsite_rst.pages()) == [
        'architecture', 'guest-view', 'guests', 'ha', 'import', 'inside', 'limits', 'monitoring', 'network', 'roles',
        'security', 'testing', 'unify']


def test_every_guide_converts_to_clean_rst():
    for name in docsite_rst.pages():
        rst = docsite_rst.convert(name, docsite_rst.pages())
        rst = rst.replace(':ref:', '')   # a Sphinx role plain docutils does not know
        doc, messages = _parse(rst)
        assert messages == [], (name, messages)
        assert doc.astext().strip()


def test_markdown_constructs(tmp_path):
    source = ('# Title `code`\n\nText with `x`s, **bold**, *it*, a_b, `a|b` and [a link](security.md#anchor).\n\n'
              '- one\n- two\n  1. nested\n\n| A | B |\n|---|---|\n| `c` | d |\n\n```json\n"key": 1\n```\n')
    tokens = docsite_rst.MarkdownIt('commonmark').enable('table').parse(source)
    rst = '\n\n'.join(docsite_rst.blocks(tokens, ['security']))
    doc, messages = _parse(rst)
    assert messages == []
    text = doc.astext()
    for part in ('Title code', 'xs', 'bold', 'a_b', 'a|b', 'a link', 'nested', 'key'):
        assert part in text, (part, text)
    assert 'docs/security.md#anchor' in rst and '.. list-table::' in rst
    assert '.. code-block:: text' in rst       # a json fragment is not JSON: shown as text


def test_the_parse_check_sees_bad_rst():
    assert _parse('Text ``x``s here')[1]        # what the escaped space after markup avoids
    assert _parse('.. bogus:: x')[1]
