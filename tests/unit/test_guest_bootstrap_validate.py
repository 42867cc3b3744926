"""The guest role's tree builder (module_utils _bootstrap, _apt_sources; module _guest_bootstrap) without a network:
input checks, apt sources parsing, mirror choice, mountinfo parsing, the tool's command line and the refusal of
directories that are not ours."""
import json
import os
import subprocess
import sys
import types

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _apt_sources, _bootstrap

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(TOP, 'plugins', 'modules', '_guest_bootstrap.py')
# the builder and the apt sources parser, under one name as when they were one script
gb = types.SimpleNamespace(**dict(vars(_apt_sources), **vars(_bootstrap)))


def request(**over):
    req = {'name': 'web', 'tool': 'mmdebstrap', 'suite': 'bookworm', 'variant': 'minbase',
           'mirror': 'http://mirror.invalid/debian', 'components': ['main'], 'packages': [], 'root': '/srv/vs/web',
           'timeout': 60}
    req.update(over)
    return req


def refused(**over):
    with pytest.raises(gb.Refused) as info:
        gb.check_request(request(**over))
    return str(info.value)


def test_a_good_request_passes_and_is_normalised():
    out = gb.check_request(request(root='/srv/vs//web/', packages=['hello', 'libc6-dev', 'g++', 'python3.11'],
                                   components=['main', 'contrib', 'non-free-firmware']))
    assert out['root'] == '/srv/vs/web'
    assert out['packages'] == ['hello', 'libc6-dev', 'g++', 'python3.11']


@pytest.mark.parametrize('packages, bad', [
    (['Hello'], "'Hello'"), (['a'], "'a'"), (['-x'], "'-x'"), (['x y'], "'x y'"), (['hello', 'x,y'], "'x,y'"),
    (['ok', 'b@d'], "'b@d'"), (['pkg=1.0'], "'pkg=1.0'"),
])
def test_bad_package_names_name_the_field(packages, bad):
    msg = refused(packages=packages)
    assert msg.startswith('vserver_guests[web].packages: ') and bad in msg and 'is not a package name' in msg


def test_package_list_type_and_field_of_the_role_default():
    assert 'must be a list of package names' in refused(packages='hello')
    msg = refused(packages=['Bad'], fields={'packages': 'guest_packages'})
    assert msg.startswith('guest_packages: ')


@pytest.mark.parametrize('components', [[], ['Main'], ['main', 'con trib'], 'main', [1]])
def test_bad_components(components):
    assert refused(components=components).startswith('vserver_guests[web].components')


@pytest.mark.parametrize('suite', ['Bookworm', '', 'book worm', '../x', 'a/b', None, 12])
def test_bad_suites(suite):
    assert refused(suite=suite).startswith('vserver_guests[web].suite must be a Debian suite')


def test_variants_per_tool():
    assert gb.check_request(request(variant='buildd'))
    assert gb.check_request(request(tool='debootstrap', variant='important'))
    assert 'must be one of minbase, buildd, fakechroot, important for debootstrap' in \
        refused(tool='debootstrap', variant='essential')
    assert refused(variant='tiny').startswith('vserver_guests[web].variant')
    assert refused(tool='cdebootstrap').startswith('vserver_guests[web].template must be one of mmdebstrap, debootstrap')


@pytest.mark.parametrize('mirror, ok', [
    ('http://deb.example.invalid/debian', True), ('https://deb.example.invalid/debian/', True),
    ('file:///srv/mirror', True), ('', True), ('ftp://x/debian', False), ('http:///debian', False),
    ('file://host/srv', False), ('file:relative', False), ('http://x/debian main', False),
    ('http://x/a,http://y/b', False), ('/srv/mirror', False), ('deb http://x/ bookworm main', False),
])
def test_mirror_urls(mirror, ok):
    if ok:
        assert gb.check_request(request(mirror=mirror))['mirror'] == mirror
    else:
        assert refused(mirror=mirror).startswith('vserver_guests[web].mirror')


@pytest.mark.parametrize('root', ['relative/web', '/', '//', '/srv/../etc', '/srv/./x', None, '/a\x00b'])
def test_bad_roots(root):
    assert refused(root=root).startswith('vserver_guests[web].root must be an absolute path')


@pytest.mark.parametrize('timeout', [0, -1, 'ten', True, None])
def test_bad_timeouts(timeout):
    assert refused(timeout=timeout, fields={'timeout': 'guest_bootstrap_timeout'}).startswith(
        'guest_bootstrap_timeout must be a positive number')


def test_bad_name():
    assert 'bad guest name' in refused(name='Web!')


def test_one_line_sources():
    text = '\n'.join([
        '# deb http://commented.invalid/debian bookworm main',
        'deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://a.invalid/debian bookworm main contrib',
        'deb-src http://src.invalid/debian bookworm main',
        'deb http://b.invalid/debian-security bookworm-security main  # trailing comment',
        'deb cdrom:[Debian]/ bookworm main',
        '',
    ])
    assert gb.parse_one_line(text) == [
        ('http://a.invalid/debian', 'bookworm', ['main', 'contrib']),
        ('http://b.invalid/debian-security', 'bookworm-security', ['main']),
        ('cdrom:[Debian]/', 'bookworm', ['main']),
    ]


def test_deb822_sources():
    text = '''Types: deb deb-src
# a comment inside the stanza
URIs: http://a.invalid/debian
Suites: bookworm bookworm-updates
Components: main
 contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://off.invalid/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://src.invalid/debian
Suites: bookworm
Components: main
'''
    assert gb.parse_deb822(text) == [('http://a.invalid/debian', 'bookworm', ['main', 'contrib']),
                                     ('http://a.invalid/debian', 'bookworm-updates', ['main', 'contrib'])]


def test_pick_mirror_prefers_the_suite_then_the_host_release():
    entries = [('https://third-party.invalid/apt', 'nodistro', ['main']),
               ('http://sec.invalid/debian-security', 'bookworm-security', ['main']),
               ('http://a.invalid/debian', 'bookworm', ['main']),
               ('http://t.invalid/debian', 'trixie', ['main']),
               ('cdrom:[x]/', 'sid', ['main']),
               ('http://nomain.invalid/debian', 'sid', ['contrib'])]
    assert gb.pick_mirror(entries, 'trixie', 'bookworm') == 'http://t.invalid/debian'
    assert gb.pick_mirror(entries, 'sid', 'bookworm') == 'http://a.invalid/debian'
    assert gb.pick_mirror(entries, 'sid', None) is None
    assert gb.pick_mirror([], 'bookworm', 'bookworm') is None


def test_host_sources_reads_both_formats(tmp_path):
    (tmp_path / 'sources.list').write_text('deb http://one.invalid/debian bookworm main\n')
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'b.list').write_text('deb [trusted=yes] http://three.invalid/debian sid main\n')
    (tmp_path / 'd' / 'x.sources').write_text(
        'Types: deb\nURIs: http://two.invalid/debian\nSuites: trixie\nComponents: main\n')
    entries = gb.host_sources((str(tmp_path / 'sources.list'), str(tmp_path / 'd' / '*.list'),
                               str(tmp_path / 'd' / '*.sources')))
    assert entries == [('http://one.invalid/debian', 'bookworm', ['main']),
                       ('http://three.invalid/debian', 'sid', ['main']),
                       ('http://two.invalid/debian', 'trixie', ['main'])]


def test_mounts_under_deepest_first_with_escapes(tmp_path):
    info = tmp_path / 'mountinfo'
    info.write_text('\n'.join([
        '22 1 8:1 / / rw - ext4 /dev/root rw',
        '30 22 0:5 / /srv/vs/.web.bootstrap/proc rw - proc proc rw',
        '31 22 0:6 / /srv/vs/.web.bootstrap/dev rw - tmpfs tmpfs rw',
        '32 31 0:7 / /srv/vs/.web.bootstrap/dev/pts rw - devpts devpts rw',
        '33 22 0:8 / /srv/vs/.web.bootstrap/with\\040space rw - tmpfs tmpfs rw',
        '34 22 0:9 / /srv/vs/.web.bootstrap-other rw - tmpfs tmpfs rw',
        '35 22 0:9 / /srv/vs/.web.bootstrap rw - tmpfs tmpfs rw',
        '',
    ]))
    points = gb.mounts_under('/srv/vs/.web.bootstrap', str(info))
    assert points[0] == '/srv/vs/.web.bootstrap/dev/pts'
    assert points[-1] == '/srv/vs/.web.bootstrap'
    assert set(points) == {'/srv/vs/.web.bootstrap/proc', '/srv/vs/.web.bootstrap/dev', '/srv/vs/.web.bootstrap/dev/pts',
                           '/srv/vs/.web.bootstrap/with space', '/srv/vs/.web.bootstrap'}


def test_tool_command_lines(monkeypatch):
    monkeypatch.setattr(_bootstrap, 'find_tool', lambda tool: '/usr/bin/' + tool)
    req = gb.check_request(request(packages=['hello', 'less'], components=['main', 'contrib']))
    assert gb.tool_argv(req, '/srv/vs/.web.bootstrap') == [
        '/usr/bin/mmdebstrap', '--variant=minbase', '--components=main,contrib', '--include=hello,less', 'bookworm',
        '/srv/vs/.web.bootstrap', 'http://mirror.invalid/debian']
    req = gb.check_request(request(tool='debootstrap', variant='important'))
    assert gb.tool_argv(req, '/t') == ['/usr/bin/debootstrap', '--components=main', 'bookworm', '/t',
                                       'http://mirror.invalid/debian']


def test_temp_dir_is_a_hidden_sibling():
    assert gb.temp_of('/srv/vs/web') == '/srv/vs/.web.bootstrap'


def test_root_states(tmp_path):
    root = tmp_path / 'web'
    req = gb.check_request(request(root=str(root)))
    assert gb.root_state(req) == 'absent'
    root.mkdir()
    assert gb.root_state(req) == 'empty'
    (root / 'data').write_text('precious')
    with pytest.raises(gb.Refused) as info:
        gb.root_state(req)
    assert str(info.value).startswith('vserver_guests[web].root: %s is not empty and has no /etc' % root)
    (root / 'etc').mkdir()
    assert gb.root_state(req) == 'built'
    link = tmp_path / 'link'
    link.symlink_to(tmp_path / 'nowhere')
    with pytest.raises(gb.Refused, match='symbolic link'):
        gb.root_state(gb.check_request(request(root=str(link))))
    afile = tmp_path / 'file'
    afile.write_text('')
    with pytest.raises(gb.Refused, match='not a directory'):
        gb.root_state(gb.check_request(request(root=str(afile))))


def run_module(args, check=False, env=None):
    """The private module run as Ansible runs it on the host (its arguments in a file): (rc, result)."""
    import tempfile
    with tempfile.NamedTemporaryFile('w', suffix='.json') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=check)}, handle)
        handle.flush()
        environ = dict(env or os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.run([sys.executable, MODULE, handle.name], capture_output=True, text=True, env=environ,
                              timeout=120, check=False)
    return proc.returncode, json.loads(proc.stdout)


def run_helper(payload):
    check = payload.pop('check', False)
    return run_module(payload, check)


def test_plan_reports_every_bad_entry_at_once_and_writes_nothing(tmp_path):
    root = tmp_path / 'busy'
    root.mkdir()
    (root / 'data').write_text('x')
    rc, out = run_helper({'mode': 'plan', 'guests': [
        request(name='a', packages=['OK'], root=str(tmp_path / 'a')),
        request(name='b', components=['Main'], root=str(tmp_path / 'b')),
        request(name='c', root=str(root)),
        request(name='d', root=str(tmp_path / 'd')),
    ]})
    assert rc == 1 and out['failed']
    assert 'vserver_guests[a].packages' in out['msg'] and 'vserver_guests[b].components' in out['msg']
    assert 'vserver_guests[c]' not in out['msg'] and 'vserver_guests[d]' not in out['msg']
    assert sorted(os.listdir(tmp_path)) == ['busy']


def test_plan_refuses_a_busy_root_for_that_guest_only(tmp_path):
    root = tmp_path / 'busy'
    root.mkdir()
    (root / 'data').write_text('x')
    rc, out = run_helper({'mode': 'plan', 'guests': [request(name='c', root=str(root)),
                                                     request(name='d', root=str(tmp_path / 'd'))]})
    assert rc == 0 and not out.get('failed')
    c, d = out['guests']
    assert not c['build'] and c['refused'].startswith('vserver_guests[c].root: %s is not empty and has no /etc' % root)
    assert d['build'] and 'refused' not in d
    assert sorted(os.listdir(tmp_path)) == ['busy']


def test_plan_of_good_entries(tmp_path):
    (tmp_path / 'built' / 'etc').mkdir(parents=True)
    guests = [request(name='new', root=str(tmp_path / 'new')), request(name='built', root=str(tmp_path / 'built'))]
    rc, out = run_helper({'mode': 'plan', 'guests': guests})
    assert rc == 0 and not out.get('failed')
    assert [(g['name'], g['build']) for g in out['guests']] == [('new', True), ('built', False)]


def test_check_mode_build_writes_nothing(tmp_path):
    rc, out = run_helper({'mode': 'build', 'check': True, 'guest': request(root=str(tmp_path / 'x' / 'web'))})
    assert rc == 0 and out['changed'] is True
    assert os.listdir(tmp_path) == []


def test_unknown_mode():
    rc, out = run_helper({'mode': 'nope'})
    assert rc == 1 and 'mode must be one of: plan, build, unpack' in out['msg']
