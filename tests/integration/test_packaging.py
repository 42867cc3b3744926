"""The collection artifact: ``ansible-galaxy collection build`` output installs, and its modules run.

The artifact is built from the work tree, installed into an empty collections path, and a module is run
from that installed copy only: ANSIBLE_COLLECTIONS_PATH names nothing else and sys.path scanning is off,
so the repo's own tree (or .build/collections) cannot stand in for it.
"""
import json
import os
import subprocess
import sys
import tarfile

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _env(collections_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith('ANSIBLE_') and k != 'PYTHONPATH'}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections_path), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH='False',
               ANSIBLE_NOCOLOR='1', ANSIBLE_LOCAL_TEMP=str(collections_path.parent / 'ansible-tmp'))
    return env


def _run(argv, cwd, env, timeout=120):
    return subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _build(tmp_path):
    dist = tmp_path / 'dist'
    res = _run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', '--force', '--output-path', str(dist), TOP],
               tmp_path, _env(tmp_path / 'unused'))
    assert res.returncode == 0, res.stdout + res.stderr
    artifacts = sorted(p for p in os.listdir(dist) if p.endswith('.tar.gz'))
    assert len(artifacts) == 1 and artifacts[0].startswith('vserver-core-'), artifacts
    return dist / artifacts[0]


def _run_module(tmp_path, collections_path, module, args):
    argv = [os.path.join(BIN, 'ansible'), 'localhost', '-i', 'localhost,', '-c', 'local', '-m', module,
            '-a', json.dumps(args), '-e', 'ansible_python_interpreter=/usr/bin/python3']
    return _run(argv, tmp_path, _env(collections_path))


def _host_result(stdout):
    """The module result from an ad-hoc run's output: ``localhost | SUCCESS => {...}``."""
    head, sep, body = stdout.partition(' => ')
    assert sep and head.startswith('localhost | SUCCESS'), stdout
    return json.loads(body)


def _tracked(*dirs):
    """The files git tracks under ``dirs`` (what a user of the collection needs from those directories)."""
    res = subprocess.run(['git', 'ls-files', '-z', '--'] + list(dirs), cwd=TOP, capture_output=True, text=True,
                         timeout=60, check=True)
    return {name for name in res.stdout.split('\0') if name and os.path.isfile(os.path.join(TOP, name))}


def test_artifact_contents(tmp_path):
    artifact = _build(tmp_path)
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile('MANIFEST.json'))
        copying = tar.extractfile('COPYING').read().decode('utf-8')
    info = manifest['collection_info']
    assert (info['namespace'], info['name']) == ('vserver', 'core')
    assert info['license'] == ['GPL-3.0-or-later']
    assert 'GNU GENERAL PUBLIC LICENSE' in copying and 'Version 3, 29 June 2007' in copying
    for key in ('repository', 'issues', 'documentation', 'homepage'):
        assert info[key].startswith('https://github.com/vserver-core/vserver.core'), (key, info[key])
    for needed in ('meta/runtime.yml', 'plugins/modules/context.py', 'plugins/modules/context_info.py',
                   'plugins/module_utils/_runtime.py', 'plugins/doc_fragments/_paths.py', 'changelogs/config.yaml',
                   'changelogs/changelog.yaml', 'README.md', 'COPYING', 'bin/vserver', 'playbooks/site.yml',
                   'playbooks/migrate.yml', 'roles/host/files/vserver_supervise.py',
                   'roles/migrate/meta/argument_specs.yml'):
        assert needed in names, needed
    roles = sorted(d for d in os.listdir(os.path.join(TOP, 'roles')) if os.path.isdir(os.path.join(TOP, 'roles', d)))
    assert roles
    for role in roles:
        assert 'roles/%s/README.md' % role in names, role
    # everything tracked under plugins/, roles/ and playbooks/ ships (role files/, templates/, the inventory example)
    missing = _tracked('plugins', 'roles', 'playbooks', 'meta', 'docs') - names
    assert not missing, sorted(missing)
    # only what users need: no test suites, benchmarks, molecule scenarios, make/CI/dev tooling, build products,
    # the venv, VCS data, caches
    for name in names:
        top = name.split('/')[0]
        assert top not in ('tests', 'bench', 'molecule', '.build', '.venv', '.git', '.ci', '.cache',
                           'Makefile', 'requirements-dev.txt', 'pytest.ini', '.ansible-lint', '.gitignore'), name
        assert not name.startswith('tests/output'), name
        assert '__pycache__' not in name and not name.endswith(('.pyc', '.tar.gz')), name
        assert '.pytest_cache' not in name, name


def test_installed_artifact_runs_a_module(tmp_path, make_guest, host_paths):
    artifact = _build(tmp_path)
    installed = tmp_path / 'collections'
    empty = tmp_path / 'empty-collections'
    empty.mkdir()

    # Control: with only an empty collections path the module cannot be resolved, so a success below can
    # only come from the installed artifact.
    res = _run_module(tmp_path, empty, 'vserver.core.context_info', {})
    assert res.returncode != 0
    assert "Cannot resolve 'vserver.core.context_info'" in res.stdout + res.stderr, res.stdout + res.stderr

    res = _run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', '--offline', '-p', str(installed),
                str(artifact)], tmp_path, _env(installed))
    assert res.returncode == 0, res.stdout + res.stderr
    root = installed / 'ansible_collections' / 'vserver' / 'core'
    assert (root / 'plugins' / 'modules' / 'context_info.py').is_file()
    assert not os.path.islink(root)
    with open(root / 'MANIFEST.json', encoding='utf-8') as f:
        assert json.load(f)['collection_info']['name'] == 'core'

    guest = make_guest('vstpkg', start=True)
    args = {'config_dir': host_paths.config_dir, 'run_dir': host_paths.run_dir, 'tree_dir': host_paths.tree_dir,
            'log_dir': host_paths.log_dir, 'cgroup_parent': host_paths.cgroup_parent}
    res = _run_module(tmp_path, installed, 'vserver.core.context_info', args)
    assert res.returncode == 0, res.stdout + res.stderr
    result = _host_result(res.stdout)
    assert result.get('changed') is False
    [entry] = result['guests']
    assert (entry['name'], entry['xid'], entry['state']) == ('vstpkg', guest['xid'], 'running')
    init_pid = entry['init_pid']
    assert init_pid and os.path.exists('/proc/%d' % init_pid)
    # the guest's init as seen by the installed module's spectator view: labelled with the guest's xid
    labelled = [p for p in result['processes'] if p['pid'] == init_pid]
    assert labelled and labelled[0]['xid'] == guest['xid'], labelled
