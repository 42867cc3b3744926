"""_runtime_boot's pure parts: the init's kind read from a /proc/PID-like directory (its ``exe`` link), the stop
signal each kind gets, the stable container_uuid."""
import os
import re
import signal

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _runtime_boot as B

RTMIN3 = signal.SIGRTMIN + 3


@pytest.mark.parametrize('exe, kind', [
    ('/usr/lib/systemd/systemd', 'systemd'),
    ('/lib/systemd/systemd', 'systemd'),
    ('/usr/sbin/init', 'sysvinit'),
    ('/sbin/init', 'sysvinit'),
    ('/bin/busybox', None),
    ('/usr/sbin/nginx', None),
    ('/usr/lib/systemd/systemd-journald', None),
    ('/opt/init', None),
])
def test_init_kind_from_the_exe_link(tmp_path, exe, kind):
    os.symlink(exe, str(tmp_path / 'exe'))
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert B.init_kind(fd) == kind
    finally:
        os.close(fd)


def test_init_kind_of_a_gone_process(tmp_path):
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)   # no exe link: as a process that exited
    try:
        assert B.init_kind(fd) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize('kind, configured, sent', [
    ('systemd', signal.SIGTERM, RTMIN3),          # the default: systemd would re-execute itself
    ('sysvinit', signal.SIGTERM, signal.SIGPWR),  # the default: sysvinit ignores it
    ('systemd', signal.SIGKILL, signal.SIGKILL),  # anything set explicitly is used as is
    ('systemd', signal.SIGINT, signal.SIGINT),
    ('sysvinit', RTMIN3, RTMIN3),
    (None, signal.SIGTERM, signal.SIGTERM),
])
def test_stop_signal(kind, configured, sent):
    assert B.stop_signal(kind, int(configured)) == int(sent)


def test_container_uuid_is_stable_per_guest_and_shaped_as_systemd_wants():
    one = B.container_uuid({'name': 'web', 'xid': 1501})
    assert one == B.container_uuid({'name': 'web', 'xid': 1501, 'root': '/elsewhere'})
    assert one != B.container_uuid({'name': 'web', 'xid': 1502})
    assert one != B.container_uuid({'name': 'web2', 'xid': 1501})
    assert re.match(r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$', one), one


def test_guest_init_kind_of_a_systemd_binary(tmp_path):
    """Resolved as the guest's init sees its root (here: absolute test paths), symlinks followed to the file."""
    (tmp_path / 'lib/systemd').mkdir(parents=True)
    (tmp_path / 'lib/systemd/systemd').write_text('')
    os.symlink(str(tmp_path / 'lib/systemd/systemd'), str(tmp_path / 'init'))
    os.symlink('loop', str(tmp_path / 'loop'))
    (tmp_path / 'busybox').write_text('')
    os.symlink(str(tmp_path / 'busybox'), str(tmp_path / 'bbinit'))
    assert B.guest_init_kind(str(tmp_path / 'init')) == 'systemd'
    assert B.guest_init_kind(str(tmp_path / 'bbinit')) is None
    assert B.guest_init_kind(str(tmp_path / 'loop')) is None
    assert B.guest_init_kind(str(tmp_path / 'missing')) is None
    assert B.guest_init_kind(str(tmp_path / 'lib')) is None      # a directory
