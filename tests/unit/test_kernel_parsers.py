"""/proc parsers, fed fake files."""
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P

STAT = '4273 (my (odd) init) S 1 4273 4273 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 39198 2424832 70 x'
MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""


def test_parse_stat_handles_parentheses_in_comm():
    state, ppid, start, cpu = P.parse_stat(STAT)
    assert (state, ppid, start, cpu) == ('S', 1, 39198, 10)


def test_parse_mountinfo():
    mounts = P.parse_mountinfo(MOUNTINFO)
    assert [m['mountpoint'] for m in mounts] == ['/', '/sys/fs/cgroup/cpu', '/sys/fs/cgroup/unified',
                                                 '/mnt/with space']
    assert mounts[1]['fstype'] == 'cgroup' and mounts[1]['super'] == 'rw,cpu'
    assert mounts[2]['fstype'] == 'cgroup2'


def test_parse_status():
    status = P.parse_status('Name:\tinit\nNSpid:\t4273\t1\nCapBnd:\t00000000a00c05fb\n')
    assert status['NSpid'].split() == ['4273', '1'] and status['Name'] == 'init'


def test_read_stat_of_a_missing_pid(tmp_path):
    assert P.read_stat(12345, proc=str(tmp_path)) is None
