"""Options a task does not give are left alone (limits, capabilities, through ansible-playbook on a running guest);
an explicit value lifts them; the guests module takes a guest's whole section, so a key removed there is lifted."""

from ansible_collections.vserver.core.plugins.module_utils import _caps, _cgroup, _config, _runtime, _mgr_guests
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils import _mgr_capabilities
from helpers import guest_sh
from ansible_helpers import path_vars, run_playbook, task_results


def caps_ensure(*args, **kwargs):
    """The capabilities manager's result as the module returns it."""
    return _mgr_capabilities.ensure(*args, **kwargs).to_dict()


LAYOUT = _cgroup.detect()
M = 1 << 20

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    paths: &paths
      name: "{{ guest }}"
      config_dir: "{{ config_dir }}"
      run_dir: "{{ run_dir }}"
      tree_dir: "{{ tree_dir }}"
      log_dir: "{{ log_dir }}"
      cgroup_parent: "{{ cgroup_parent }}"
  tasks:
    - name: memory and cpu
      vserver.core.limits:
        <<: *paths
        memory: 48M
        nproc: 40
        cpu: {quota: 50000, period: 100000}
    - name: "%(read)s"
    - name: memory only
      vserver.core.limits:
        <<: *paths
        memory: 64M
      diff: true
    - name: "%(read)s"
    - name: lift cpu
      vserver.core.limits:
        <<: *paths
        cpu: {quota: max}
    - name: "%(read)s"
    - name: lift nproc and memory
      vserver.core.limits:
        <<: *paths
        nproc: max
        memory: unlimited
    - name: "%(read)s"
    - name: bad removal
      vserver.core.limits:
        <<: *paths
        cpuset: none
      ignore_errors: true
    - name: drop sys_chroot
      vserver.core.capabilities:
        <<: *paths
        bcaps_drop: [CAP_SYS_CHROOT]
        restart: true
    - name: ccaps only
      vserver.core.capabilities:
        <<: *paths
        ccaps: [ping]
      diff: true
    - name: ccaps again
      vserver.core.capabilities:
        <<: *paths
        ccaps: [ping]
"""
READ = ('read cgroup\n      ansible.builtin.command: cat {{ files | join(" ") }}\n      changed_when: false\n'
        '      register: seen')


def _files(group):
    if LAYOUT.version == 2:
        return [group.file('memory.max'), group.file('cpu.max'), group.file('pids.max')]
    return [group.file('memory.limit_in_bytes'), group.file('cpu.cfs_quota_us'), group.file('pids.max')]


def _norm(words):
    """The words of the memory, cpu and pids files -> [memory, cpu quota, pids], v1's "no limit" spelled as v2's."""
    if LAYOUT.version == 2:  # cpu.max is "QUOTA PERIOD": keep the quota
        return [words[0], words[1], words[3]]
    mem, cpu, pids = words
    return ['max' if int(mem) >= 1 << 62 else mem, 'max' if cpu == '-1' else cpu, pids]


def _cgroup_values(group):
    """(memory, cpu quota, pids) as the kernel reports them now."""
    words = []
    for name in _files(group):
        with open(name) as handle:
            words.extend(handle.read().split())
    return _norm(words)


def test_a_task_changes_only_what_it_gives(make_guest, host_paths, tmp_path):
    make_guest('vst-keep', start=True, stop_timeout=1, stop_signal='SIGKILL')
    group = _runtime.Runtime(host_paths, 'vst-keep', LAYOUT).group
    playbook = tmp_path / 'play.yml'
    playbook.write_text(PLAYBOOK.replace('name: "%(read)s"', 'name: ' + READ))
    files = _files(group)
    rc, data = run_playbook(playbook, dict(path_vars(host_paths), guest='vst-keep', files=files))
    results = list(task_results(data))
    reads = [_norm(r['stdout'].split()) for name, r in results if name == 'read cgroup']
    named = dict((name, r) for name, r in results if name != 'read cgroup')
    assert rc == 0, data
    assert reads[0] == [str(48 * M), '50000', '40']
    # a task giving only memory: the CPU quota and nproc stay, in the cgroup files and in the config
    only = named['memory only']
    assert only['changed'] and only['diff']['after'] == {'memory': 64 * M, 'nproc': 40,
                                                         'cpu': {'quota': 50000, 'period': 100000}}
    assert reads[1] == [str(64 * M), '50000', '40']
    # explicit removal lifts: cpu {quota: max}, then nproc max and memory unlimited
    assert named['lift cpu']['limits'] == {'memory': 64 * M, 'nproc': 40}
    assert reads[2] == [str(64 * M), 'max', '40']
    assert reads[3] == ['max', 'max', 'max']
    assert _cgroup_values(group) == ['max', 'max', 'max']
    assert _config.load(host_paths, 'vst-keep')['limits'] == {'memory': 'max', 'nproc': 'max'}
    bad = named['bad removal']
    assert bad['failed'] and bad['field'] == 'cpuset' and 'or all' in bad['msg']

    # capabilities: ccaps alone keeps the stored bcaps_drop; the running init's bounding set is untouched
    assert named['drop sys_chroot']['restarted']
    init = _runtime.Runtime(host_paths, 'vst-keep').init_pid()
    bound = int(P.read_status(init)['CapBnd'], 16)
    assert not bound & (1 << _caps.CAP_BITS['sys_chroot'])
    ccaps = named['ccaps only']
    assert ccaps['changed'] and not ccaps['restart_required'] and not ccaps['restarted']
    assert ccaps['diff']['after'] == {'bcaps_drop': ['sys_chroot'], 'ccaps': ['raw_icmp']}
    assert not named['ccaps again']['changed']
    assert _runtime.Runtime(host_paths, 'vst-keep').init_pid() == init
    assert int(P.read_status(init)['CapBnd'], 16) == bound
    assert guest_sh(host_paths, 'vst-keep', 'cat /proc/sys/net/ipv4/ping_group_range').stdout.split() == [
        '0', '2147483647']
    assert _config.load(host_paths, 'vst-keep')['capabilities'] == {'bcaps_drop': ['sys_chroot'],
                                                                    'ccaps': ['raw_icmp']}


def test_capabilities_explicit_removal_lifts(make_guest, host_paths):
    make_guest('vst-lift', start=True, stop_timeout=1, stop_signal='SIGKILL')
    caps_ensure(host_paths, 'vst-lift', {'bcaps_drop': ['sys_chroot'], 'ccaps': ['raw_icmp']}, restart=True)
    res = caps_ensure(host_paths, 'vst-lift', {'bcaps_drop': [], 'ccaps': None}, restart=True)
    assert res['restarted'] and res['diff']['after'] == {'ccaps': ['raw_icmp']}
    init = _runtime.Runtime(host_paths, 'vst-lift').init_pid()
    assert int(P.read_status(init)['CapBnd'], 16) & (1 << _caps.CAP_BITS['sys_chroot'])


def test_guests_module_lifts_a_key_removed_from_the_list(host_paths):
    """The guests module is the whole desired state: a limit or capability removed from a guest's entry is lifted."""
    spec = {'name': 'vst-whole', 'xid': 931, 'stop_timeout': 1, 'stop_signal': 'SIGKILL',
            'limits': {'memory': '48M', 'cpu': {'quota': 50000, 'period': 100000}},
            'capabilities': {'bcaps_drop': ['sys_chroot'], 'ccaps': ['raw_icmp']}}
    try:
        _mgr_guests.ensure(host_paths, {'guests': [spec]})
        group = _runtime.Runtime(host_paths, 'vst-whole', LAYOUT).group
        assert _cgroup_values(group)[:2] == [str(48 * M), '50000']
        res = _mgr_guests.ensure(host_paths, {'guests': [dict(spec, limits={'memory': '48M'},
                                                              capabilities={'ccaps': ['raw_icmp']})]})
        assert res['changed'] and res['restart_required'] == ['vst-whole'], res
        doc = _config.load(host_paths, 'vst-whole')
        assert doc['limits'] == {'memory': 48 * M} and doc['capabilities'] == {'ccaps': ['raw_icmp']}
        assert _cgroup_values(group)[:2] == [str(48 * M), 'max']
    finally:
        _mgr_guests.ensure(host_paths, {'guests': [], 'prune': True, 'purge_pruned': True})
