"""Faults between a live change and the config save, on the real kernel.

A running guest's limits, addresses, ccaps and host name change in the kernel first, then in the config. Here the
config filesystem is full (a tmpfs filled to the byte, so the first write() of the new config fails with ENOSPC)
or the module process is SIGKILLed at the config's rename (strace fault injection): the kernel and the config
must change together or not at all, and the next run converges and reports what it does.
"""
import contextlib
import errno
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _cgroup, _config, _runtime, _limits, _mgr_context, _netns)
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils import _mgr_capabilities
from ansible_collections.vserver.core.plugins.module_utils import _mgr_address, _mgr_limits
from helpers import TOP
from test_address import Net, ns_ip, veths_gone


def caps_ensure(*args, **kwargs):
    """The capabilities manager's result as the module returns it."""
    return _mgr_capabilities.ensure(*args, **kwargs).to_dict()


LAYOUT = _cgroup.detect()
MEMORY = 'memory.max' if LAYOUT.version == 2 else 'memory.limit_in_bytes'
COLLECTIONS = os.path.join(TOP, '.build', 'collections')
M = 1 << 20


@pytest.fixture
def net():
    tn = Net()
    yield tn
    tn.cleanup()
    assert veths_gone('vst' + tn.tag), 'links left behind'


@contextlib.contextmanager
def config_on_tmpfs(paths, size='256k'):
    """The test's config dir on a small tmpfs of its own, unmounted at the end."""
    os.makedirs(paths.config_dir, exist_ok=True)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0755' % size, 'vstest-config', paths.config_dir],
                   check=True, timeout=30)
    try:
        yield
    finally:
        if subprocess.run(['umount', paths.config_dir], timeout=30, check=False).returncode:
            subprocess.run(['umount', '-l', paths.config_dir], timeout=30, check=False)


def fill(directory):
    """Fill the filesystem to the byte; prove that a new file's first write() fails with ENOSPC."""
    path = os.path.join(directory, '.filler')    # a dot file: not a guest config
    chunk = 1 << 16
    with open(path, 'ab', buffering=0) as handle:
        while chunk:
            try:
                handle.write(b'\0' * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    probe = os.path.join(directory, '.probe')
    with open(probe, 'wb', buffering=0) as handle:
        with pytest.raises(OSError) as err:
            handle.write(b'{')
    os.unlink(probe)
    assert err.value.errno == errno.ENOSPC and os.statvfs(directory).f_bavail == 0
    return path


def config_files(paths):
    """The config dir's entries but the host lock (created, empty, by the first locked run)."""
    return sorted(f for f in os.listdir(paths.config_dir) if f != '.lock')


def read(path):
    with open(path) as handle:
        return handle.read()


def memory(group):
    raw = group.read(MEMORY)
    return _limits._v2_max(raw) if LAYOUT.version == 2 else _limits._v1_mem(raw)


def nofile(pid):
    for line in read('/proc/%d/limits' % pid).splitlines():
        if line.startswith('Max open files'):
            return [int(x) for x in line.split()[3:5]]
    raise AssertionError('no Max open files line')


def honest(result):
    """A result never says changed without saying what it did."""
    assert bool(result['actions']) == result['changed'], result
    return result


def run_module(tmp_path, module, args, kill_at_rename=False):
    """Run a module of this collection as its own process (the way Ansible runs it on a host); with
    ``kill_at_rename`` strace SIGKILLs it at its first rename(2), i.e. when the new config is put in place."""
    argsfile = tmp_path / ('%s-args.json' % module)
    argsfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': args}))
    argv = [sys.executable, '-m', 'ansible_collections.vserver.core.plugins.modules.' + module, str(argsfile)]
    if kill_at_rename:
        argv = ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'trace=rename,renameat,renameat2',
                '-e', 'inject=rename,renameat,renameat2:signal=KILL'] + argv
    env = dict(os.environ, PYTHONPATH=COLLECTIONS, PYTHONDONTWRITEBYTECODE='1')  # no .pyc renames
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          check=False)
    if kill_at_rename:
        assert proc.returncode in (-9, 137) and not proc.stdout.strip(), (proc.returncode, proc.stdout, proc.stderr)
        return None
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def path_args(paths):
    return {key: getattr(paths, key) for key in ('config_dir', 'run_dir', 'tree_dir', 'log_dir', 'cgroup_parent')}


# --- limits ------------------------------------------------------------------------------------------------

def test_limits_full_config_fs_changes_nothing_then_converges(host_paths, make_guest):
    before = {'memory': '64M', 'rlimits': {'nofile': {'soft': 300, 'hard': 600}}}
    after = {'memory': '96M', 'rlimits': {'nofile': {'soft': 200, 'hard': 600}}}
    with config_on_tmpfs(host_paths):
        make_guest('vst-lfull', start=True, limits=_limits.validate(before, layout=LAYOUT), stop_timeout=1,
                   stop_signal='SIGKILL')
        rt = _runtime.Runtime(host_paths, 'vst-lfull', LAYOUT)
        pid = rt.init_pid()
        assert memory(rt.group) == 64 * M and nofile(pid) == [300, 600]
        config = host_paths.config_file('vst-lfull')
        saved = read(config)
        filler = fill(host_paths.config_dir)
        listing = config_files(host_paths)
        with pytest.raises(VServerError) as err:
            _mgr_limits.ensure_dict(host_paths, 'vst-lfull', after)
        assert 'saving the config' in str(err.value) and 'undone' in str(err.value), str(err.value)
        assert memory(rt.group) == 64 * M and nofile(pid) == [300, 600]      # the kernel as it was
        assert read(config) == saved and config_files(host_paths) == listing   # the config too, no temp file

        os.unlink(filler)
        res = honest(_mgr_limits.ensure_dict(host_paths, 'vst-lfull', after))
        assert res['changed'] and res['actions'][:2] == ['update config', 'write %s' % MEMORY]
        assert len(res['actions']) == 3 and res['actions'][2].startswith('prlimit ')   # init and any child
        assert memory(rt.group) == 96 * M and nofile(pid) == [200, 600]
        assert _config.load(host_paths, 'vst-lfull')['limits']['memory'] == 96 * M
        again = honest(_mgr_limits.ensure_dict(host_paths, 'vst-lfull', after))
        assert not again['changed'] and again['actions'] == []
        _runtime.stop(host_paths, _config.load(host_paths, 'vst-lfull'))


def test_limits_killed_between_kernel_and_config_converges(host_paths, make_guest, tmp_path):
    make_guest('vst-lkill', start=True, limits=_limits.validate({'memory': '64M'}, layout=LAYOUT), stop_timeout=1,
               stop_signal='SIGKILL')
    group = _runtime.Runtime(host_paths, 'vst-lkill', LAYOUT).group
    args = dict(path_args(host_paths), name='vst-lkill', memory='96M')
    run_module(tmp_path, 'limits', args, kill_at_rename=True)
    assert memory(group) == 96 * M                                               # killed after the kernel ...
    assert _config.load(host_paths, 'vst-lkill')['limits']['memory'] == 64 * M   # ... before the config
    # the next run compares with the kernel: nothing to write there, only the config to save
    res = honest(run_module(tmp_path, 'limits', args))
    assert res['changed'] and res['actions'] == ['update config'] and res['live'] == []
    assert _config.load(host_paths, 'vst-lkill')['limits']['memory'] == 96 * M and memory(group) == 96 * M
    again = honest(run_module(tmp_path, 'limits', args))
    assert not again['changed']
    # asking for the old value again brings the kernel back too
    res = honest(_mgr_limits.ensure_dict(host_paths, 'vst-lkill', {'memory': '64M'}))
    assert res['actions'] == ['update config', 'write %s' % MEMORY] and memory(group) == 64 * M


def _pids_dir_removed(group):
    """Take the guest's processes out of its pids cgroup (v1) or its whole cgroup (v2) and remove it."""
    if LAYOUT.version == 2:
        directory, root = group.path, LAYOUT.unified
    else:
        directory, root = group.dir_for('pids'), LAYOUT.v1['pids']
    for _round in range(50):
        pids = _cgroup._read(os.path.join(directory, 'cgroup.procs'), '').split()
        if not pids:
            break
        for pid in pids:
            try:
                _cgroup._write(os.path.join(root, 'cgroup.procs'), pid)
            except ProcessLookupError:
                pass
    os.rmdir(directory)
    return directory


def test_nproc_on_a_guest_whose_pids_cgroup_was_removed(host_paths, make_guest):
    doc = make_guest('vst-nproc', start=True, limits=_limits.validate({'nproc': 40}, layout=LAYOUT),
                     stop_timeout=1, stop_signal='SIGKILL')
    group = _runtime.Runtime(host_paths, 'vst-nproc', LAYOUT).group
    directory = _pids_dir_removed(group)
    with pytest.raises(VServerError) as err:
        _mgr_limits.ensure_dict(host_paths, 'vst-nproc', {'nproc': 50})
    msg = str(err.value)
    assert err.value.field == 'nproc' and directory in msg and 'missing' in msg and 'state: restarted' in msg, msg
    assert 'this host' not in msg
    assert _config.load(host_paths, 'vst-nproc')['limits'] == {'nproc': 40}
    # what the message says: a restart recreates the cgroup, and the limit applies again
    _runtime.stop(host_paths, doc)
    _runtime.start(host_paths, _config.load(host_paths, 'vst-nproc'))
    group = _runtime.Runtime(host_paths, 'vst-nproc', LAYOUT).group
    assert group.read('pids.max') == '40'
    res = honest(_mgr_limits.ensure_dict(host_paths, 'vst-nproc', {'nproc': 50}))
    assert res['actions'] == ['update config', 'write pids.max'] and group.read('pids.max') == '50'


# --- address -----------------------------------------------------------------------------------------------

def guest_v4(paths, name):
    out = ns_ip(paths, name, '-o', '-4', 'addr', 'show')
    return sorted(line.split()[3] for line in out.splitlines() if line.split()[1] != 'lo')


def test_address_full_config_fs_changes_nothing_then_converges(net, host_paths, make_guest):
    with config_on_tmpfs(host_paths):
        doc = make_guest('vst-afull', start=True, stop_timeout=1, stop_signal='SIGKILL')
        config = host_paths.config_file('vst-afull')
        # the first address of a running guest: bridge, veth pair and address are all undone
        filler = fill(host_paths.config_dir)
        with pytest.raises(VServerError) as err:
            _mgr_address.ensure_params(host_paths, dict(name='vst-afull', address=net.cidr4(2), bridge=net.bridge))
        assert 'saving the config' in str(err.value) and 'undone' in str(err.value), str(err.value)
        assert net.bridge not in _netns.NetState().links
        assert veths_gone(_netns.host_ifname(net.bridge, doc['xid']))
        assert 'eth0' not in ns_ip(host_paths, 'vst-afull', '-o', 'link')
        assert 'network' not in json.loads(read(config))
        os.unlink(filler)
        honest(_mgr_address.ensure_params(host_paths, dict(name='vst-afull', address=net.cidr4(2), bridge=net.bridge)))
        assert guest_v4(host_paths, 'vst-afull') == [net.cidr4(2)]

        # one more address: the guest keeps only the first one
        saved = read(config)
        filler = fill(host_paths.config_dir)
        listing = config_files(host_paths)
        with pytest.raises(VServerError) as err:
            _mgr_address.ensure_params(host_paths, dict(name='vst-afull', address=net.cidr4(3)))
        assert 'undone' in str(err.value)
        assert guest_v4(host_paths, 'vst-afull') == [net.cidr4(2)]
        assert read(config) == saved and config_files(host_paths) == listing

        os.unlink(filler)
        res = honest(_mgr_address.ensure_params(host_paths, dict(name='vst-afull', address=net.cidr4(3))))
        assert res['actions'] == ['update config', 'add address %s' % net.cidr4(3)]
        assert guest_v4(host_paths, 'vst-afull') == sorted([net.cidr4(2), net.cidr4(3)])
        assert _config.load(host_paths, 'vst-afull')['network']['addresses'] == [net.cidr4(2), net.cidr4(3)]
        assert not honest(_mgr_address.ensure_params(host_paths, dict(name='vst-afull', address=net.cidr4(3))))['changed']
        _runtime.stop(host_paths, doc)


def test_address_killed_between_kernel_and_config_converges(net, host_paths, make_guest, tmp_path):
    doc = make_guest('vst-akill', start=True, stop_timeout=1, stop_signal='SIGKILL')
    _mgr_address.ensure_params(host_paths, dict(name='vst-akill', address=net.cidr4(2), bridge=net.bridge))
    args = dict(path_args(host_paths), name='vst-akill', address=net.cidr4(3))
    run_module(tmp_path, 'address', args, kill_at_rename=True)
    assert guest_v4(host_paths, 'vst-akill') == sorted([net.cidr4(2), net.cidr4(3)])
    assert _config.load(host_paths, 'vst-akill')['network']['addresses'] == [net.cidr4(2)]
    res = honest(run_module(tmp_path, 'address', args))
    assert res['changed'] and res['actions'] == ['update config']
    assert _config.load(host_paths, 'vst-akill')['network']['addresses'] == [net.cidr4(2), net.cidr4(3)]
    assert not honest(run_module(tmp_path, 'address', args))['changed']
    _runtime.stop(host_paths, doc)


# --- capabilities (ccaps) and the host name ------------------------------------------------------------------

def ping_range(paths, name):
    handle = _runtime.Runtime(paths, name).netns
    return subprocess.run(['nsenter', '--net=%s' % handle, 'cat', '/proc/sys/net/ipv4/ping_group_range'],
                          capture_output=True, text=True, check=True, timeout=30).stdout.split()


def uts(paths, name):
    pid = _runtime.Runtime(paths, name).init_pid()
    return subprocess.run(['nsenter', '--uts', '-t', str(pid), 'hostname'], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def context_params(paths, name, **extra):
    return dict(path_args(paths), name=name, state='started', **extra)


def test_ccaps_and_hostname_full_config_fs(host_paths, make_guest):
    with config_on_tmpfs(host_paths):
        doc = make_guest('vst-cfull', start=True, stop_timeout=1, stop_signal='SIGKILL')
        config = host_paths.config_file('vst-cfull')
        old_range = ping_range(host_paths, 'vst-cfull')
        assert uts(host_paths, 'vst-cfull') == 'vst-cfull'
        saved = read(config)
        filler = fill(host_paths.config_dir)
        with pytest.raises(VServerError) as err:
            caps_ensure(host_paths, 'vst-cfull', {'ccaps': ['ping']})
        assert 'undone' in str(err.value), str(err.value)
        assert ping_range(host_paths, 'vst-cfull') == old_range
        with pytest.raises(VServerError) as err:
            _mgr_context.ensure_context(host_paths, context_params(host_paths, 'vst-cfull', hostname='renamed'))
        assert 'previous host name' in str(err.value), str(err.value)
        assert uts(host_paths, 'vst-cfull') == 'vst-cfull' and read(config) == saved

        os.unlink(filler)
        res = honest(caps_ensure(host_paths, 'vst-cfull', {'ccaps': ['ping']}))
        assert res['changed'] and ping_range(host_paths, 'vst-cfull') != old_range
        res = honest(_mgr_context.ensure_context(host_paths, context_params(host_paths, 'vst-cfull', hostname='renamed')))
        assert res['actions'] == ['update config', 'set hostname'] and uts(host_paths, 'vst-cfull') == 'renamed'
        _runtime.stop(host_paths, doc)


def test_hostname_killed_between_kernel_and_config_and_changed_behind_its_back(host_paths, make_guest, tmp_path):
    make_guest('vst-hkill', start=True, stop_timeout=1, stop_signal='SIGKILL')
    args = context_params(host_paths, 'vst-hkill', hostname='renamed')
    run_module(tmp_path, 'context', args, kill_at_rename=True)
    assert uts(host_paths, 'vst-hkill') == 'renamed' and 'hostname' not in _config.load(host_paths, 'vst-hkill')
    res = honest(run_module(tmp_path, 'context', args))
    assert res['actions'] == ['update config'] and _config.load(host_paths, 'vst-hkill')['hostname'] == 'renamed'
    assert not honest(run_module(tmp_path, 'context', args))['changed']
    # the kernel is what counts: a host name changed behind the module's back is set again
    pid = _runtime.Runtime(host_paths, 'vst-hkill').init_pid()
    subprocess.run(['nsenter', '--uts', '-t', str(pid), 'hostname', 'other'], check=True, timeout=30)
    res = honest(run_module(tmp_path, 'context', args))
    assert res['actions'] == ['set hostname'] and uts(host_paths, 'vst-hkill') == 'renamed'


def test_ccaps_killed_between_kernel_and_config_converges(host_paths, make_guest, tmp_path):
    make_guest('vst-ckill', start=True, stop_timeout=1, stop_signal='SIGKILL')
    old_range = ping_range(host_paths, 'vst-ckill')
    args = dict(path_args(host_paths), name='vst-ckill', ccaps=['ping'])
    run_module(tmp_path, 'capabilities', args, kill_at_rename=True)
    new_range = ping_range(host_paths, 'vst-ckill')
    assert new_range != old_range and 'capabilities' not in _config.load(host_paths, 'vst-ckill')
    res = honest(run_module(tmp_path, 'capabilities', args))
    assert res['actions'] == ['update config'] and ping_range(host_paths, 'vst-ckill') == new_range
    assert _config.load(host_paths, 'vst-ckill')['capabilities'] == {'ccaps': ['raw_icmp']}
    assert not honest(run_module(tmp_path, 'capabilities', args))['changed']
