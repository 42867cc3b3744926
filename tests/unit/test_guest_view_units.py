"""The guest view's pure parts: which LXCFS mount is live (mountinfo), why a guest's init ended (wait status)."""
import os
import signal

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _lxcfs, _runtime_exit

MOUNTINFO = """22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
71 22 0:50 / /var/lib/lxcfs rw,nosuid,nodev,relatime - fuse.lxcfs lxcfs rw,user_id=0,group_id=0,allow_other
80 22 0:60 / /srv/other rw - fuse.sshfs host: rw
81 22 0:61 / /srv/stacked rw - fuse.lxcfs lxcfs rw
82 81 0:62 / /srv/stacked rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize('path,want', [('/var/lib/lxcfs', 71), ('/srv/other', None), ('/srv/stacked', None),
                                       ('/nowhere', None)])
def test_mount_id_is_the_lxcfs_mount_seen_at_the_path(tmp_path, path, want):
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO)
    assert _lxcfs.mount_id(path, str(info)) == want     # a mount over it hides it (the last one counts)


def _status(sig=None, code=None):
    if sig is not None:
        return sig & 0x7f
    return (code & 0xff) << 8


@pytest.mark.parametrize('status,want', [(_status(sig=signal.SIGHUP), 'reboot'), (_status(sig=signal.SIGINT), 'halt'),
                                         (_status(sig=signal.SIGKILL), None), (_status(sig=signal.SIGTERM), None),
                                         (_status(code=0), None), (_status(code=1), None), (None, None)])
def test_exit_reason(status, want):
    if status is not None:
        assert os.WIFSIGNALED(status) == (want is not None or status & 0x7f != 0)
    assert _runtime_exit.reason(status) == want


def test_enabled_by_default_off_only_by_false():
    assert _lxcfs.enabled({}) and _lxcfs.enabled({'lxcfs': True}) and not _lxcfs.enabled({'lxcfs': False})


@pytest.mark.parametrize('value', ['yes', 1, 'false', []])
def test_lxcfs_key_takes_only_a_boolean(value):
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_context
    from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
    with pytest.raises(VServerError) as err:
        _mgr_context.validate({'name': 'vs18v-x', 'lxcfs': value})
    assert err.value.field == 'lxcfs' and 'true or false' in str(err.value)
    assert _mgr_context.validate({'name': 'vs18v-x', 'lxcfs': False})['lxcfs'] is False


def test_directory_from_env_then_defaults_file(tmp_path, monkeypatch):
    defaults = tmp_path / 'vserver'
    defaults.write_text('VSERVER_LXCFS_DIR=/srv/lxcfs\nVSERVER_RUN_DIR=/run/x\n')
    monkeypatch.delenv(_lxcfs.ENV, raising=False)
    assert _lxcfs.directory(str(defaults)) == '/srv/lxcfs'
    assert _lxcfs.directory(str(tmp_path / 'none')) == '/var/lib/lxcfs'
    monkeypatch.setenv(_lxcfs.ENV, '/x/y')
    assert _lxcfs.directory(str(defaults)) == '/x/y'
