# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the spectator views of the `vserver` command (``ps``, the ``stat`` table)."""

from __future__ import annotations

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _config, _procfs as P

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (slow) at run time
if TYPE_CHECKING:
    from ansible_collections.vserver.core.plugins.module_utils._common import Paths


def processes(paths: Paths, docs: dict[str, dict] | None = None, proc: str = '/proc') -> list[dict]:
    """Every process on the host labelled with its context: 0 for the host, the guest's xid otherwise."""
    docs = _config.load_all(paths) if docs is None else docs
    xids = {name: doc.get('xid') for name, doc in docs.items()}
    parent = _cgroup.guest_parent(paths.cgroup_parent, None, proc=proc)
    out = []
    for pid in P.pids(proc):
        try:
            with open('%s/%d/cgroup' % (proc, pid)) as handle:
                cgroups = _cgroup.parse_proc_cgroup(handle.read())
            status_ = P.read_status(pid, proc) or {}
            st = P.read_stat(pid, proc)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if st is None:
            continue
        guest = _cgroup.guest_of(cgroups, parent)
        if guest is not None and guest not in xids:
            guest = None
        nspid = status_.get('NSpid', str(pid)).split()
        out.append({
            'pid': pid, 'xid': xids[guest] if guest else 0, 'guest': guest or '',
            'guest_pid': int(nspid[-1]) if guest else pid, 'state': st[0],
            'rss_kb': int((status_.get('VmRSS') or '0 kB').split()[0]),
            'cpu_seconds': round(st[3] / float(P.clock_ticks()), 2),
            # the guest's bytes: not UTF-8 -> U+FFFD (valid JSON text); escaped where printed (terminal_safe)
            'comm': status_.get('Name', '').encode('utf-8', 'surrogateescape').decode('utf-8', 'replace'),
        })
    return out


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return '-'
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return '%dd%02dh%02d' % (days, hours, minutes)
    return '%02d:%02d:%02d' % (hours, minutes, secs)


def format_bytes(value):
    if value is None:
        return '-'
    for unit in ('B', 'K', 'M', 'G', 'T'):
        if value < 1024 or unit == 'T':
            return ('%d%s' % (value, unit)) if unit == 'B' else ('%.1f%s' % (value, unit))
        value /= 1024.0
    return str(value)


def stat_table(rows: list[dict]) -> str:
    """A vserver-stat-like table from status() rows; DISK is the disk limit, ``none`` for a guest without one
    (its tree can fill the host filesystem it lives on), ``-`` when unknown (a broken config)."""
    width = max([len('NAME')] + [len(row['name']) for row in rows])
    fmt = '%-6s %5s %8s %6s %10s %10s %-9s %-' + str(width) + 's %s'
    lines = [(fmt % ('CTX', 'PROC', 'RSS', 'DISK', 'CPUTIME', 'UPTIME', 'STATE', 'NAME', 'ADDRESSES')).rstrip()]
    for row in sorted(rows, key=lambda r: r.get('xid') or 0):
        disk = '-' if 'disk_limit' not in row else (format_bytes(row['disk_limit']) if row['disk_limit'] else 'none')
        lines.append((fmt % (
            '-' if row.get('xid') is None else row['xid'], row.get('nproc') or 0,
            format_bytes(row.get('memory_bytes')), disk, format_duration(row.get('cpu_seconds')),
            format_duration(row.get('uptime')), row['state'], row['name'], ','.join(row.get('addresses') or []) or '-')).rstrip())
    return '\n'.join(lines)
