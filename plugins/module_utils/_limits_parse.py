# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the limits concern's parsing and validation (floor 3).

``validate(params, host, layout)`` turns user input into the canonical ``limits`` section (or raises VServerError
naming the field and the accepted form, before anything is written); ``merge(stored, params)`` puts a task's
options over the stored section. ``Host`` is what validation reads from this host; every path is a parameter so
unit tests use fakes.
"""

from __future__ import annotations

import copy
import os
import re
import resource
import stat
from typing import TYPE_CHECKING, Any, Iterable

from ansible_collections.vserver.core.plugins.module_utils import _procfs as P
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._disk import (
    CAP_SYS_RESOURCE, DISK_BACKENDS, DISK_FSTYPES, DISK_MIN)

if TYPE_CHECKING:
    from ansible_collections.vserver.core.plugins.module_utils._cgroup import Layout

MAX = 'max'
UNITS = {'': 1, 'B': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
SIZE_RE = re.compile(r'^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$', re.IGNORECASE)
SIZE_FORM = 'bytes (an integer) or a number with K, M, G or T (binary units, e.g. 512M), or max/unlimited'
PAGE = 4096
V1_UNLIMITED = 1 << 62          # v1 memory files read back 9223372036854771712 for "no limit"
CPU_PERIOD_DEFAULT = 100000     # us, the kernel's default CFS period
CPU_WEIGHT_DEFAULT = 100        # cgroup v2 cpu.weight default; v1 cpu.shares default 1024
IO_WEIGHT_DEFAULT = 100
KEYS = ('memory', 'memory_high', 'swap', 'nproc', 'cpu', 'cpu_weight', 'cpuset', 'io', 'rlimits', 'disk')

RLIMITS = {name[7:].lower(): getattr(resource, name) for name in dir(resource)
           if name.startswith('RLIMIT_') and name != 'RLIMIT_OFILE'}


# --- parsing ----------------------------------------------------------------------------------------

def parse_size(value: Any, field: str, allow_max: bool = True, allow_zero: bool = False) -> int | str:
    """'512M' -> 536870912; 'max'/'unlimited' -> 'max'. Refuses negatives, zero (unless allowed), junk."""
    if isinstance(value, bool) or value is None:
        raise VServerError('%s: expected %s (got %r)' % (field, SIZE_FORM, value), field)
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if text.lower() in ('max', 'unlimited', 'infinity'):
            if not allow_max:
                raise VServerError('%s: must be a size, not unlimited (%s)' % (field, SIZE_FORM), field)
            return MAX
        match = SIZE_RE.match(text)
        if not match:
            raise VServerError('%s: expected %s (got %r)' % (field, SIZE_FORM, value), field)
        number = int(match.group(1)) * UNITS[match.group(2).upper()]
    if number < 0 or (number == 0 and not allow_zero):
        least = 'zero or more' if allow_zero else 'above zero'
        raise VServerError('%s: expected %s, %s (got %r)' % (field, SIZE_FORM, least, value), field)
    return number


def parse_int(value: Any, field: str, low: int | None = None, high: int | None = None, allow_max: bool = False,
              form: str | None = None) -> int | str:
    if allow_max and isinstance(value, str) and value.strip().lower() in ('max', 'unlimited', 'infinity'):
        return MAX
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError
        number = int(str(value).strip())
    except (TypeError, ValueError):
        number = None
    if number is None or (low is not None and number < low) or (high is not None and number > high):
        rng = form or 'an integer%s%s%s' % (
            ' from %d' % low if low is not None else '', ' to %d' % high if high is not None else '',
            ', or max' if allow_max else '')
        raise VServerError('%s: expected %s (got %r)' % (field, rng, value), field)
    return number


def parse_cpulist(text: str | None) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]; raises ValueError on junk."""
    out = set()
    text = (text or '').strip()
    if not text:
        return []
    for part in text.split(','):
        part = part.strip()
        if '-' in part:
            low, high = part.split('-', 1)
            low, high = int(low), int(high)
            if low > high:
                raise ValueError(part)
            out.update(range(low, high + 1))
        else:
            out.add(int(part))
    return sorted(out)


def format_cpulist(cpus: Iterable[int]) -> str:
    parts = []
    cpus = sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else '%d-%d' % (cpus[i], cpus[j]))
        i = j + 1
    return ','.join(parts)


class Host:
    """What validation needs to know about this host; every path is a parameter so unit tests use fakes."""

    def __init__(self, sys_root='/sys', proc_root='/proc', dev_root='/dev', layout=None):
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.dev_root = dev_root
        self.layout = layout

    def online_cpus(self):
        with open(os.path.join(self.sys_root, 'devices/system/cpu/online')) as handle:
            return parse_cpulist(handle.read())

    def block_device(self, spec, field):
        """'/dev/vda' or '254:0' -> '254:0' of a whole disk; raises for anything else."""
        text = str(spec).strip()
        if re.match(r'^\d+:\d+$', text):
            majmin = text
        else:
            path = text if text.startswith('/') else os.path.join(self.dev_root, text)
            try:
                st = os.stat(path)
            except OSError:
                raise VServerError('%s: unknown device %r; give a block device path such as /dev/vda or '
                                   'MAJOR:MINOR' % (field, spec), field)
            if not stat.S_ISBLK(st.st_mode):
                raise VServerError('%s: %r is not a block device' % (field, spec), field)
            majmin = '%d:%d' % (os.major(st.st_rdev), os.minor(st.st_rdev))
        sysdir = os.path.join(self.sys_root, 'dev/block', majmin)
        if not os.path.isdir(sysdir):
            raise VServerError('%s: unknown device %r (no block device %s on this host)' % (field, spec, majmin),
                               field)
        if os.path.exists(os.path.join(sysdir, 'partition')):
            raise VServerError('%s: %r is a partition; I/O limits apply to whole disks (e.g. /dev/vda)'
                               % (field, spec), field)
        return majmin

    def has_cap(self, bit):
        return P.has_effective_cap(bit, self.proc_root)

    def nr_open(self):
        try:
            with open(os.path.join(self.proc_root, 'sys/fs/nr_open')) as handle:
                return int(handle.read())
        except OSError:
            return 1 << 20

    def own_rlimit(self, resource_id):
        return resource.getrlimit(resource_id)


def _rlimit_value(value, field):
    if isinstance(value, str) and value.strip().lower() in ('unlimited', 'infinity', 'max', '-1'):
        return 'unlimited'
    if isinstance(value, int) and value == -1:
        return 'unlimited'
    return parse_int(value, field, low=0, form='an integer >= 0 or unlimited')


def _rl_cmp(value):
    return float('inf') if value == 'unlimited' else value


def validate_rlimits(raw: Any, host: Host, field: str = 'rlimits') -> dict | None:
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict):
        raise VServerError('%s: expected a mapping of rlimit name to a value or {soft, hard} (names: %s)'
                           % (field, ', '.join(sorted(RLIMITS))), field)
    out = {}
    for name, spec in raw.items():
        key = str(name).strip().lower()
        if key.startswith('rlimit_'):
            key = key[7:]
        sub = '%s.%s' % (field, name)
        if key not in RLIMITS:
            raise VServerError('%s: unknown rlimit %r; known: %s' % (field, name, ', '.join(sorted(RLIMITS))),
                               sub)
        if isinstance(spec, dict):
            unknown = set(spec) - {'soft', 'hard'}
            if unknown or not spec:
                raise VServerError('%s: give soft and/or hard (got %s)' % (sub, ', '.join(sorted(map(str, spec)))),
                                   sub)
            soft = _rlimit_value(spec.get('soft', spec.get('hard')), sub + '.soft')
            hard = _rlimit_value(spec.get('hard', spec.get('soft')), sub + '.hard')
        else:
            soft = hard = _rlimit_value(spec, sub)
        if _rl_cmp(soft) > _rl_cmp(hard):
            raise VServerError('%s: soft limit %s is above the hard limit %s' % (sub, soft, hard), sub)
        if key == 'nofile':
            nr_open = host.nr_open()
            if hard == 'unlimited' or hard > nr_open:
                raise VServerError('%s: the kernel caps nofile at fs.nr_open = %d (got %s)' % (sub, nr_open, hard),
                                   sub)
        own_hard = host.own_rlimit(RLIMITS[key])[1]
        if own_hard != resource.RLIM_INFINITY and _rl_cmp(hard) > own_hard and not host.has_cap(CAP_SYS_RESOURCE):
            raise VServerError(
                '%s: hard limit %s is above this host\'s own hard limit %d, and raising a hard limit needs '
                'CAP_SYS_RESOURCE, which root lacks on this host (its bounding set drops it); use at most %d'
                % (sub, hard, own_hard, own_hard), sub)
        out[key] = {'soft': soft, 'hard': hard}
    return dict(sorted(out.items()))


def validate_cpu(raw: Any, host: Host, field: str = 'cpu') -> dict | None:
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict):
        raise VServerError('%s: expected {fill_rate, interval} (VServer token bucket) or {quota, period} in '
                           'microseconds, optional burst' % field, field)
    allowed = {'fill_rate', 'interval', 'quota', 'period', 'burst'}
    unknown = set(raw) - allowed
    if unknown:
        raise VServerError('%s: unknown keys %s; accepted: %s'
                           % (field, ', '.join(sorted(unknown)), ', '.join(sorted(allowed))), field)
    given = {k: v for k, v in raw.items() if v is not None}
    period = parse_int(given.get('period', CPU_PERIOD_DEFAULT), field + '.period', 1000, 1000000)
    ncpu = len(host.online_cpus())
    if 'fill_rate' in given or 'interval' in given:
        if 'quota' in given:
            raise VServerError('%s: give either fill_rate + interval (token bucket) or quota + period, not both'
                               % field, field)
        if 'fill_rate' not in given or 'interval' not in given:
            raise VServerError('%s: the token bucket needs both fill_rate and interval (e.g. fill_rate: 1, '
                               'interval: 4 for 25%% of one CPU)' % field, field)
        fill = parse_int(given['fill_rate'], field + '.fill_rate', 1)
        interval = parse_int(given['interval'], field + '.interval', 1)
        quota = (period * fill) // interval
    elif 'quota' in given:
        quota = parse_int(given['quota'], field + '.quota', 1000, allow_max=True,
                          form='microseconds per period, at least 1000, or max')
    else:
        quota = MAX
    if quota != MAX:
        if quota < 1000:
            raise VServerError('%s: the CPU share is too small: quota %dus per %dus period (the kernel needs '
                               'at least 1000us; raise fill_rate or period)' % (field, quota, period), field)
        if quota > period * ncpu:
            raise VServerError('%s: quota %dus per %dus period is more than the %d online CPUs can give'
                               % (field, quota, period, ncpu), field)
    out = {'quota': quota, 'period': period}
    if 'burst' in given:
        burst = parse_int(given['burst'], field + '.burst', 0, form='microseconds >= 0')
        if quota == MAX or burst > quota:
            raise VServerError('%s.burst: must not exceed quota (%s)' % (field, quota), field + '.burst')
        out['burst'] = burst
    return out


IO_DEVICE_KEYS = ('read_bps', 'write_bps', 'read_iops', 'write_iops')


def validate_io(raw: Any, host: Host, field: str = 'io') -> dict | None:
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict) or set(raw) - {'weight', 'devices'}:
        raise VServerError('%s: expected {weight: 1..10000, devices: [{device, read_bps, write_bps, read_iops, '
                           'write_iops}]}' % field, field)
    out = {}
    if raw.get('weight') is not None:
        out['weight'] = parse_int(raw['weight'], field + '.weight', 1, 10000)
    devices = []
    seen = set()
    for index, entry in enumerate(raw.get('devices') or []):
        sub = '%s.devices[%d]' % (field, index)
        if not isinstance(entry, dict) or 'device' not in entry or set(entry) - {'device'} - set(IO_DEVICE_KEYS):
            raise VServerError('%s: expected {device: /dev/NAME or MAJOR:MINOR, read_bps, write_bps, read_iops, '
                               'write_iops}' % sub, sub)
        majmin = host.block_device(entry['device'], sub + '.device')
        if majmin in seen:
            raise VServerError('%s: device %s is listed twice' % (sub, entry['device']), sub)
        seen.add(majmin)
        item = {'device': str(entry['device']).strip()}
        for key in IO_DEVICE_KEYS:
            if entry.get(key) is None:
                continue
            if key.endswith('bps'):
                item[key] = parse_size(entry[key], '%s.%s' % (sub, key))
            else:
                item[key] = parse_int(entry[key], '%s.%s' % (sub, key), 1, allow_max=True)
        if len(item) == 1:
            raise VServerError('%s: give at least one of %s' % (sub, ', '.join(IO_DEVICE_KEYS)), sub)
        devices.append(item)
    if devices:
        out['devices'] = devices
    return out or None


def validate(params: dict | None, host: Host | None = None, layout: Layout | None = None) -> dict:
    """User input (module params or a role's dict) -> canonical ``limits`` section. Raises on bad input."""
    host = host or Host(layout=layout)
    params = params or {}
    unknown = set(k for k, v in params.items() if v is not None) - set(KEYS) - {'disk_backend', 'disk_fstype'}
    if unknown:
        raise VServerError('limits: unknown options %s; accepted: %s' % (', '.join(sorted(unknown)), ', '.join(KEYS)),
                           sorted(unknown)[0])
    out = _validate_memory(params, layout or host.layout)
    if params.get('nproc') is not None:
        out['nproc'] = parse_int(params['nproc'], 'nproc', 1, allow_max=True,
                                 form='a number of processes (at least 1), or max')
    cpu = validate_cpu(params.get('cpu'), host)
    if cpu and (cpu['quota'] != MAX or 'burst' in cpu or cpu['period'] != CPU_PERIOD_DEFAULT):
        out['cpu'] = cpu
    if params.get('cpu_weight') is not None:
        out['cpu_weight'] = parse_int(params['cpu_weight'], 'cpu_weight', 1, 10000)
    if params.get('cpuset') is not None:
        out['cpuset'] = validate_cpuset(params['cpuset'], host)
    optional = (('io', validate_io(params.get('io'), host)),
                ('rlimits', validate_rlimits(params.get('rlimits'), host)),
                ('disk', disk_validate(params.get('disk'), params.get('disk_backend'), params.get('disk_fstype'))))
    out.update((key, value) for key, value in optional if value)
    return out


def _validate_memory(params, layout):
    """memory, memory_high and swap (which depend on each other)."""
    out = {}
    if params.get('memory') is not None:
        out['memory'] = parse_size(params['memory'], 'memory')
    if params.get('memory_high') is not None:
        out['memory_high'] = parse_size(params['memory_high'], 'memory_high')
        if out.get('memory', MAX) != MAX and out['memory_high'] != MAX and out['memory_high'] > out['memory']:
            raise VServerError('memory_high (%d) must not be above memory (%d): it throttles before the hard limit'
                               % (out['memory_high'], out['memory']), 'memory_high')
    if params.get('swap') is not None:
        out['swap'] = parse_size(params['swap'], 'swap', allow_zero=True)
        if layout is not None and layout.version == 1 and out.get('memory', MAX) == MAX and out['swap'] != MAX:
            raise VServerError('swap: on cgroup v1 hosts swap is limited through memory.memsw (memory + swap), so '
                               'it needs memory to be set too', 'swap')
    return out


def validate_cpuset(raw, host, field='cpuset'):
    """'0-1' or '0,2' -> the canonical CPU list; each CPU must be online."""
    text = str(raw).strip()
    try:
        cpus = parse_cpulist(text)
    except ValueError:
        cpus = None
    if not cpus:
        raise VServerError('%s: expected a CPU list such as 0-1 or 0,2, or all to lift the pinning (got %r)'
                           % (field, raw), field)
    online = host.online_cpus()
    outside = [c for c in cpus if c not in online]
    if outside:
        raise VServerError('%s: CPUs %s are not online on this host (online: %s)'
                           % (field, format_cpulist(outside), format_cpulist(online)), field)
    return format_cpulist(cpus)


# Options a task leaves out (None) keep their stored value; these spellings remove an option from the section
# (the kernel default again). Sizes, counts and cpu.quota take max/unlimited, which the parsers already read as
# "no limit"; cpu_weight goes back to the default with 100; io and rlimits with {} (no I/O limit, no rlimit set).
CPUSET_ALL = ('all',)
DISK_NONE = ('none',)


def _is_word(value, words):
    return isinstance(value, str) and value.strip().lower() in words


def merge(stored: dict | None, params: dict | None) -> dict:
    """Raw options for ``validate``: the stored section with the options a task gives (not None) put over it.

    ``cpuset: all`` and ``disk: none`` remove those options; every other option is removed by its own "no
    limit" value (see the module's documentation), which ``validate`` drops or keeps as max."""
    out = copy.deepcopy(dict(stored or {}))
    for key, value in (params or {}).items():
        if value is None:
            continue
        if (key == 'cpuset' and _is_word(value, CPUSET_ALL)) or (key == 'disk' and _is_word(value, DISK_NONE)):
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --- disk (the option; the loop image and btrfs qgroup are in _disk) ---------------------------------

def disk_validate(raw: Any, backend: str | None = None, fstype: str | None = None, field: str = 'disk') -> dict | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        unknown = set(raw) - {'size', 'backend', 'fstype'}
        if unknown or 'size' not in raw:
            raise VServerError('%s: expected a size (e.g. 2G) or {size, backend: auto|loop|btrfs, fstype: ext4|xfs}'
                               % field, field)
        backend = raw.get('backend') or backend
        fstype = raw.get('fstype') or fstype
        raw = raw['size']
    if _is_word(raw, ('max', 'unlimited', 'infinity')):
        raise VServerError('%s: expected a size (e.g. 2G), not unlimited; give none to remove the disk limit '
                           '(got %r)' % (field, raw), field)
    size = parse_size(raw, field, allow_max=False)
    backend = (backend or 'auto').strip().lower()
    if backend not in DISK_BACKENDS:
        raise VServerError('disk_backend: expected one of %s (got %r)' % (', '.join(DISK_BACKENDS), backend),
                           'disk_backend')
    fstype = (fstype or 'ext4').strip().lower()
    if fstype not in DISK_FSTYPES:
        raise VServerError('disk_fstype: expected one of %s (got %r)' % (', '.join(DISK_FSTYPES), fstype),
                           'disk_fstype')
    least = DISK_MIN['btrfs' if backend == 'btrfs' else fstype]
    if size < least:
        raise VServerError('%s: %d bytes is too small for %s (at least %dM)'
                           % (field, size, 'a btrfs qgroup' if backend == 'btrfs' else fstype, least >> 20), field)
    return {'size': size, 'backend': backend, 'fstype': fstype}
