"""roles/*/README.md are generated from meta/argument_specs.yml (tests/tools/role_readme.py) and kept in step."""
import os
import shutil
import subprocess
import sys

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(TOP, 'tests', 'tools', 'role_readme.py')


def _tool(*args):
    return subprocess.run([sys.executable, TOOL] + list(args), capture_output=True, text=True, timeout=60,
                          check=False)


def test_committed_readmes_match_the_argument_specs():
    res = _tool('--check')
    assert res.returncode == 0, res.stderr
    for role in os.listdir(os.path.join(TOP, 'roles')):
        specs_file = os.path.join(TOP, 'roles', role, 'meta', 'argument_specs.yml')
        if not os.path.isfile(specs_file):
            continue
        with open(specs_file, encoding='utf-8') as f:
            specs = yaml.safe_load(f)['argument_specs']
        with open(os.path.join(TOP, 'roles', role, 'README.md'), encoding='utf-8') as f:
            readme = f.read()
        assert readme.startswith('# vserver.core.%s\n' % role)
        for entry in specs.values():
            for name in entry.get('options') or {}:
                assert '| `%s` |' % name in readme, (role, name)


def test_a_changed_spec_makes_the_check_fail_until_regenerated(tmp_path):
    roles = tmp_path / 'roles'
    shutil.copytree(os.path.join(TOP, 'roles', 'migrate', 'meta'), roles / 'migrate' / 'meta')
    shutil.copy(os.path.join(TOP, 'roles', 'migrate', 'README.md'), roles / 'migrate' / 'README.md')
    assert _tool('--check', str(roles)).returncode == 0

    specs_file = roles / 'migrate' / 'meta' / 'argument_specs.yml'
    specs = yaml.safe_load(specs_file.read_text())
    specs['argument_specs']['main']['options']['migrate_new_knob'] = {
        'description': 'A knob with C(code) and a | pipe.', 'type': 'list', 'elements': 'str', 'default': ['a']}
    specs_file.write_text(yaml.safe_dump(specs))
    before = (roles / 'migrate' / 'README.md').read_text()

    res = _tool('--check', str(roles))
    assert res.returncode == 1
    assert str(roles / 'migrate' / 'README.md') in res.stderr and 'out of date' in res.stderr
    assert (roles / 'migrate' / 'README.md').read_text() == before  # --check writes nothing

    assert _tool(str(roles)).returncode == 0
    readme = (roles / 'migrate' / 'README.md').read_text()
    assert '| `migrate_new_knob` | list of str | no | `["a"]` | A knob with `code` and a \\| pipe. |' in readme
    assert _tool('--check', str(roles)).returncode == 0


def test_a_missing_readme_fails_the_check(tmp_path):
    roles = tmp_path / 'roles'
    shutil.copytree(os.path.join(TOP, 'roles', 'unify', 'meta'), roles / 'unify' / 'meta')
    res = _tool('--check', str(roles))
    assert res.returncode == 1 and 'unify/README.md is out of date' in res.stderr
