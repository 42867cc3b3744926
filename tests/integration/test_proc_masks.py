"""Host-wide /proc and /sys files seen from inside a guest: masked (empty, unwritable) or read-only."""
import os

from ansible_collections.vserver.core.plugins.module_utils import _masks
from helpers import guest_sh


def _present(paths):
    return [p for p in paths if os.path.lexists(p)]


def test_masked_paths_read_empty_and_refuse_writes(host_paths, make_guest):
    make_guest('masked', start=True)
    masked = _present(_masks.MASKED)
    assert '/proc/timer_list' in masked and '/proc/slabinfo' in masked and '/sys/firmware' in masked
    script = ''.join(
        'p=%s; if [ -d $p ]; then echo "$p dir $(ls -A $p | wc -l)"; else echo "$p file $(head -c 64 $p 2>/dev/null '
        '| wc -c)"; fi; echo x 2>/dev/null > $p && echo "$p WRITABLE"; ' % p for p in masked) + 'true'
    out = guest_sh(host_paths, 'masked', script)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(' ', 1) for line in out.stdout.splitlines())
    assert 'WRITABLE' not in out.stdout, out.stdout
    for path in masked:
        kind, count = lines[path].split()
        assert count == '0', (path, lines[path])       # an empty file or an empty directory
    # the host itself still sees them (the masks live in the guest's mount namespace only)
    with open('/proc/timer_list') as handle:
        assert handle.read(64)


def test_proc_irq_and_other_host_settings_are_read_only(host_paths, make_guest):
    make_guest('irqro', start=True)
    targets = ['/proc/irq/default_smp_affinity'] + sorted(
        os.path.join('/proc/irq', d, 'smp_affinity') for d in os.listdir('/proc/irq') if d.isdigit())[:3]
    with open('/proc/irq/default_smp_affinity') as handle:
        before = handle.read()
    script = ''.join('v=$(cat %s) && echo "$v" > %s 2>&1; echo "rc=$?"; ' % (p, p) for p in targets)
    script += 'cat /proc/irq/default_smp_affinity; grep -q " /proc/irq .*ro," /proc/self/mounts && echo irq-ro; ' \
              'grep -q " /proc/bus .*ro," /proc/self/mounts && echo bus-ro; ' \
              'grep -q " /proc/fs .*ro," /proc/self/mounts && echo fs-ro'
    out = guest_sh(host_paths, 'irqro', script)
    assert out.stdout.count('rc=') == len(targets), out.stdout + out.stderr
    assert 'rc=0' not in out.stdout, out.stdout + out.stderr
    assert 'Read-only file system' in out.stdout + out.stderr
    assert before.strip() in out.stdout            # still readable
    assert {'irq-ro', 'bus-ro', 'fs-ro'} <= set(out.stdout.split())
    with open('/proc/irq/default_smp_affinity') as handle:
        assert handle.read() == before
