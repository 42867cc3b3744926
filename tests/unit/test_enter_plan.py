"""Entering a guest: which cgroup directories the entry joins, from init's /proc/PID/cgroup and the host's mounts."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _enter, _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

HYBRID = '\n'.join([
    '30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu',
    '31 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory',
    '32 25 0:28 / /sys/fs/cgroup/systemd rw,relatime shared:11 - cgroup cgroup rw,name=systemd',
    '33 25 0:29 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw',
    '34 25 0:30 / /sys/fs/cgroup/cpuset,cpuacct rw,relatime shared:13 - cgroup cgroup rw,cpuset,cpuacct',
    '35 25 0:31 /delegated /mnt/deleg rw,relatime shared:14 - cgroup2 cgroup2 rw',
])


@pytest.mark.parametrize('cgroup,expected', [
    ('4:memory:/vservers/web\n1:cpu:/vservers/web\n0::/vservers/web\n',
     ['/sys/fs/cgroup/memory/vservers/web', '/sys/fs/cgroup/cpu/vservers/web', '/sys/fs/cgroup/unified/vservers/web']),
    ('2:cpuset,cpuacct:/vservers/web\n3:name=systemd:/user.slice\n',
     ['/sys/fs/cgroup/cpuset,cpuacct/vservers/web', '/sys/fs/cgroup/systemd/user.slice']),
    ('9:pids:/\n', []),  # not mounted on the host, and at its root: nothing to join
])
def test_cgroup_dirs_per_hierarchy(cgroup, expected):
    assert _enter.cgroup_dirs(cgroup, P.parse_mountinfo(HYBRID)) == expected


def test_cgroup_dirs_below_a_mount_root():
    mounts = [m for m in P.parse_mountinfo(HYBRID) if m['mountpoint'] != '/sys/fs/cgroup/unified']
    assert _enter.cgroup_dirs('0::/delegated/vservers/web\n', mounts) == ['/mnt/deleg/vservers/web']


def test_a_hierarchy_the_host_has_not_mounted_fails_clearly():
    with pytest.raises(VServerError, match="cgroup hierarchy 'pids' of the guest is not mounted"):
        _enter.cgroup_dirs('9:pids:/vservers/web\n', P.parse_mountinfo(HYBRID))
