"""The guest's default syscall filter, seen from inside (hostile static C programs) and from outside (/proc).

Every probe runs inside a guest; the C programs refuse to run anywhere else (they really unshare and mount when
nothing stops them)."""
import os
import shutil

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime, _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils import _mgr_capabilities
from helpers import build_static, guest_sh, needs_userns, vserver


def caps_ensure(*args, **kwargs):
    """The capabilities manager's result as the module returns it."""
    return _mgr_capabilities.ensure(*args, **kwargs).to_dict()


pytestmark = [pytest.mark.skipif(os.uname().machine != 'x86_64', reason='probes use x86 syscalls (int 0x80)')]

EPERM, ENOSYS = 1, 38
# denied outright in a default guest (EPERM), by name of the probe in files/syscall_probe.c
DENIED = ['keyctl', 'add_key', 'request_key', 'unshare_user', 'unshare_cgroup', 'clone_user', 'setns', 'mount',
          'umount2', 'pivot_root', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'move_mount', 'open_tree',
          'mount_setattr', 'bpf', 'perf_event_open', 'userfaultfd', 'io_uring_setup', 'kexec_load',
          'open_by_handle_at', 'name_to_handle_at', 'init_module', 'finit_module', 'delete_module', 'acct',
          'swapon', 'swapoff', 'iopl', 'ioperm', 'lookup_dcookie', 'personality_norandom', 'i386_unshare_user',
          'i386_keyctl', 'i386_mount', 'x32_unshare_user', 'x32_getpid']
ALLOWED = ['unshare_files', 'fork', 'personality_query', 'i386_getpid']


@pytest.fixture(scope='module')
def probe_binary(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('probe') / 'syscall_probe')
    return build_static('syscall_probe.c', out)


def run_probe(host_paths, doc, binary, *args):
    shutil.copy(binary, os.path.join(doc['root'], 'bin', 'probe'))
    out = vserver(host_paths, doc['name'], 'exec', '/bin/probe', *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(line.split() for line in out.stdout.splitlines())


def seccomp_field(pid):
    return P.read_status(pid).get('Seccomp', '').strip()


def test_default_filter_denies_from_inside(host_paths, make_guest, probe_binary):
    doc = make_guest('vst-sc', start=True)
    init = _runtime.Runtime(host_paths, 'vst-sc').init_pid()
    assert seccomp_field(init) == '2'
    got = run_probe(host_paths, doc, probe_binary)
    wrong = {name: got.get(name) for name in DENIED if got.get(name) != str(EPERM)}
    assert not wrong, 'not denied with EPERM: %s' % wrong
    assert got['clone3_user'] == str(ENOSYS)   # libc falls back to clone, whose flags the filter reads
    assert all(got[name] == '0' for name in ALLOWED), got
    # an entered process has the filter too (mode 2 in its own /proc/PID/status)
    out = guest_sh(host_paths, 'vst-sc', 'grep ^Seccomp: /proc/self/status')
    assert out.stdout.split() == ['Seccomp:', '2'], out.stdout + out.stderr


@needs_userns
def test_unconfined_guest_shows_what_the_filter_stops(host_paths, make_guest, probe_binary):
    """The same probe without the filter: the kernel's own answers differ, so the EPERMs above are the filter's."""
    doc = make_guest('vst-unc', capabilities={'seccomp': {'mode': 'unconfined'}}, start=True)
    assert seccomp_field(_runtime.Runtime(host_paths, 'vst-unc').init_pid()) == '0'
    got = run_probe(host_paths, doc, probe_binary)
    for name in ('unshare_user', 'clone_user', 'clone3_user', 'i386_unshare_user', 'keyctl', 'i386_keyctl'):
        assert got[name] == '0', (name, got)     # a user namespace, a keyring read: what the filter denies
    assert got['x32_getpid'] != str(EPERM)       # the kernel's answer (ENOSYS without x32), not the filter's
    assert got['personality_norandom'] == '0'


def test_allow_log_and_bad_names(host_paths, make_guest, probe_binary):
    doc = make_guest('vst-allow', start=True)
    # an unknown name is refused before anything changes: config and running guest untouched
    before = _config.load(host_paths, 'vst-allow')
    with pytest.raises(VServerError) as err:
        caps_ensure(host_paths, 'vst-allow', {'seccomp': {'allow': ['keyctl', 'no_such_call']}})
    assert 'no_such_call' in str(err.value) and err.value.field == 'seccomp.allow'
    assert _config.load(host_paths, 'vst-allow') == before
    # allow keyctl: config first (restart_required), then restart
    result = caps_ensure(host_paths, 'vst-allow', {'seccomp': {'allow': ['keyctl']}})
    assert result['changed'] and result['restart_required'] and not result['restarted']
    old = result['observed']['seccomp']   # the fingerprint of the filter init runs, recorded at its start
    assert len(old) == 16 and old != 'unconfined'
    result = caps_ensure(host_paths, 'vst-allow', {'seccomp': {'allow': ['keyctl']}}, restart=True)
    assert result['restarted'] and not result['restart_required'] and result['observed']['seccomp'] == old
    assert caps_ensure(host_paths, 'vst-allow', {'seccomp': {'allow': ['keyctl']}})['observed']['seccomp'] != old
    got = run_probe(host_paths, doc, probe_binary)
    assert got['keyctl'] == '0'
    assert got['add_key'] == str(EPERM) and got['unshare_user'] == str(EPERM)
    again = caps_ensure(host_paths, 'vst-allow', {'seccomp': {'allow': ['keyctl']}})
    assert not again['changed'] and not again['restart_required']
    # log mode: what would be denied is allowed (and logged by the kernel)
    caps_ensure(host_paths, 'vst-allow', {'seccomp': {'mode': 'log'}}, restart=True)
    got = run_probe(host_paths, doc, probe_binary)
    assert got['keyctl'] == '0' and got['unshare_user'] == '0' and got['clone3_user'] == '0', got
    assert seccomp_field(_runtime.Runtime(host_paths, 'vst-allow').init_pid()) == '2'


def test_busybox_guest_works_under_the_filter(host_paths, make_guest, probe_binary):
    doc = make_guest('vst-bb', capabilities={'ccaps': ['raw_icmp']}, start=True)
    out = guest_sh(host_paths, 'vst-bb', 'ps -o pid,comm; echo hi > /tmp/x && cat /tmp/x; '
                                         'sh -c "sleep 0.1 & wait; echo child-ok"; su nobody -s /bin/sh -c "id -u"; '
                                         'ls /proc/1/ns | wc -l; wget -q -O - http://127.0.0.1:1/ 2>&1; '
                                         'grep ^Seccomp: /proc/1/status')
    assert out.returncode == 0, out.stdout + out.stderr
    ps = [line.split() for line in out.stdout.splitlines()[1:4]]
    assert ['1', 'init'] in ps, out.stdout
    for expected in ('hi', 'child-ok', '65534', 'Connection refused', 'Seccomp:\t2'):
        assert expected in out.stdout, (expected, out.stdout, out.stderr)
    # ping: busybox's ping only tries raw sockets (no CAP_NET_RAW in a guest); raw_icmp is an ICMP datagram socket
    assert run_probe(host_paths, doc, probe_binary, 'only_icmp_ping') == {'only_icmp_ping': '0'}


SECCOMP_PLAYBOOK = """
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
    - name: bad name
      vserver.core.capabilities:
        <<: *paths
        seccomp: {allow: [keyctl, no_such_call]}
      ignore_errors: true
    - name: check
      vserver.core.capabilities: &sc
        <<: *paths
        seccomp: {allow: [keyctl], deny: [ptrace]}
      check_mode: true
      diff: true
    - name: set
      vserver.core.capabilities: *sc
    - name: again
      vserver.core.capabilities: *sc
"""


def test_capabilities_module_seccomp_option(host_paths, make_guest, tmp_path):
    from ansible_helpers import path_vars, run_playbook, task_results
    make_guest('vst-scmod')
    before = _config.load(host_paths, 'vst-scmod')
    playbook = tmp_path / 'seccomp.yml'
    playbook.write_text(SECCOMP_PLAYBOOK)
    rc, data = run_playbook(playbook, dict(path_vars(host_paths), guest='vst-scmod'))
    results = dict(task_results(data))
    assert results['bad name']['failed'] and 'no_such_call' in results['bad name']['msg'], results['bad name']
    check = results['check']
    assert check['changed'] and check['diff']['after']['seccomp'] == {'allow': ['keyctl'], 'deny': ['ptrace']}
    assert results['set']['changed'] and not results['again']['changed']
    assert results['set']['seccomp'] == {'mode': 'default', 'allow': ['keyctl'], 'deny': ['ptrace']}
    after = _config.load(host_paths, 'vst-scmod')
    assert after['capabilities'] == {'seccomp': {'allow': ['keyctl'], 'deny': ['ptrace']}}
    assert dict(after, capabilities=None) == dict(before, capabilities=None)
