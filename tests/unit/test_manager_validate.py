"""Every context option is validated before anything is touched."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _manager
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
        _manager.validate(params)
    assert err.value.field == field
    assert words in str(err.value)


def test_normalization():
    opts = _manager.validate({'name': 'web', 'init': '/sbin/init', 'stop_signal': 'pwr', 'stop_timeout': '5',
                              'root': '/srv/g/../g/web/'})
    assert opts['init'] == ['/sbin/init'] and opts['stop_signal'] == 'SIGPWR' and opts['stop_timeout'] == 5
    assert opts['root'] == '/srv/g/web' and opts['state'] == 'present' and opts['template'] == 'busybox'
