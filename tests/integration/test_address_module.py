"""The address module through ansible-playbook: changed then unchanged, check mode, diff, bad input, live removal."""
import pytest

from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime
from ansible_helpers import path_vars, run_playbook, task_results
from test_address import Net, guest_addrs, ns_ip  # noqa: F401  (Net: the test network helper)


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    paths: &paths
      config_dir: "{{ config_dir }}"
      run_dir: "{{ run_dir }}"
      tree_dir: "{{ tree_dir }}"
      log_dir: "{{ log_dir }}"
      cgroup_parent: "{{ cgroup_parent }}"
  tasks:
    - name: guest
      vserver.core.context:
        name: pm
        state: started
        stop_signal: SIGKILL
        <<: *paths
    - name: first
      vserver.core.address:
        name: pm
        addresses: ["{{ a4 }}", "{{ a6 }}"]
        bridge: "{{ bridge }}"
        gateway: ["{{ gw4 }}", "{{ gw6 }}"]
        <<: *paths
    - name: second
      vserver.core.address:
        name: pm
        addresses: ["{{ a4 }}", "{{ a6 }}"]
        bridge: "{{ bridge }}"
        gateway: ["{{ gw4 }}", "{{ gw6 }}"]
        <<: *paths
    - name: check
      vserver.core.address:
        name: pm
        address: "{{ extra }}"
        <<: *paths
      check_mode: true
    - name: bad
      vserver.core.address:
        name: pm
        address: "{{ broadcast }}"
        <<: *paths
      ignore_errors: true
    - name: remove
      vserver.core.address:
        name: pm
        address: "{{ a6 }}"
        state: absent
        <<: *paths
"""


@pytest.fixture
def net():
    tn = Net()
    yield tn
    tn.cleanup()


def test_module_twice_check_diff_and_bad_input(net, host_paths, tmp_path):
    play = tmp_path / 'address.yml'
    play.write_text(PLAYBOOK)
    evars = dict(path_vars(host_paths), bridge=net.bridge, a4=net.cidr4(2), a6=net.cidr6(2), gw4=net.ip4(1),
                 gw6=net.ip6(1), extra=net.cidr4(5), broadcast='%s/24' % net.ip4(255))
    try:
        rc, data = run_playbook(play, evars, diff=True)
        assert rc == 0, data
        res = dict(task_results(data))
        assert res['first']['changed'] is True
        assert res['first']['diff'] == {'before': {}, 'after': {
            'mode': 'bridge', 'bridge': net.bridge, 'interface': 'eth0', 'addresses': [net.cidr4(2), net.cidr6(2)],
            'gateway': [net.ip4(1), net.ip6(1)]}}
        assert res['second']['changed'] is False and res['second']['actions'] == []
        with open('/proc/sys/net/ipv4/ip_forward') as handle:
            forwarding_off = handle.read().strip() == '0'
        assert res['first']['forwarding_needed'].get('ipv4') is forwarding_off
        assert any('does not forward' in w for w in res['first'].get('warnings', [])) is forwarding_off
        assert res['check']['changed'] is True and 'add address %s' % net.cidr4(5) in res['check']['actions']
        assert res['bad']['failed'] is True and res['bad']['field'] == 'address'
        assert 'broadcast address' in res['bad']['msg']
        assert res['remove']['changed'] is True
        assert res['remove']['diff']['after']['addresses'] == [net.cidr4(2)]
        # the real state: check mode and the refused input changed nothing; the removal was live
        assert guest_addrs(host_paths, 'pm')[1] == {'127.0.0.1/8', '::1/128', net.cidr4(2)}
        assert _config.load(host_paths, 'pm')['network']['addresses'] == [net.cidr4(2)]
        assert 'default via %s dev eth0' % net.ip4(1) in ns_ip(host_paths, 'pm', 'route')
    finally:
        doc = _config.load(host_paths, 'pm')
        if doc:
            _runtime.stop(host_paths, dict(doc, stop_timeout=0.5))
