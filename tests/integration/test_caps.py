"""Capabilities seen from inside a running guest: the default bounding set, ccaps raw_icmp, the module."""
import json
import os
import socket
import struct
import subprocess
import time

import pytest

from ansible_collections.vserver.core.plugins.module_utils import _caps, _config, _runtime, _runtime_child, _kernel as K
from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils import _mgr_capabilities

from helpers import guest_sh


def caps_ensure(*args, **kwargs):
    """The capabilities manager's result as the module returns it."""
    return _mgr_capabilities.ensure(*args, **kwargs).to_dict()


EPERM_TEXT = ('Operation not permitted', 'permission denied')


def _denied(proc):
    text = (proc.stdout + proc.stderr)
    return proc.returncode != 0 and any(t in text for t in EPERM_TEXT)


def test_default_bounding_set_from_inside(make_guest, host_paths):
    doc = make_guest('vst-caps', start=True)
    pid = _runtime.Runtime(host_paths, 'vst-caps').init_pid()
    status = P.read_status(pid)
    assert int(status['CapBnd'], 16) == _caps.mask(_caps.DEFAULT_BCAPS) & ((1 << (K.cap_last_cap() + 1)) - 1)
    assert int(status['CapInh'], 16) == 0 and int(status['CapAmb'], 16) == 0
    for dropped in _caps.UTIL_VSERVER_INSECURE:
        assert dropped not in _caps.DEFAULT_BCAPS or dropped == 'sys_boot'   # vshelper's reboot: see test_guest_reboot

    now = int(time.time())
    cases = {
        'mknod': 'mknod /tmp/null2 c 1 3',
        'mount': 'mkdir -p /tmp/m && mount -t tmpfs none /tmp/m',
        'module': 'printf "\\177ELFjunk" > /tmp/x.ko && insmod /tmp/x.ko',
        'clock': 'date -s @%d' % now,   # the current time: harmless even if it went through
        'raw socket': 'ping -c 1 -W 1 127.0.0.1',
        'interfaces': 'ip link set lo down',
        'new interface': 'ip link add vstcapx type dummy',
    }
    for what, script in cases.items():
        proc = guest_sh(host_paths, 'vst-caps', script, timeout=30)
        if what == 'clock':  # busybox date reports the failed settimeofday() but exits 0
            assert "can't set date: Operation not permitted" in proc.stderr, proc.stderr
            continue
        assert _denied(proc), '%s was not denied: rc=%d %s %s' % (what, proc.returncode, proc.stdout, proc.stderr)
    assert _runtime.Runtime(host_paths, 'vst-caps').init_pid() == pid   # (reboot: test_guest_reboot.py)

    ok = guest_sh(host_paths, 'vst-caps',
                  'touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u:%g /tmp/f && '
                  'httpd -p 127.0.0.1:80 -h /tmp && sleep 0.3 && grep -c " 0100007F:0050 .* 0A " /proc/net/tcp')
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ['1000:1000', '1']
    _runtime.stop(host_paths, dict(doc, stop_timeout=0.5, stop_signal='SIGKILL'))


def _in_guest(paths, doc, func, timeout=10):
    """Run ``func`` in a child that joined the guest's cgroup, net/uts/ipc/pid namespaces and dropped
    privileges exactly like the guest's processes (``_runtime_child.drop_privileges``); returns func's result.
    Used where the guest's busybox has no tool: its ping only opens raw sockets, never ICMP datagram ones."""
    rt = _runtime.Runtime(paths, doc['name'])
    pid = rt.init_pid()
    fds = [os.open('/proc/%d/ns/%s' % (pid, kind), os.O_RDONLY) for kind in ('net', 'uts', 'ipc')]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            rt.group.join(os.getpid())
            for fd in fds:
                K.setns(fd, 0)
            _runtime_child.drop_privileges(_config.load(paths, doc['name']))
            result = {'ok': func()}
        except BaseException as exc:
            result = {'error': '%s: %s' % (type(exc).__name__, exc), 'errno': getattr(exc, 'errno', None)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    for fd in fds:
        os.close(fd)
    deadline = time.monotonic() + timeout
    raw = b''
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        raw += chunk
    os.close(read_end)
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return json.loads(raw)


def _icmp_echo(address, family):
    """One echo request over an ICMP datagram ("ping") socket, as unprivileged ping does; returns the reply type."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        sock.settimeout(2)
        echo = 8 if family == socket.AF_INET else 128
        sock.sendto(struct.pack('!BBHHH', echo, 0, 0, 0, 1) + b'vserver', (address, 0))
        data = sock.recvfrom(1024)[0]
        return data[0]
    finally:
        sock.close()


@pytest.fixture
def peer_netns(request):
    """A namespace of the test's own (vst prefix) holding the far end of a veth pair; yields its name."""
    name = 'vstp%d' % os.getpid()
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    yield name
    subprocess.run(['ip', 'netns', 'del', name], check=False)


def _wire(paths, guest, peer, index):
    """veth from the guest's netns to the peer netns: guest 198.18.7.(2*index+1), fd00:5653::7:(..)."""
    pid = _runtime.Runtime(paths, guest).init_pid()
    a, b = 'vstg%d%d' % (os.getpid() % 10000, index), 'vstq%d%d' % (os.getpid() % 10000, index)
    subprocess.run(['ip', 'link', 'add', a, 'type', 'veth', 'peer', 'name', b, 'netns', peer], check=True)
    subprocess.run(['ip', 'link', 'set', a, 'netns', str(pid)], check=True)
    g4, p4 = '198.18.7.%d' % (4 * index + 1), '198.18.7.%d' % (4 * index + 2)
    g6, p6 = 'fd00:5653::7:%d' % (4 * index + 1), 'fd00:5653::7:%d' % (4 * index + 2)
    ns = ['nsenter', '--net=/proc/%d/ns/net' % pid]
    subprocess.run(ns + ['ip', 'addr', 'add', g4 + '/30', 'dev', a], check=True)
    # a link made later in a guest's namespace starts with IPv6 off (docs/network.md): this one carries IPv6
    subprocess.run(ns + ['sh', '-c', 'echo 0 > /proc/sys/net/ipv6/conf/%s/disable_ipv6' % a], check=True)
    subprocess.run(ns + ['ip', 'addr', 'add', g6 + '/126', 'dev', a, 'nodad'], check=True)
    subprocess.run(ns + ['ip', 'link', 'set', a, 'up'], check=True)
    subprocess.run(['ip', '-n', peer, 'addr', 'add', p4 + '/30', 'dev', b], check=True)
    subprocess.run(['ip', '-n', peer, 'addr', 'add', p6 + '/126', 'dev', b, 'nodad'], check=True)
    subprocess.run(['ip', '-n', peer, 'link', 'set', b, 'up'], check=True)
    subprocess.run(['ip', '-n', peer, 'link', 'set', 'lo', 'up'], check=True)
    return p4, p6


def test_raw_icmp_ccap_ping(make_guest, host_paths, peer_netns):
    with_ping = make_guest('vst-ping', start=True, capabilities={'ccaps': ['ping']})
    without = make_guest('vst-noping', start=True)
    peer4, peer6 = _wire(host_paths, 'vst-ping', peer_netns, 0)
    other4, other6 = _wire(host_paths, 'vst-noping', peer_netns, 1)

    # inside: the sysctl is set in the guest's netns, read-only for the guest, and CAP_NET_RAW is absent
    proc = guest_sh(host_paths, 'vst-ping', 'cat /proc/sys/net/ipv4/ping_group_range; '
                                            'echo "1 0" > /proc/sys/net/ipv4/ping_group_range')
    assert proc.stdout.split() == ['0', '2147483647'] and proc.returncode != 0
    assert _denied(guest_sh(host_paths, 'vst-ping', 'ping -c 1 -W 1 %s' % peer4))  # busybox: raw socket only

    assert _in_guest(host_paths, with_ping, lambda: _icmp_echo(peer4, socket.AF_INET)) == {'ok': 0}   # echo reply
    assert _in_guest(host_paths, with_ping, lambda: _icmp_echo(peer6, socket.AF_INET6)) == {'ok': 129}
    for address, family in ((other4, socket.AF_INET), (other6, socket.AF_INET6)):
        denied = _in_guest(host_paths, without, lambda: _icmp_echo(address, family))
        assert 'error' in denied and denied['errno'] in (1, 13), denied     # EPERM/EACCES: not in the ping group
    # the host's own setting is untouched
    with open('/proc/sys/net/ipv4/ping_group_range') as handle:
        host_range = handle.read().split()
    assert host_range != [] and _runtime.Runtime(host_paths, 'vst-ping').netns

    # live: grant it to the other guest with the manager, no restart
    result = caps_ensure(host_paths, 'vst-noping', {'ccaps': ['raw_icmp']})
    assert result['changed'] and not result['restart_required'] and not result['restarted']
    assert _in_guest(host_paths, without, lambda: _icmp_echo(other4, socket.AF_INET)) == {'ok': 0}
    assert not caps_ensure(host_paths, 'vst-noping', {'ccaps': ['raw_icmp']})['changed']


def test_no_new_privs_and_custom_set(make_guest, host_paths):
    make_guest('vst-nnp', start=True, stop_timeout=1, stop_signal='SIGKILL',
               capabilities=_caps.validate({'bcaps': ['CAP_CHOWN', 'kill', 'setuid', 'setgid'],
                                            'no_new_privs': True}))
    status = P.read_status(_runtime.Runtime(host_paths, 'vst-nnp').init_pid())
    assert status['NoNewPrivs'] == '1'
    assert _caps.names_from_mask(int(status['CapBnd'], 16)) == ['chown', 'kill', 'setgid', 'setuid']
    inside = guest_sh(host_paths, 'vst-nnp', 'grep -E "^(NoNewPrivs|CapBnd)" /proc/self/status; '
                                             'touch /tmp/x; chown 7 /tmp/x && echo chowned; '
                                             'httpd -p 127.0.0.1:80 -h /tmp')
    assert 'NoNewPrivs:\t1' in inside.stdout and 'chowned' in inside.stdout
    assert 'Permission denied' in inside.stderr or 'not permitted' in inside.stderr   # no net_bind_service


def test_bad_capability_names_write_nothing(make_guest, host_paths):
    make_guest('vst-capbad')
    before = open(host_paths.config_file('vst-capbad'), 'rb').read()
    for params, field, words in (
            ({'bcaps': ['CAP_FLY']}, 'bcaps', 'CAP_CHOWN'),
            ({'bcaps_drop': ['chown', 'nope']}, 'bcaps_drop', 'unknown capability'),
            ({'ccaps': ['secure_mount']}, 'ccaps', 'raw_icmp'),
            ({'bcaps': ['chown'], 'bcaps_add': ['kill']}, 'bcaps', 'not both')):
        with pytest.raises(VServerError) as err:
            caps_ensure(host_paths, 'vst-capbad', params)
        assert err.value.field == field and words in str(err.value)
    assert open(host_paths.config_file('vst-capbad'), 'rb').read() == before
