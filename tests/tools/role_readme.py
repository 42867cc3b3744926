"""Write (or check) roles/NAME/README.md from roles/NAME/meta/argument_specs.yml.

    python tests/tools/role_readme.py [--check] [ROLES_DIR]

Without --check every role's README.md is rewritten. With --check nothing is written: it lists the roles whose
README.md differs from what their argument_specs give and exits 1 (`make lint` runs it, and
tests/unit/test_role_readme.py). The README is generated: edit the argument specs, then run this script.
"""
import argparse
import json
import os
import re
import sys

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTION = 'vserver.core'
GENERATED = ('<!-- Generated from meta/argument_specs.yml by tests/tools/role_readme.py: edit the argument specs, '
             'then run `make role-readmes`. -->')

# Ansible documentation markup -> Markdown
_MARKUP = [
    (re.compile(r'L\(([^)]+?),\s*([^)]+)\)'), r'[\1](\2)'),
    (re.compile(r'U\(([^)]+)\)'), r'<\1>'),
    (re.compile(r'I\(([^)]+)\)'), r'*\1*'),
    (re.compile(r'B\(([^)]+)\)'), r'**\1**'),
    (re.compile(r'\b(?:C|O|V|E|RV|M)\(([^)]+)\)'), r'`\1`'),
]


def _text(value):
    """A description (a string or a list of paragraphs) as Markdown paragraphs."""
    paragraphs = value if isinstance(value, list) else [value or '']
    out = []
    for para in paragraphs:
        para = ' '.join(str(para).split())
        for pattern, repl in _MARKUP:
            para = pattern.sub(repl, para)
        out.append(para)
    return out


def _cell(text):
    return text.replace('|', '\\|')


def _value(value):
    if isinstance(value, str):
        return '`%s`' % value if value else '`""`'
    return '`%s`' % json.dumps(value)


def _type(spec):
    kind = spec.get('type', 'str')
    if kind == 'list' and spec.get('elements'):
        kind = 'list of %s' % spec['elements']
    return kind


def render(role, specs):
    """The README.md text of one role from its parsed argument_specs document."""
    lines = ['# %s.%s' % (COLLECTION, role), '', GENERATED, '']
    entry_points = specs['argument_specs']
    for entry, spec in entry_points.items():
        if entry != 'main' or len(entry_points) > 1:
            call = 'tasks_from: %s' % entry if entry != 'main' else 'the role itself'
            lines += ['## Entry point `%s` (%s)' % (entry, call), '']
        lines += _text(spec.get('short_description', '')) + ['']
        for para in _text(spec.get('description', [])):
            lines += [para, '']
        options = spec.get('options') or {}
        if not options:
            lines += ['No variables.', '']
            continue
        lines += ['| variable | type | required | default | description |', '| --- | --- | --- | --- | --- |']
        for name, opt in options.items():
            default = _value(opt['default']) if 'default' in opt else ''
            desc = ' '.join(_text(opt.get('description', '')))
            if opt.get('choices'):
                desc += ' Choices: %s.' % ', '.join(_value(c) for c in opt['choices'])
            lines.append('| `%s` | %s | %s | %s | %s |' % (
                name, _type(opt), 'yes' if opt.get('required') else 'no', _cell(default), _cell(desc)))
        lines.append('')
    lines += ['How the roles work together, and the playbooks that run them: [docs/roles.md](../../docs/roles.md).']
    return '\n'.join(lines) + '\n'


def roles(roles_dir):
    for role in sorted(os.listdir(roles_dir)):
        specs = os.path.join(roles_dir, role, 'meta', 'argument_specs.yml')
        if os.path.isfile(specs):
            yield role, specs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 when a README is out of date')
    parser.add_argument('roles_dir', nargs='?', default=os.path.join(TOP, 'roles'))
    args = parser.parse_args(argv)
    stale = []
    found = 0
    for role, specs in roles(args.roles_dir):
        found += 1
        with open(specs, encoding='utf-8') as f:
            text = render(role, yaml.safe_load(f))
        readme = os.path.join(args.roles_dir, role, 'README.md')
        try:
            with open(readme, encoding='utf-8') as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        if args.check:
            stale.append(readme)
        else:
            with open(readme, 'w', encoding='utf-8') as f:
                f.write(text)
            print('wrote %s' % readme)
    if not found:
        print('no role with meta/argument_specs.yml under %s' % args.roles_dir, file=sys.stderr)
        return 1
    for readme in stale:
        print('%s is out of date with meta/argument_specs.yml: run tests/tools/role_readme.py' % readme,
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
