"""meta/execution-environment.yml: what ansible-builder reads from the collection to build an execution environment
(AWX, AAP). The file is a valid version 3 definition, the files it names exist and parse (pip requirements,
bindep), the artifact ships them, and ansible-builder's own introspection finds the system packages."""
import fnmatch
import os

import yaml
from ansible_builder.ee_schema import validate_schema
from ansible_builder._target_scripts import introspect
from bindep.depends import Depends

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EE = os.path.join(TOP, 'meta', 'execution-environment.yml')


def _definition():
    with open(EE) as handle:
        return yaml.safe_load(handle)


def _lines(rel):
    with open(os.path.join(TOP, rel)) as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith('#')]


def test_valid_version_3_definition():
    ee = _definition()
    assert ee['version'] == 3
    assert set(ee) == {'version', 'dependencies'}
    assert set(ee['dependencies']) == {'python', 'system'}
    validate_schema(_definition())      # raises DefinitionError on an unknown key or a wrong type


def test_referenced_files_exist_parse_and_ship():
    deps = _definition()['dependencies']
    for rel in deps.values():
        assert os.path.isfile(os.path.join(TOP, rel)), rel
    assert _lines(deps['python']) == []          # the controller side needs nothing beyond ansible-core
    packages = _lines(deps['system'])
    parsed = Depends('\n'.join(packages) + '\n')
    names = {rule[0] for rule in parsed._rules}
    assert {'util-linux', 'iproute2', 'busybox-static'} <= names
    assert parsed.active_rules(['platform:dpkg'])       # something to install on Debian ...
    assert parsed.active_rules(['platform:rpm'])        # ... and on the RHEL-based EE images
    with open(os.path.join(TOP, 'galaxy.yml')) as handle:
        directives = yaml.safe_load(handle)['manifest']['directives']
    includes = [pattern for d in directives if d.startswith('include ') for pattern in d.split()[1:]]
    for rel in ['meta/execution-environment.yml'] + list(deps.values()):
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in includes), '%s is not in the artifact' % rel


def test_ansible_builder_introspection_finds_the_packages():
    collections = os.path.join(TOP, '.build', 'collections')
    found = introspect.process(data_dir=collections)
    assert found['system']['vserver.core'] == _lines(_definition()['dependencies']['system'])
    assert 'vserver.core' not in found['python']
