"""Write (or check) docs/docsite/rst/NAME.rst, the antsibull-docs extra docs, from the guides docs/NAME.md.

    python tests/tools/docsite_rst.py [--check]

antsibull-docs takes extra docs in RST only (and lints them with plain docutils), while the guides are Markdown
read on GitHub too: this converts the Markdown the guides use (headings, paragraphs, lists, tables, fenced code,
inline code, emphasis, links) to RST with markdown-it-py. Without --check the pages listed in
docs/docsite/extra-docs.yml are rewritten; with --check nothing is written, the stale pages are listed and the
exit code is 1 (`make docs` and `make lint` run it). Edit the .md, then run `make docsite-rst`.
"""
import argparse
import json
import os
import re
import sys

import yaml
from markdown_it import MarkdownIt

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RST_DIR = os.path.join(TOP, 'docs', 'docsite', 'rst')
LABEL = 'ansible_collections.vserver.core.docsite.%s'
SOURCE_URL = 'https://github.com/vserver-core/vserver.core/blob/main/'
UNDERLINES = '=-~^"'
HEADER = ('..\n  Generated from docs/%s.md by tests/tools/docsite_rst.py: edit the .md, then run `make docsite-rst`.\n'
          '  GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)\n'
          '  SPDX-License-Identifier: GPL-3.0-or-later\n\n')
_SPECIAL = re.compile(r'([\\*`_|])')


def pages():
    with open(os.path.join(TOP, 'docs', 'docsite', 'extra-docs.yml')) as handle:
        index = yaml.safe_load(handle)
    return [entry['ref'] for section in index['sections'] for entry in section['toctree']]


def _link_target(href, pages_):
    """(role reference or None, URL): a guide links to another guide (a page here) or to a file in the repo."""
    if re.match(r'^[a-z]+:', href):
        return None, href
    path, dummy, anchor = href.partition('#')
    name = os.path.splitext(os.path.basename(path))[0]
    if path.endswith('.md') and name in pages_ and not anchor and '/' not in path:
        return LABEL % name, None
    if path.endswith('.md') and '/' not in path:
        path = 'docs/' + path
    return None, SOURCE_URL + path + ('#' + anchor if anchor else '')


def _plain(tokens):
    return ''.join(t.content for t in tokens if t.type in ('text', 'code_inline'))


def inline(tokens, pages_):
    """RST for a run of inline tokens. Markup pieces get an escaped space where a word character touches them."""
    pieces = []   # (text, is_markup)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == 'text':
            pieces.append((_SPECIAL.sub(r'\\\1', tok.content), False))
        elif tok.type in ('softbreak', 'hardbreak'):
            pieces.append(('\n', False))
        elif tok.type == 'code_inline':
            pieces.append(('``%s``' % tok.content, True))
        elif tok.type in ('strong_open', 'em_open', 'link_open'):
            close = tok.type.replace('_open', '_close')
            j = i + 1
            while tokens[j].type != close:
                j += 1
            inner = tokens[i + 1:j]
            text = ' '.join(_plain(inner).split())
            if tok.type == 'link_open':
                ref, url = _link_target(tok.attrs['href'], pages_)
                text = text.replace('<', r'\<')
                pieces.append((':ref:`%s <%s>`' % (text, ref) if ref else '`%s <%s>`__' % (text, url), True))
            elif all(t.type == 'text' for t in inner):
                mark = '**' if tok.type == 'strong_open' else '*'
                pieces.append(('%s%s%s' % (mark, _SPECIAL.sub(r'\\\1', text), mark), True))
            else:   # RST cannot nest inline markup: keep the inner markup, drop the emphasis
                pieces.append((inline(inner, pages_), False))
            i = j
        else:
            raise ValueError('unsupported inline Markdown token %s' % tok.type)
        i += 1
    out = ''
    for n, (text, markup) in enumerate(pieces):
        if markup and out and re.match(r'\w', out[-1]):
            out += '\\ '
        if n and pieces[n - 1][1] and text and re.match(r'\w', text[0]):
            out += '\\ '
        out += text
    return out


def _indent(text, prefix):
    return '\n'.join(prefix + line if line else line for line in text.split('\n'))


def blocks(tokens, pages_):
    """RST blocks (a list of strings) for block tokens."""
    out = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == 'heading_open':
            text = inline(tokens[i + 1].children, pages_)
            out.append('%s\n%s' % (text, UNDERLINES[int(tok.tag[1]) - 1] * len(text)))
            i += 3
            continue
        if tok.type == 'paragraph_open':
            out.append(inline(tokens[i + 1].children, pages_))
            i += 3
            continue
        if tok.type in ('fence', 'code_block'):
            lang = (tok.info or '').strip().split(' ', 1)[0] or 'text'
            if lang == 'json' and not _is_json(tok.content):
                lang = 'text'   # a fragment (a key and its value): antsibull-docs' lint parses json blocks
            out.append('.. code-block:: %s\n\n%s' % (lang, _indent(tok.content.rstrip('\n'), '   ')))
            i += 1
            continue
        end = _closing(tokens, i)
        if tok.type in ('bullet_list_open', 'ordered_list_open'):
            out.append(_list(tokens[i + 1:end], '- ' if tok.type == 'bullet_list_open' else '#. ', pages_))
        elif tok.type == 'table_open':
            out.append(_table(tokens[i + 1:end], pages_))
        else:
            raise ValueError('unsupported Markdown block %s' % tok.type)
        i = end + 1
    return out


def _is_json(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _closing(tokens, i):
    """Index of the token closing tokens[i] (same nesting level)."""
    close = tokens[i].type.replace('_open', '_close')
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].type == tokens[i].type:
            depth += 1
        elif tokens[j].type == close:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError('unclosed %s' % tokens[i].type)


def _list(tokens, marker, pages_):
    items = []
    i = 0
    while i < len(tokens):
        end = _closing(tokens, i)
        body = '\n\n'.join(blocks(tokens[i + 1:end], pages_))
        items.append(marker + _indent(body, ' ' * len(marker))[len(marker):])
        i = end + 1
    return '\n'.join(items) if all('\n\n' not in item for item in items) else '\n\n'.join(items)


def _table(tokens, pages_):
    rows = []
    for i, tok in enumerate(tokens):
        if tok.type == 'tr_open':
            rows.append([])
        elif tok.type == 'inline':
            rows[-1].append(inline(tok.children, pages_) or '..')   # '..': an empty cell
    lines = ['.. list-table::', '   :header-rows: 1', '']
    for row in rows:
        for n, cell in enumerate(row):
            lines.append(('   * - ' if n == 0 else '     - ') + cell.replace('\n', ' '))
    return '\n'.join(lines)


def convert(name, pages_):
    with open(os.path.join(TOP, 'docs', name + '.md')) as handle:
        source = handle.read()
    tokens = MarkdownIt('commonmark').enable('table').parse(source)
    return HEADER % name + '.. _%s:\n\n' % (LABEL % name) + '\n\n'.join(blocks(tokens, pages_)) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 when a page is stale')
    args = parser.parse_args(argv)
    names = pages()
    stale = []
    for name in names:
        path = os.path.join(RST_DIR, name + '.rst')
        text = convert(name, names)
        try:
            with open(path) as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(os.path.relpath(path, TOP))
        if not args.check:
            os.makedirs(RST_DIR, exist_ok=True)
            with open(path, 'w') as handle:
                handle.write(text)
    extra = sorted(set(n[:-4] for n in os.listdir(RST_DIR) if n.endswith('.rst')) - set(names))
    if args.check and (stale or extra):
        for path in stale:
            print('%s: not what docs/%s gives (run `make docsite-rst`)' % (path, os.path.basename(path)[:-4] + '.md'))
        for name in extra:
            print('docs/docsite/rst/%s.rst: not listed in docs/docsite/extra-docs.yml' % name)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
