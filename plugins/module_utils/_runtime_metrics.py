# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: every guest's figures for monitoring, read from the kernel on the host side.

``sample(paths, doc)`` reads one guest: its cgroup files (v1 controllers or v2, through ``_cgroup``'s group), its
init's ``/proc/PID/net/dev`` (opened through the checked /proc fd of that very process: the guest owns its PID
namespace and its network namespace, never the host's /proc) and the filesystem of its disk image. ``collect``
samples every (or the named) guest; ``render`` writes them in the Prometheus text exposition format (version
0.0.4, which Prometheus, OpenMetrics scrapers and node_exporter's textfile collector read). docs/monitoring.md
lists the metrics; `vserver metrics` and `vserver stat --json` print them, the host role's timer writes them.
"""

from __future__ import annotations

import os

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _config, _procfs as P, _runtime
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError, check_name

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from ansible_collections.vserver.core.plugins.module_utils._common import Paths

STATES = ('running', 'frozen', 'stopped', 'broken')
# A guest's root names its interfaces and may make many of them: a scrape reads at most NET_DEV_MAX bytes of its
# net/dev and reports at most NET_IFACES_MAX interfaces (the series a guest can add to the monitoring stay bounded).
NET_DEV_MAX = 64 << 10
NET_IFACES_MAX = 32
NET_KEYS = ('receive_bytes', 'receive_packets', 'transmit_bytes', 'transmit_packets')
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded LONG_MAX


def _int(raw):
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


class _Keyed(dict):
    """'key value' lines (cpu.stat, memory.stat, memory.events, memory.oom_control): ``get`` gives an int or None
    (only the values asked for are converted)."""

    def get(self, key, default=None):
        return _int(dict.get(self, key, default))


def _scaled(value, per_second):
    return None if value is None else value / per_second


def _keyed(raw):
    words = (raw or '').split()
    return _Keyed(zip(words[::2], words[1::2]))


def _limit(raw):
    """A limit file's value: None for 'max' (v2) or v1's huge "unlimited"."""
    value = _int(raw)
    return value if value is not None and value < UNLIMITED else None


def _file(path):
    """A cgroup file's text, None when it is missing (os.open/os.read: a scrape reads ~14 files per guest, and
    text-mode open() costs twice as much)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode('ascii', 'replace').strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def _count_procs(top):
    """Processes in the cgroup subtree at ``top`` (a guest may make child cgroups of its own)."""
    count = 0
    for base, dummy, dummy2 in os.walk(top):
        count += len((_file(base + '/cgroup.procs') or '').split())
    return count


def cgroup_figures(group: _cgroup._Base) -> dict:
    """The guest's cgroup counters and limits, None where this host does not have them."""
    if group.layout.version == 2:
        return _v2(group)
    return _v1(group)


def _v1(group):
    dirs = {ctrl: os.path.join(mount, group.rel) for ctrl, mount in group.layout.v1.items()}

    def read(key):  # a controller not mounted on this host: None
        ctrl = key.split('.', 1)[0]
        return _file('%s/%s' % (dirs[ctrl], key)) if ctrl in dirs else None
    cpu = _keyed(read('cpu.stat'))
    mem = _keyed(read('memory.stat'))
    user, system = _int(read('cpuacct.usage_user')), _int(read('cpuacct.usage_sys'))
    top = dirs.get('pids')
    return {
        'cpu_user_seconds': _scaled(user, 1e9), 'cpu_system_seconds': _scaled(system, 1e9),
        'cpu_periods': cpu.get('nr_periods'), 'cpu_throttled_periods': cpu.get('nr_throttled'),
        'cpu_throttled_seconds': _scaled(cpu.get('throttled_time'), 1e9),
        'memory_usage_bytes': _int(read('memory.usage_in_bytes')),
        'memory_limit_bytes': _limit(read('memory.limit_in_bytes')),
        'memory_cache_bytes': mem.get('total_cache'), 'memory_swap_bytes': mem.get('total_swap'),
        'oom_kills': _keyed(read('memory.oom_control')).get('oom_kill'),
        'tasks': _int(read('pids.current')), 'tasks_limit': _limit(read('pids.max')),
        'processes': _count_procs(top) if top else None,
    }


def _v2(group):
    path = group.path

    def read(key):
        return _file('%s/%s' % (path, key))
    cpu = _keyed(read('cpu.stat'))
    mem = _keyed(read('memory.stat'))
    usec = {key: _scaled(cpu.get(key), 1e6) for key in ('user_usec', 'system_usec', 'throttled_usec')}
    return {
        'cpu_user_seconds': usec.get('user_usec'), 'cpu_system_seconds': usec.get('system_usec'),
        'cpu_periods': cpu.get('nr_periods'), 'cpu_throttled_periods': cpu.get('nr_throttled'),
        'cpu_throttled_seconds': usec.get('throttled_usec'),
        'memory_usage_bytes': _int(read('memory.current')),
        'memory_limit_bytes': _limit(read('memory.max')),
        'memory_cache_bytes': mem.get('file'), 'memory_swap_bytes': _int(read('memory.swap.current')),
        'oom_kills': _keyed(read('memory.events')).get('oom_kill'),
        'tasks': _int(read('pids.current')), 'tasks_limit': _limit(read('pids.max')),
        'processes': _count_procs(path),
    }


def parse_net_dev(raw: str, limit: int = NET_IFACES_MAX) -> dict[str, tuple]:
    """/proc/PID/net/dev -> {interface: {receive_bytes, receive_packets, transmit_bytes, transmit_packets}}, at
    most ``limit`` interfaces (the first ones listed); lines that do not parse are skipped."""
    out = {}
    for line in raw.splitlines()[2:]:
        name, sep, rest = line.partition(':')
        fields = rest.split()
        if not sep or len(fields) < 16 or not all(f.isdigit() for f in fields[:10]):
            continue
        out[name.strip()] = dict(zip(NET_KEYS, (int(fields[0]), int(fields[1]), int(fields[8]), int(fields[9]))))
        if len(out) >= limit:
            break
    return out


def _read_capped(proc_fd, name, cap):
    """A /proc file of the process behind ``proc_fd``, at most ``cap`` bytes (text); None once it is gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        chunks, size = [], 0
        while size < cap:
            chunk = os.read(fd, min(65536, cap - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b''.join(chunks).decode('utf-8', 'surrogateescape')
    except OSError:
        return None
    finally:
        os.close(fd)


def disk_figures(doc: dict) -> dict:
    """Used and limit bytes of a guest with a disk limit (its config's limits.disk); {} without one. The loop
    image's filesystem is mounted on the guest's root: statvfs of that mount point (never a path inside the tree)."""
    disk = (doc.get('limits') or {}).get('disk')
    size = disk.get('size') if isinstance(disk, dict) else None
    if not isinstance(size, int) or isinstance(size, bool):
        return {}
    out = {'disk_limit_bytes': size}
    root = doc.get('root')
    try:
        if isinstance(root, str) and os.path.ismount(root):
            st = os.statvfs(root)
            out['disk_used_bytes'] = (st.f_blocks - st.f_bfree) * st.f_frsize
    except OSError:
        pass
    return out


def sample(paths: Paths, doc: dict, layout: _cgroup.Layout | None = None, state: str | None = None) -> dict:
    """One guest's figures: name, xid, state, and for a running (or frozen) guest its uptime, cgroup counters,
    network counters per interface (``net``) and disk figures. ``state='broken'``: a guest whose config is unusable
    (its processes, if any, are still counted)."""
    rt = _runtime.Runtime(paths, doc['name'], layout)
    out = {'name': doc['name'], 'xid': doc.get('xid')}
    fd = rt.open_init()
    try:
        st = P.read_stat_at(fd) if fd is not None else None
        if st is None and fd is not None:
            os.close(fd)
            fd = None
        out['state'] = state or rt._state_of(rt.record['init_pid'] if fd is not None else None)
        if fd is None:
            if out['state'] == 'broken':
                out.update(cgroup_figures(rt.group))
            return out
        out['uptime_seconds'] = round(P.uptime() - st[2] / float(P.clock_ticks()), 2)
        out.update(cgroup_figures(rt.group))
        raw = _read_capped(fd, 'net/dev', NET_DEV_MAX)
        out['net'] = parse_net_dev(raw) if raw else {}
    finally:
        if fd is not None:
            os.close(fd)
    if state != 'broken':
        out.update(disk_figures(doc))
    return out


def collect(paths: Paths, names: list[str] | None = None, layout: _cgroup.Layout | None = None) -> list[dict]:
    """``sample`` of every guest (or of ``names``: each must be a configured guest), sorted by name. A guest whose
    config is unusable is sampled as ``broken``, never left out."""
    docs, broken = _config.scan(paths, ())
    if names:
        missing = [check_name(n, 'names') for n in names if n not in docs and n not in broken]
        if missing:
            raise VServerError('no such guest: %s' % ', '.join(missing), 'names')
    layout = layout or _cgroup.host_layout()
    out = []
    for name in sorted(set(names or []) or set(docs) | set(broken)):
        if name in broken:
            out.append(sample(paths, {'name': name, 'xid': broken[name].xid}, layout, state='broken'))
        else:
            out.append(sample(paths, docs[name], layout))
    return out


# --- the exposition ----------------------------------------------------------------------------------------------

# (metric name, type, help, key of a sample); in this order in the output. Names follow the Prometheus conventions:
# vserver_guest_ prefix, base units, _total on counters, _bytes and _seconds.
FAMILIES = (
    ('vserver_guest_state', 'gauge', 'Guest state: 1 for the state the guest is in, 0 for the others.', None),
    ('vserver_guest_uptime_seconds', 'gauge', 'Seconds since the guest\'s init started.', 'uptime_seconds'),
    ('vserver_guest_cpu_seconds_total', 'counter', 'CPU time used by the guest\'s processes, by mode.', None),
    ('vserver_guest_cpu_periods_total', 'counter', 'CFS bandwidth periods elapsed while the guest had runnable tasks.',
     'cpu_periods'),
    ('vserver_guest_cpu_throttled_periods_total', 'counter', 'CFS periods in which the guest hit its CPU quota.',
     'cpu_throttled_periods'),
    ('vserver_guest_cpu_throttled_seconds_total', 'counter', 'Time the guest\'s tasks were throttled by its CPU quota.',
     'cpu_throttled_seconds'),
    ('vserver_guest_memory_usage_bytes', 'gauge', 'Memory charged to the guest\'s cgroup (page cache included).',
     'memory_usage_bytes'),
    ('vserver_guest_memory_limit_bytes', 'gauge', 'The guest\'s memory limit (absent when unlimited).',
     'memory_limit_bytes'),
    ('vserver_guest_memory_cache_bytes', 'gauge', 'Page cache charged to the guest.', 'memory_cache_bytes'),
    ('vserver_guest_memory_swap_bytes', 'gauge', 'Swap used by the guest.', 'memory_swap_bytes'),
    ('vserver_guest_oom_kills_total', 'counter', 'Processes of the guest killed by the OOM killer at its memory limit.',
     'oom_kills'),
    ('vserver_guest_processes', 'gauge', 'Processes in the guest.', 'processes'),
    ('vserver_guest_tasks', 'gauge', 'Tasks (threads) in the guest, as counted by the pids controller.', 'tasks'),
    ('vserver_guest_tasks_limit', 'gauge', 'The guest\'s task limit (absent when unlimited).', 'tasks_limit'),
    ('vserver_guest_network_receive_bytes_total', 'counter', 'Bytes received per interface of the guest\'s netns.',
     'net:receive_bytes'),
    ('vserver_guest_network_receive_packets_total', 'counter', 'Packets received per interface of the guest\'s netns.',
     'net:receive_packets'),
    ('vserver_guest_network_transmit_bytes_total', 'counter', 'Bytes sent per interface of the guest\'s netns.',
     'net:transmit_bytes'),
    ('vserver_guest_network_transmit_packets_total', 'counter', 'Packets sent per interface of the guest\'s netns.',
     'net:transmit_packets'),
    ('vserver_guest_disk_used_bytes', 'gauge', 'Bytes used on the guest\'s disk image (guests with a disk limit).',
     'disk_used_bytes'),
    ('vserver_guest_disk_limit_bytes', 'gauge', 'The guest\'s disk limit.', 'disk_limit_bytes'),
)


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed escaped."""
    return value.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def _series(family, key, labels, guest):
    """The sample lines of one guest in one family."""
    if family == 'vserver_guest_state':
        return ['%s{%s,state="%s"} %d' % (family, labels, s, guest['state'] == s) for s in STATES]
    if family == 'vserver_guest_cpu_seconds_total':
        return ['%s{%s,mode="%s"} %s' % (family, labels, mode, str(guest['cpu_%s_seconds' % mode]))
                for mode in ('user', 'system') if guest.get('cpu_%s_seconds' % mode) is not None]
    if key.startswith('net:'):  # a network counter: one series per interface
        return ['%s{%s,interface="%s"} %d' % (family, labels, escape(iface), counters[key[4:]])
                for iface, counters in sorted((guest.get('net') or {}).items())]
    value = guest.get(key)
    return [] if value is None else ['%s{%s} %s' % (family, labels, str(value))]


def render(samples: list[dict], host: str | None = None) -> str:
    """The Prometheus text exposition of ``samples`` (``collect``'s), every series labelled name, xid and host;
    a family without any series is left out."""
    host = escape(host if host is not None else os.uname().nodename)
    lines = []
    labelled = [('name="%s",xid="%s",host="%s"' % (escape(g['name']), '' if g.get('xid') is None else g['xid'], host),
                 g) for g in samples]
    for family, kind, text, key in FAMILIES:
        series = [line for labels, guest in labelled for line in _series(family, key, labels, guest)]
        if series:
            lines.extend(['# HELP %s %s' % (family, text), '# TYPE %s %s' % (family, kind)] + series)
    return '\n'.join(lines) + '\n' if lines else ''


def write_textfile(directory: str, text: str, name: str = 'vserver.prom') -> str:
    """Write ``text`` to DIRECTORY/NAME completely or not at all (a temp file whose name does not end in .prom,
    then a rename: node_exporter never reads half a file); the directory must exist (it is node_exporter's
    --collector.textfile.directory: a typo here would write where nothing reads)."""
    from ansible_collections.vserver.core.plugins.module_utils._common import atomic_write
    if not os.path.isdir(directory):
        raise VServerError('textfile directory %s: no such directory (node_exporter\'s '
                           '--collector.textfile.directory)' % directory, 'textfile')
    path = os.path.join(directory, name)
    atomic_write(path, text, 0o644, durable=False)
    return path
