"""Resource limits proven from inside running guests, on the host's cgroup backend (v1 here, v2 in the VM).

Every hostile workload is bounded: the fork bomb loop is capped, the memory hog has a fixed size, the CPU
hogs run under `timeout`, and every command has a timeout.
"""
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _config, _runtime, _limits
from ansible_collections.vserver.core.plugins.module_utils import _enter
from ansible_collections.vserver.core.plugins.module_utils import _mgr_limits
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

from helpers import guest_sh

pytestmark = pytest.mark.cgroup
LAYOUT = _cgroup.detect()


def _group(paths, name):
    return _runtime.Runtime(paths, name, LAYOUT).group


def _guest(make_guest, name, limits=None, **extra):
    section = _limits.validate(limits or {}, layout=LAYOUT)
    return make_guest(name, start=True, limits=section, stop_timeout=1, stop_signal='SIGKILL', **extra)


def _counter(raw, key):
    for line in (raw or '').splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


def test_fork_bomb_is_contained(make_guest, host_paths):
    _guest(make_guest, 'vst-fork', {'nproc': 64})
    group = _group(host_paths, 'vst-fork')
    assert group.read('pids.max') == '64'
    # capped loop: at most 150 forks, each child sleeps 3 s and exits
    bomb = guest_sh(host_paths, 'vst-fork', 'i=0; while [ $i -lt 150 ]; do sleep 3 & i=$((i+1)); done; wait',
                    timeout=60)
    assert 'fork' in bomb.stderr and ('Resource temporarily unavailable' in bomb.stderr or 'EAGAIN' in bomb.stderr), \
        bomb.stderr
    assert _counter(group.read('pids.events'), 'max') > 0       # the kernel refused forks in this cgroup
    assert len(group.procs()) <= 64
    # the host keeps forking fine meanwhile
    assert all(subprocess.run(['true'], timeout=10, check=False).returncode == 0 for _round in range(20))
    assert _runtime.Runtime(host_paths, 'vst-fork').init_pid()


def _oom_kills(group):
    if LAYOUT.version == 2:
        return _counter(group.read('memory.events'), 'oom_kill')
    return _counter(group.read('memory.oom_control'), 'oom_kill')


def test_memory_hog_is_oom_killed_inside_only(make_guest, host_paths):
    _guest(make_guest, 'vst-mem', {'memory': '32M', 'swap': 0})
    group = _group(host_paths, 'vst-mem')
    init = _runtime.Runtime(host_paths, 'vst-mem').init_pid()
    assert _oom_kills(group) == 0
    # a fixed 64M: the shell buffers the whole command substitution in its own memory
    hog = guest_sh(host_paths, 'vst-mem', 'x=$(head -c 67108864 /dev/zero | tr "\\0" a); echo survived ${#x}',
                   timeout=60)
    assert 'survived' not in hog.stdout
    assert hog.returncode in (137, 126, 1) or hog.returncode < 0 or hog.returncode > 128, hog
    assert _oom_kills(group) >= 1
    assert _runtime.Runtime(host_paths, 'vst-mem').init_pid() == init       # the guest's init survived
    assert subprocess.run(['true'], timeout=10, check=False).returncode == 0


def _cpu_share(group, seconds=2.0):
    start_ns, start = group.cpu_usage_ns(), time.monotonic()
    time.sleep(seconds)
    return (group.cpu_usage_ns() - start_ns) / 1e9 / (time.monotonic() - start)


def _throttled(group):
    raw = group.read('cpu.stat')
    return _counter(raw, 'nr_throttled')


def test_cpu_token_bucket_live(make_guest, host_paths):
    # a high weight so that other agents loading the 2 cores do not starve the guest below its quota
    _guest(make_guest, 'vst-cpu', {'cpu': {'fill_rate': 1, 'interval': 4}, 'cpu_weight': 10000})
    group = _group(host_paths, 'vst-cpu')
    # two busy loops (so a single thread's ceiling never hides the limit), each ended by timeout
    proc = subprocess.Popen([sys.executable, 'bin/vserver', 'vst-cpu', 'exec', '/bin/sh', '-c',
                             'timeout 20 sh -c "while :; do :; done" & timeout 20 sh -c "while :; do :; done" & wait'],
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            env=dict(os.environ, VSERVER_CONFIG_DIR=host_paths.config_dir,
                                     VSERVER_RUN_DIR=host_paths.run_dir, VSERVER_TREE_DIR=host_paths.tree_dir,
                                     VSERVER_LOG_DIR=host_paths.log_dir,
                                     VSERVER_CGROUP_PARENT=host_paths.cgroup_parent),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # wait (bounded) for both loops to run in the guest: on a slow machine `vserver exec` itself takes a while
        deadline = time.monotonic() + 60
        while len(group.procs()) < 4 and time.monotonic() < deadline:   # init, sh, 2 x timeout/sh loops
            time.sleep(0.1)
        time.sleep(0.5)
        throttled = _throttled(group)
        quarter = _cpu_share(group)
        assert _throttled(group) > throttled                # the quota bites
        # 0.25 of a CPU; other agents loading the 2 cores can only push it lower, never above the quota
        assert 0.12 <= quarter <= 0.32, quarter
        result = _mgr_limits.ensure_dict(host_paths, 'vst-cpu', {'cpu': {'fill_rate': 3, 'interval': 4},
                                         'cpu_weight': 10000})   # live: 75%
        assert result['changed'] and result['live'] == [
            'cpu.max' if group.layout.version == 2 else 'cpu.cfs_quota_us'] and not result['restart_required']
        time.sleep(0.3)
        # raised live to 75%: other agents loading the 2 cores may starve the guest below its new quota, so the
        # proof is a share clearly above the old one (x1.5), or above the old 0.25 with no throttling at all
        for _window in range(3):
            throttled = _throttled(group)
            more = _cpu_share(group, 1.5)
            unthrottled = _throttled(group) == throttled
            if more > quarter * 1.5 or (unthrottled and more > 0.27):
                break
        assert more <= 0.80, more
        assert more > quarter * 1.5 or (unthrottled and more > 0.27), (quarter, more, unthrottled)
        print('cpu share: 25%% bucket %.3f, 75%% bucket %.3f' % (quarter, more))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _limits_line(text, name):
    for line in text.splitlines():
        if line.startswith(name):
            return line[len(name):].split()[:2]
    return None


def test_nofile_rlimit_inside_and_live(make_guest, host_paths):
    _guest(make_guest, 'vst-rlim', {'rlimits': {'nofile': {'soft': 512, 'hard': 1024}, 'core': 0}})
    seen = guest_sh(host_paths, 'vst-rlim', 'cat /proc/1/limits')
    assert _limits_line(seen.stdout, 'Max open files') == ['512', '1024']
    assert _limits_line(seen.stdout, 'Max core file size') == ['0', '0']

    result = _mgr_limits.ensure_dict(host_paths, 'vst-rlim', {'rlimits': {'nofile': {'soft': 256, 'hard': 1024}}})
    assert result['changed'] and result['rlimit_pids'] >= 1 and not result['restart_required']
    seen = guest_sh(host_paths, 'vst-rlim', 'cat /proc/1/limits')
    assert _limits_line(seen.stdout, 'Max open files') == ['256', '1024']
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-rlim', {'rlimits': {'nofile': {'soft': 256, 'hard': 1024}}})['changed']

    host = _limits.Host(layout=LAYOUT)
    own_hard = host.own_rlimit(_limits.RLIMITS['nofile'])[1]
    above = own_hard + 1000
    before = open(host_paths.config_file('vst-rlim'), 'rb').read()
    if host.has_cap(_limits.CAP_SYS_RESOURCE):
        # root may raise hard limits here (the v2 VM): the value goes through, live
        above = min(above, host.nr_open())
        assert _mgr_limits.ensure_dict(host_paths, 'vst-rlim', {'rlimits': {'nofile': above}})['changed']
        seen = guest_sh(host_paths, 'vst-rlim', 'cat /proc/1/limits')
        assert _limits_line(seen.stdout, 'Max open files') == [str(above)] * 2
    else:
        with pytest.raises(VServerError) as err:
            _mgr_limits.ensure_dict(host_paths, 'vst-rlim', {'rlimits': {'nofile': above}})
        assert err.value.field == 'rlimits.nofile'
        assert 'CAP_SYS_RESOURCE' in str(err.value) and 'at most %d' % own_hard in str(err.value)
        assert open(host_paths.config_file('vst-rlim'), 'rb').read() == before


def test_devices_only_minimal_dev(make_guest, host_paths):
    # give the guest CAP_MKNOD so that only the device policy stands in the way
    _guest(make_guest, 'vst-dev', capabilities={'bcaps_add': ['mknod']})
    ok = guest_sh(host_paths, 'vst-dev', 'mknod /dev/n2 c 1 3 && echo x > /dev/n2 && head -c 4 /dev/urandom | wc -c')
    assert ok.returncode == 0 and ok.stdout.split() == ['4'], ok
    for node in ('b 254 0', 'b 7 0', 'c 1 1', 'c 4 1', 'c 10 237'):   # vda, loop0, mem, tty1, loop-control
        proc = guest_sh(host_paths, 'vst-dev', 'mknod /dev/forbidden %s' % node)
        assert proc.returncode != 0 and 'Operation not permitted' in proc.stderr, (node, proc)
    group = _group(host_paths, 'vst-dev')
    if LAYOUT.version == 1:
        assert sorted(group.read('devices.list').splitlines()) == sorted(_limits.device_rules())
    else:
        assert _limits.bpf_device_programs(group.unified_dir()) == 1


def _forbidden_nodes():
    """Existing device nodes outside the guests' allow-list: a block device if the host has one, and a
    character device such as /dev/kmsg (1:11) or /dev/mem (1:1)."""
    out = []
    for majmin in sorted(os.listdir('/sys/dev/block')):
        with open('/sys/dev/block/%s/uevent' % majmin) as handle:
            names = [line.split('=', 1)[1].strip() for line in handle if line.startswith('DEVNAME=')]
        if names and os.path.exists('/dev/' + names[0]):
            out.append('/dev/' + names[0])
            break
    for path in ('/dev/kmsg', '/dev/mem', '/dev/tty0'):
        if os.path.exists(path):
            out.append(path)
            break
    assert out, 'no device node outside the allow-list on this host'
    return out


def _probe_in(cgroup_dir, paths):
    """Open each path in a child that joined ``cgroup_dir`` (cgroup2 only); returns {path: errno or 0}."""
    import json
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        out = {}
        try:
            with open(os.path.join(cgroup_dir, 'cgroup.procs'), 'w') as handle:
                handle.write(str(os.getpid()))
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY))
                    out[path] = 0
                except OSError as exc:
                    out[path] = exc.errno
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    raw = os.read(read_end, 65536)
    os.close(read_end)
    os.waitpid(child, 0)
    return json.loads(raw)


def test_bpf_device_program_alone(host_paths):
    """The cgroup v2 device program on its own (on hybrid hosts in the cgroup2 hierarchy, where it applies too)."""
    unified = LAYOUT.unified
    assert unified, 'no cgroup2 hierarchy mounted'
    path = os.path.join(unified, host_paths.cgroup_parent + '-bpf')
    os.mkdir(path)
    try:
        forbidden = _forbidden_nodes()
        assert _probe_in(path, ['/dev/null'] + forbidden) == dict.fromkeys(['/dev/null'] + forbidden, 0)
        _limits.bpf_attach_devices(path)
        _limits.bpf_attach_devices(path)          # re-applying replaces, never stacks
        assert _limits.bpf_device_programs(path) == 1
        allowed = ['/dev/null', '/dev/zero', '/dev/urandom']
        assert _probe_in(path, allowed + forbidden) == dict(dict.fromkeys(allowed, 0),
                                                            **dict.fromkeys(forbidden, 1))    # EPERM
    finally:
        os.rmdir(path)


def test_limits_check_live_idempotent_and_removal(make_guest, host_paths):
    _guest(make_guest, 'vst-live')
    group = _group(host_paths, 'vst-live')
    before_files = _limits.current(group)
    want = {'memory': '48M', 'memory_high': '40M', 'nproc': 40,
            'cpu': {'quota': 30000, 'period': 100000, 'burst': 10000},
            'cpu_weight': 200, 'cpuset': '0'}
    check = _mgr_limits.ensure_dict(host_paths, 'vst-live', want, check_mode=True)
    assert check['changed'] and check['live']
    assert _limits.current(group) == before_files                          # check mode wrote nothing
    assert _config.load(host_paths, 'vst-live').get('limits') in (None, {})

    done = _mgr_limits.ensure_dict(host_paths, 'vst-live', want)
    assert done['changed'] and sorted(done['live']) == sorted(check['live'])
    assert done['diff']['before'] == {} and done['diff']['after']['memory'] == 48 << 20
    mem = 'memory.max' if LAYOUT.version == 2 else 'memory.limit_in_bytes'
    assert int(group.read(mem)) == 48 << 20 and group.read('pids.max') == '40'
    if LAYOUT.version == 2:
        assert group.read('cpu.max') == '30000 100000' and group.read('cpu.weight') == '200'
        assert group.read('cpu.max.burst') == '10000'
        assert int(group.read('memory.high')) == 40 << 20
    else:
        assert group.read('cpu.cfs_quota_us') == '30000' and group.read('cpu.shares') == '2048'
        assert group.read('cpu.cfs_burst_us') == '10000'
    assert group.read('cpuset.cpus') == '0'
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-live', want)['changed']    # idempotent

    # drift behind the module's back is put back
    group.write('pids.max', '99')
    again = _mgr_limits.ensure_dict(host_paths, 'vst-live', want)
    assert again['changed'] and again['live'] == ['pids.max'] and group.read('pids.max') == '40'

    # options left out keep their values; explicit values lift those limits at once
    same = _mgr_limits.ensure_dict(host_paths, 'vst-live', {'memory': '48M'})
    assert not same['changed'] and group.read('pids.max') == '40' and group.read('cpuset.cpus') == '0'
    lift = {'memory_high': 'max', 'nproc': 'max', 'cpu': {'quota': 'max'}, 'cpu_weight': 100, 'cpuset': 'all'}
    less = _mgr_limits.ensure_dict(host_paths, 'vst-live', lift)
    assert less['changed'] and group.read('pids.max') == 'max'
    assert less['limits'] == {'memory': 48 << 20, 'memory_high': 'max', 'nproc': 'max', 'cpu_weight': 100}
    cpus = _limits.current(group)['cpuset.cpus']
    if group.layout.version == 2 and cpus != before_files['cpuset.cpus']:
        # some v2 kernels refuse an empty cpuset.cpus on a populated cgroup: the parent's CPUs stand for no limit
        assert _limits._cpus_norm(cpus) == _limits._cpus_norm(_limits._v2_parent_cpus(group))
    else:
        assert cpus == before_files['cpuset.cpus']
    assert not _mgr_limits.ensure_dict(host_paths, 'vst-live', lift)['changed']    # idempotent again


def test_bad_input_writes_nothing_on_running_guest(make_guest, host_paths):
    _guest(make_guest, 'vst-bad', {'nproc': 50})
    group = _group(host_paths, 'vst-bad')
    files = _limits.current(group)
    config = open(host_paths.config_file('vst-bad'), 'rb').read()
    online = _limits.Host().online_cpus()
    for params, field in (
            ({'memory': '-5M'}, 'memory'), ({'memory': 0}, 'memory'), ({'memory': '12Q'}, 'memory'),
            ({'memory': '64M', 'memory_high': '128M'}, 'memory_high'), ({'nproc': 0}, 'nproc'),
            ({'nproc': 40, 'cpu': {'quota': 10}}, 'cpu.quota'), ({'cpu': {'fill_rate': 1}}, 'cpu'),
            ({'cpu_weight': 0}, 'cpu_weight'), ({'cpuset': str(max(online) + 1)}, 'cpuset'),
            ({'io': {'devices': [{'device': '/dev/vstnope', 'read_bps': '1M'}]}}, 'io.devices[0].device'),
            ({'rlimits': {'nofiles': 10}}, 'rlimits.nofiles'),
            ({'rlimits': {'nofile': {'soft': 20, 'hard': 10}}}, 'rlimits.nofile'),
            ({'disk': '1K'}, 'disk')):
        with pytest.raises(VServerError) as err:
            _mgr_limits.ensure_dict(host_paths, 'vst-bad', params)
        assert err.value.field == field, (params, err.value.field, str(err.value))
    assert _limits.current(group) == files
    assert open(host_paths.config_file('vst-bad'), 'rb').read() == config


def test_v2_backend_guest_devices(make_guest, host_paths):
    """A whole guest on the cgroup v2 backend: on this hybrid host its cgroup lives in the (controller-less)
    cgroup2 mount, so only the eBPF device program stands between a guest given CAP_MKNOD and the disks;
    in the v2 VM this is simply the host's layout."""
    layout = _cgroup.Layout(2, unified=LAYOUT.unified)
    doc = make_guest('vst-v2dev', capabilities={'bcaps_add': ['mknod']}, stop_timeout=1, stop_signal='SIGKILL')
    _runtime.start(host_paths, doc, layout=layout)
    try:
        group = _runtime.Runtime(host_paths, 'vst-v2dev', layout).group
        assert group.path.startswith(LAYOUT.unified) and _limits.bpf_device_programs(group.path) == 1
        out = os.path.join(doc['root'], 'tmp', 'out')
        # /dev is the guest's tmpfs (the tree itself is mounted nodev)
        script = ('mknod /dev/n c 1 3 && echo x > /dev/n && echo allowed > /tmp/out; '
                  'for n in "b 254 0" "b 7 0" "c 1 1" "c 10 237"; do mknod /dev/f $n 2>> /tmp/out; done')
        assert _enter.enter_guest(host_paths, doc, ['/bin/sh', '-c', script], layout=layout) != 0
        lines = open(out).read().splitlines()
        assert lines[0] == 'allowed' and len(lines) == 5
        assert all('Operation not permitted' in line for line in lines[1:]), lines
    finally:
        _runtime.stop(host_paths, doc, layout=layout)
    assert not os.path.exists(os.path.join(LAYOUT.unified, host_paths.cgroup_parent, 'vst-v2dev'))
