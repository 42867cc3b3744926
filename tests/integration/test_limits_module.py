"""The limits and capabilities modules through ansible-playbook on running guests: check mode writes
nothing, diff shows the section, live apply, second run unchanged, restart only when asked, bad input fails."""
import os

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _cgroup, _config, _runtime, _procfs as P
from helpers import guest_sh
from ansible_helpers import path_vars, run_playbook, task_results

pytestmark = pytest.mark.cgroup
LAYOUT = _cgroup.detect()

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
    - name: limits check
      vserver.core.limits: &limits
        <<: *paths
        memory: 48M
        nproc: 40
        cpu: {fill_rate: 1, interval: 2}
        io: "{{ io | default(omit) }}"
        rlimits: {nofile: {soft: 300, hard: 600}}
      check_mode: true
      diff: true
    - name: read pids.max
      ansible.builtin.slurp: {src: "{{ pids_max }}"}
      register: pids_after_check
    - name: limits
      vserver.core.limits: *limits
      diff: true
    - name: read pids.max
      ansible.builtin.slurp: {src: "{{ pids_max }}"}
    - name: limits again
      vserver.core.limits: *limits
    - name: limits bad
      vserver.core.limits:
        <<: *paths
        memory: 48M
        memory_high: 1G
      ignore_errors: true
    - name: caps check
      vserver.core.capabilities: &caps
        <<: *paths
        bcaps_drop: [CAP_SYS_CHROOT]
        ccaps: [ping]
      check_mode: true
      diff: true
    - name: caps
      vserver.core.capabilities: *caps
    - name: caps again
      vserver.core.capabilities: *caps
    - name: caps restart
      vserver.core.capabilities:
        <<: *caps
        restart: true
    - name: caps after restart
      vserver.core.capabilities:
        <<: *caps
        restart: true
    - name: caps bad
      vserver.core.capabilities:
        <<: *paths
        ccaps: [hide_mount]
      ignore_errors: true
"""


def _whole_disk():
    """A whole-disk block device node of this host, or None (a VM on a 9p root may have none)."""
    for prefix in (('vd', 'sd', 'nvme', 'xvd'), ('',)):
        for name in sorted(os.listdir('/sys/block')):
            if name.startswith(prefix) and os.path.exists('/dev/' + name):
                return '/dev/' + name
    return None


def test_modules_on_running_guest(make_guest, host_paths, tmp_path):
    doc = make_guest('vst-mod', start=True, stop_timeout=1, stop_signal='SIGKILL')
    group = _runtime.Runtime(host_paths, 'vst-mod', LAYOUT).group
    init = _runtime.Runtime(host_paths, 'vst-mod').init_pid()
    disk = _whole_disk()
    evars = dict(path_vars(host_paths), guest='vst-mod', pids_max=group.file('pids.max'))
    if disk:
        majmin = '%d:%d' % (os.major(os.stat(disk).st_rdev), os.minor(os.stat(disk).st_rdev))
        evars['io'] = {'devices': [{'device': disk, 'read_bps': '10M', 'write_iops': 500}]}
    playbook = tmp_path / 'play.yml'
    playbook.write_text(PLAYBOOK)
    rc, data = run_playbook(playbook, evars)
    results = dict((name, r) for name, r in task_results(data) if name != 'read pids.max')
    reads = [r for name, r in task_results(data) if name == 'read pids.max']
    assert rc == 0, data

    check = results['limits check']
    assert check['changed'] and check['diff']['before'] == {} and check['diff']['after']['nproc'] == 40
    assert 'pids.max' in check['live'] and check['rlimit_pids'] >= 1
    assert reads[0]['content'] == 'bWF4Cg=='                        # "max\n": check mode wrote nothing

    real = results['limits']
    assert real['changed'] and real['diff']['after']['cpu'] == {'quota': 50000, 'period': 100000}
    assert sorted(real['live']) == sorted(check['live'])
    assert reads[1]['content'] == 'NDAK'                              # "40\n"
    assert not results['limits again']['changed'] and results['limits again']['live'] == []
    bad = results['limits bad']
    assert bad['failed'] and bad['field'] == 'memory_high' and 'memory_high' in bad['msg']

    # the kernel, not the module's word
    if LAYOUT.version == 2:
        assert group.read('cpu.max') == '50000 100000'
        if disk:
            assert sorted(group.read('io.max').split()) == sorted(
                [majmin, 'rbps=10485760', 'wbps=max', 'riops=max', 'wiops=500'])
    else:
        assert group.read('cpu.cfs_quota_us') == '50000'
        if disk:
            assert group.read('blkio.throttle.read_bps_device') == '%s 10485760' % majmin
            assert group.read('blkio.throttle.write_iops_device') == '%s 500' % majmin
    seen = guest_sh(host_paths, 'vst-mod', 'grep "Max open files" /proc/1/limits').stdout.split()
    assert seen[3:5] == ['300', '600']

    ccheck = results['caps check']
    assert ccheck['changed'] and ccheck['restart_required'] and ccheck['diff']['after'] == {
        'bcaps_drop': ['sys_chroot'], 'ccaps': ['raw_icmp']}
    caps = results['caps']
    assert caps['changed'] and caps['restart_required'] and not caps['restarted']
    assert any('ping_group_range' in a for a in caps['actions'])        # ccaps applied live
    again = results['caps again']
    assert not again['changed'] and again['restart_required']
    restarted = results['caps restart']
    assert restarted['changed'] and restarted['restarted'] and not restarted['restart_required']
    after = results['caps after restart']
    assert not after['changed'] and not after['restarted'] and not after['restart_required']
    cbad = results['caps bad']
    assert cbad['failed'] and cbad['field'] == 'ccaps' and 'raw_icmp' in cbad['msg']

    new_init = _runtime.Runtime(host_paths, 'vst-mod').init_pid()
    assert new_init and new_init != init
    bound = int(P.read_status(new_init)['CapBnd'], 16)
    assert not bound & (1 << _caps.CAP_BITS['sys_chroot']) and bound & (1 << _caps.CAP_BITS['chown'])
    assert guest_sh(host_paths, 'vst-mod', 'cat /proc/sys/net/ipv4/ping_group_range').stdout.split() == [
        '0', '2147483647']
    # the limits came back with the restart
    assert group.read('pids.max') == '40'
    assert _config.load(host_paths, 'vst-mod')['capabilities'] == {'bcaps_drop': ['sys_chroot'],
                                                                   'ccaps': ['raw_icmp']}
    assert doc['name'] == 'vst-mod'
