"""Failover of a guest in a three-node Pacemaker cluster on this machine (tests/ha/cluster.py; `make test-ha`, not
part of `make test`: booting three nodes and forming the cluster takes about a minute and a half).

The cluster role (roles/cluster) defines the guest as a resource with its Filesystem (the shared loop device),
ordered and colocated; the node running the guest is killed; the guest must answer on its address from another
node, never run on two nodes at once, and the time from the kill to its first answer is printed (bench/failover
repeats it five times for the median)."""
import os

import pytest

import cluster as C

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists('/usr/bin/systemd-nspawn'), reason='systemd-container missing')]


@pytest.fixture(scope='module')
def cl(tmp_path_factory):
    ready = C.cluster_ready(tmp_path_factory.mktemp('ha'))
    yield ready
    ready.close()


def test_role_defines_the_guest_and_its_storage(cl):
    first = cl.nodes[0]
    assert C.playbook(first, '--check') > 0                                # check mode: the plan, nothing written
    assert 'vsg-' + C.GUEST not in cl.crm('cibadmin --query --scope resources').stdout
    assert C.playbook(first) > 0
    assert C.playbook(first) == 0                                          # idempotent
    cib = cl.crm('cibadmin --query --scope configuration').stdout
    assert 'type="Filesystem"' in cib and 'provider="vserver-core"' in cib
    assert 'first="vsg-%s-fs" then="vsg-%s"' % (C.GUEST, C.GUEST) in cib
    where = C.wait_running(cl)
    fs_where = cl.where('vsg-%s-fs' % C.GUEST)
    assert where == fs_where                                             # colocated with its storage
    assert sum(cl.running_guests().values()) == 1


def test_the_guest_fails_over_when_its_node_dies(cl):
    C.wait_running(cl)
    times, victim, now, most = C.failover(cl)
    print('\nfailover: %s killed, %s answered after %.1f s on %s' % (victim.name, C.GUEST_ADDR, times['guest'], now))
    assert len(now) == 1 and now[0] != victim.name
    assert most == 1                                                     # never on two nodes at once
    assert cl.where('vsg-' + C.GUEST) == now
