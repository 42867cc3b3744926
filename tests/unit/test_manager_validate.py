"""Every context option is validated before anything is touched."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _mgr_context
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError


@pytest.mark.parametrize('params,field,words', [
    ({'name': 'a/b'}, 'name', 'lowercase'),
    ({'name': 'ok', 'state': 'running'}, 'state', 'present, started'),
    ({'name': 'ok', 'template': 'debian'}, 'template', 'busybox, none'),
    ({'name': 'ok', 'xid': 1}, 'xid', '2 to 49151'),
    ({'name': 'ok', 'root': 'relative/tree'}, 'root', 'absolute'),
    ({'name': 'ok', 'root': '/usr'}, 'root', 'dedicated'),
    ({'name': 'ok', 'hostname': 'bad_host!'}, 'hostname', 'DNS name'),
    ({'name': 'ok', 'init': 'sbin/init'}, 'init', 'absolute path'),
    ({'name': 'ok', 'init': []}, 'init', 'argv'),
    ({'name': 'ok', 'stop_signal': 'SIGFOO'}, 'stop_signal', 'SIGTERM'),
    ({'name': 'ok', 'stop_timeout': -1}, 'stop_timeout', '0 to 3600'),
])
def test_bad_options(params, field, words):
    with pytest.raises(VServerError) as err:
        _mgr_context.validate(params)
    assert err.value.field == field
    assert words in str(err.value)


def test_normalization():
    opts = _mgr_context.validate({'name': 'web', 'init': '/sbin/init', 'stop_signal': 'pwr', 'stop_timeout': '5',
                                  'root': '/srv/g/../g/web/'})
    assert opts['init'] == ['/sbin/init'] and opts['stop_signal'] == 'SIGPWR' and opts['stop_timeout'] == 5
    assert opts['root'] == '/srv/g/web' and opts['state'] == 'present' and opts['template'] == 'busybox'


MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 8:1 /srv/data /var/lib/vservers/web/mnt/data rw - ext4 /dev/sda1 rw
41 22 0:50 / /var/lib/vservers/web/tmp\\040x rw - tmpfs tmpfs rw
42 22 0:51 / /var/lib/vservers/web2/mnt rw - tmpfs tmpfs rw
43 22 7:0 / /var/lib/vservers/web rw - ext4 /dev/loop0 rw
"""


@pytest.mark.parametrize('root, below', [
    ('/var/lib/vservers/web', ['/var/lib/vservers/web/mnt/data', '/var/lib/vservers/web/tmp x']),
    ('/var/lib/vservers/web/', ['/var/lib/vservers/web/mnt/data', '/var/lib/vservers/web/tmp x']),
    ('/var/lib/vservers/web2', ['/var/lib/vservers/web2/mnt']),   # web2 is not below web, nor web below web2
    ('/var/lib/vservers/other', []),
])
def test_mounts_below_a_tree(tmp_path, root, below):
    mountinfo = tmp_path / 'mountinfo'
    mountinfo.write_text(MOUNTINFO)
    assert _mgr_context.mounts_below(root, str(mountinfo)) == below


def test_only_own_build_siblings_are_stale(tmp_path):
    from ansible_collections.vserver.core.plugins.module_utils import _template
    for entry in ('.web.build-k2x9_q0a', '.web.build-abc', '.web.build-.build-abcdefgh', '.web.build-x.bootstrap',
                  '.web2.build-abcdefgh', 'web', '.web.bootstrap'):
        (tmp_path / entry).mkdir()
    assert _template.stale_builds(str(tmp_path / 'web')) == [str(tmp_path / '.web.build-k2x9_q0a')]
    assert _template.stale_builds(str(tmp_path / 'missing' / 'web')) == []
