"""util-vserver's per-guest files mapped without root: names, units, netmasks, CPU shares (plugins/module_utils/_legacy)."""
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _legacy
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError, check_name


@pytest.mark.parametrize('dirname,name', [
    ('web', 'web'), ('Mail', 'mail'), ('my guest', 'my-guest'), ('.hidden', 'hidden'), ('a..b', 'a.b'),
    ('x' * 80, 'x' * 63), ('ümlaut', '-mlaut'),
])
def test_guest_names_map_to_valid_ones(dirname, name):
    assert _legacy.guest_name(dirname) == name
    check_name(name)


@pytest.mark.parametrize('shares,weight', [(2, 1), (1024, 39), (262144, 10000), (512, 20)])
def test_cpu_shares_to_weight(shares, weight):
    assert _legacy._shares_to_weight(shares) == weight


def _guest(tmp_path, files):
    legacy = tmp_path / 'vservers'
    tree = tmp_path / 'tree'
    tree.mkdir()
    for rel, text in files.items():
        path = legacy / 'g' / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (legacy / 'g').mkdir(parents=True, exist_ok=True)
    os.symlink(str(tree), str(legacy / 'g' / 'vdir'))
    return _legacy.read_guest(str(legacy), 'g')


def test_units_and_masks(tmp_path):
    out = _guest(tmp_path, {'context': '42', 'rlimits/rss': '256', 'rlimits/memlock': '2', 'rlimits/nofile': 'inf',
                            'interfaces/0/ip': '10.1.2.3', 'interfaces/0/mask': '255.255.240.0',
                            'interfaces/1/ip': 'fd00::7', 'cgroup/cpu.shares': '2048'})
    entry = out['entry']
    assert out['xid'] == 42 and entry['root'] == str(tmp_path / 'tree')
    assert entry['limits']['memory'] == 256 * _legacy.PAGE
    assert entry['limits']['rlimits'] == {'memlock': {'soft': 2 * _legacy.PAGE, 'hard': 2 * _legacy.PAGE},
                                          'nofile': {'soft': 'max', 'hard': 'max'}}
    assert entry['limits']['cpu_weight'] == 79
    assert entry['addresses'] == ['10.1.2.3/20', 'fd00::7/128']
    assert entry['autostart'] is False


@pytest.mark.parametrize('files,message', [
    ({'context': '1'}, 'context: expected the static context id'),
    ({'context': '49152'}, 'context: expected'),
    ({'rlimits/nproc.soft': '10', 'rlimits/nproc.hard': 'x'}, 'rlimits/nproc.hard: expected a limit'),
    ({'rlimits/nofile.soft': '20', 'rlimits/nofile.hard': '10'}, 'rlimits/nofile: soft limit 20 is above'),
    ({'interfaces/0/ip': '10.0.0.300'}, 'interfaces/0/ip: not an IPv4 or IPv6 address'),
    ({'interfaces/0/ip': '10.0.0.3', 'interfaces/0/mask': '255.0.255.0'}, 'interfaces/0/mask: expected a netmask'),
    ({'interfaces/0/ip': '10.0.0.3', 'interfaces/0/prefix': '33'}, 'prefix 33 is too long'),
    ({'uts/nodename': ''}, 'uts/nodename: empty'),
    ({'apps/init/style': 'upstart'}, 'apps/init/style: unknown init style'),
    ({'cgroup/memory.limit_in_bytes': '100', 'cgroup/memory.memsw.limit_in_bytes': '50'}, 'below'),
    ({'cpuset/cpus': 'all of them'}, 'cpuset/cpus: expected a CPU list'),
])
def test_bad_files_are_named(tmp_path, files, message):
    with pytest.raises(VServerError) as info:
        _guest(tmp_path, files)
    assert message in str(info.value) and str(tmp_path) in str(info.value)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    legacy = tmp_path / 'vservers' / 'g'
    legacy.mkdir(parents=True)
    os.mkfifo(str(legacy / 'context'))
    with pytest.raises(VServerError, match='context: not a regular file'):
        _legacy.read_guest(str(tmp_path / 'vservers'), 'g')


def test_a_symlink_is_refused_not_followed(tmp_path):
    """A legacy file that is a symlink (to a host file) is refused naming it, never read through."""
    legacy = tmp_path / 'vservers' / 'g'
    legacy.mkdir(parents=True)
    secret = tmp_path / 'secret'
    secret.write_text('42\n')
    os.symlink(str(secret), str(legacy / 'context'))
    with pytest.raises(VServerError, match='context: a symbolic link where a file is expected'):
        _legacy.read_guest(str(tmp_path / 'vservers'), 'g')
