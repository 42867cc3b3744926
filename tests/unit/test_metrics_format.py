"""The metrics exposition's pure parts: net/dev parsing (capped), label escaping, the text format as a real parser
reads it (prometheus_client), a family without series left out."""
import pytest


from ansible_collections.vserver.core.plugins.module_utils import _runtime_metrics as M

text_string_to_metric_families = pytest.importorskip(
    'prometheus_client.parser', reason='prometheus-client is not installed (make setup)').text_string_to_metric_families
NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 123456789  4321    1    2    0     0          0         5   987654     321    0    0    0     0       0          0
 bad: x y
"""


def test_net_dev_is_parsed_per_interface_and_capped():
    assert M.parse_net_dev(NET_DEV) == {
        'lo': {'receive_bytes': 1000, 'receive_packets': 10, 'transmit_bytes': 1000, 'transmit_packets': 10},
        'eth0': {'receive_bytes': 123456789, 'receive_packets': 4321, 'transmit_bytes': 987654,
                 'transmit_packets': 321}}
    assert list(M.parse_net_dev(NET_DEV, limit=1)) == ['lo']
    assert M.parse_net_dev('') == {}


@pytest.mark.parametrize('raw, value', [('max', None), ('9223372036854771712', None), ('67108864', 67108864),
                                        ('', None), (None, None)])
def test_limits(raw, value):
    assert M._limit(raw) == value


def test_the_exposition_reads_back_through_a_real_parser():
    guests = [
        {'name': 'web', 'xid': 101, 'state': 'running', 'uptime_seconds': 12.5, 'cpu_user_seconds': 1.25,
         'cpu_system_seconds': 0.5, 'cpu_periods': 10, 'cpu_throttled_periods': 3, 'cpu_throttled_seconds': 0.25,
         'memory_usage_bytes': 7340032, 'memory_limit_bytes': None, 'memory_cache_bytes': 0, 'memory_swap_bytes': 0,
         'oom_kills': 2, 'processes': 3, 'tasks': 4, 'tasks_limit': None,
         'net': {'a"b\\c': {'receive_bytes': 1, 'receive_packets': 2, 'transmit_bytes': 3, 'transmit_packets': 4}},
         'disk_limit_bytes': 1 << 30, 'disk_used_bytes': 1 << 20},
        {'name': 'cold', 'xid': None, 'state': 'broken'}]
    text = M.render(guests, host='h"1')
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families['vserver_guest_cpu_seconds'].type == 'counter'   # the parser names a counter without _total
    assert families['vserver_guest_memory_usage_bytes'].type == 'gauge'
    assert 'vserver_guest_memory_limit_bytes' not in families and 'vserver_guest_tasks_limit' not in families
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    web = (('host', 'h"1'), ('name', 'web'), ('xid', '101'))
    assert values[('vserver_guest_cpu_seconds_total', tuple(sorted(web + (('mode', 'user'),))))] == 1.25
    assert values[('vserver_guest_network_receive_packets_total', tuple(sorted(web + (('interface', 'a"b\\c'),))))] == 2
    assert values[('vserver_guest_oom_kills_total', web)] == 2
    assert values[('vserver_guest_disk_used_bytes', web)] == 1 << 20
    cold = (('host', 'h"1'), ('name', 'cold'), ('state', 'broken'), ('xid', ''))
    assert values[('vserver_guest_state', cold)] == 1
    assert M.render([]) == ''


def test_every_family_has_help_and_type_before_its_samples():
    text = M.render([{'name': 'web', 'xid': 1, 'state': 'stopped'}], host='h')
    assert text.splitlines() == [
        '# HELP vserver_guest_state Guest state: 1 for the state the guest is in, 0 for the others.',
        '# TYPE vserver_guest_state gauge'] + [
        'vserver_guest_state{name="web",xid="1",host="h",state="%s"} %d' % (s, s == 'stopped') for s in M.STATES]
