# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: guest resource limits (the ``limits`` config section).

``validate(params)`` turns user input into the canonical section (or raises VServerError naming the field
and the accepted form, before anything is written). ``settings(section, layout, group)`` maps the section to
cgroup files for the host's backend (v1 or v2); ``apply(group, section)`` writes the files whose kernel
value differs (the same code runs at guest start and live). Rlimits are applied by the guest's init at start
(``child_hook``) and live with prlimit(2) on every process of the guest. ``ensure()`` is the manager the
module (and any list-taking role) calls.
"""

from __future__ import annotations

import copy
import errno
import os
import re
import resource

import ctypes
import platform
import shutil
import stat
import struct

from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _kernel as K
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError

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

# The minimal /dev of a guest (see _runtime._setup_root): (type, major, minor or None for '*').
DEVICES = (('c', 1, 3), ('c', 1, 5), ('c', 1, 7), ('c', 1, 8), ('c', 1, 9),  # null zero full random urandom
           ('c', 5, 0), ('c', 5, 2), ('c', 136, None))                      # tty, ptmx, pts/*
# (/dev/console is a null device, 1:3, in a guest: the host's console is never reachable.)


# --- parsing ----------------------------------------------------------------------------------------

def parse_size(value, field, allow_max=True, allow_zero=False):
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


def parse_int(value, field, low=None, high=None, allow_max=False, form=None):
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


def parse_cpulist(text):
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


def format_cpulist(cpus):
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
        with open(os.path.join(self.proc_root, 'self/status')) as handle:
            for line in handle:
                if line.startswith('CapEff:'):
                    return bool(int(line.split()[1], 16) & (1 << bit))
        return False

    def nr_open(self):
        try:
            with open(os.path.join(self.proc_root, 'sys/fs/nr_open')) as handle:
                return int(handle.read())
        except OSError:
            return 1 << 20

    def own_rlimit(self, resource_id):
        return resource.getrlimit(resource_id)


CAP_SYS_RESOURCE = 24


def _rlimit_value(value, field):
    if isinstance(value, str) and value.strip().lower() in ('unlimited', 'infinity', 'max', '-1'):
        return 'unlimited'
    if isinstance(value, int) and value == -1:
        return 'unlimited'
    return parse_int(value, field, low=0, form='an integer >= 0 or unlimited')


def _rl_int(value):
    return resource.RLIM_INFINITY if value == 'unlimited' else value


def _rl_cmp(value):
    return float('inf') if value == 'unlimited' else value


def validate_rlimits(raw, host, field='rlimits'):
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


def validate_cpu(raw, host, field='cpu'):
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


def validate_io(raw, host, field='io'):
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


def validate(params, host=None, layout=None):
    """User input (module params or a role's dict) -> canonical ``limits`` section. Raises on bad input."""
    host = host or Host(layout=layout)
    params = params or {}
    unknown = set(k for k, v in params.items() if v is not None) - set(KEYS) - {'disk_backend', 'disk_fstype'}
    if unknown:
        raise VServerError('limits: unknown options %s; accepted: %s' % (', '.join(sorted(unknown)), ', '.join(KEYS)),
                           sorted(unknown)[0])
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
        lay = layout or host.layout
        if lay is not None and lay.version == 1 and out.get('memory', MAX) == MAX and out['swap'] != MAX:
            raise VServerError('swap: on cgroup v1 hosts swap is limited through memory.memsw (memory + swap), so '
                               'it needs memory to be set too', 'swap')
    if params.get('nproc') is not None:
        out['nproc'] = parse_int(params['nproc'], 'nproc', 1, allow_max=True,
                                 form='a number of processes (at least 1), or max')
    cpu = validate_cpu(params.get('cpu'), host)
    if cpu and (cpu['quota'] != MAX or 'burst' in cpu or cpu['period'] != CPU_PERIOD_DEFAULT):
        out['cpu'] = cpu
    if params.get('cpu_weight') is not None:
        out['cpu_weight'] = parse_int(params['cpu_weight'], 'cpu_weight', 1, 10000)
    if params.get('cpuset') is not None:
        text = str(params['cpuset']).strip()
        try:
            cpus = parse_cpulist(text)
        except ValueError:
            cpus = None
        if not cpus:
            raise VServerError('cpuset: expected a CPU list such as 0-1 or 0,2, or all to lift the pinning (got %r)'
                               % params['cpuset'], 'cpuset')
        online = host.online_cpus()
        outside = [c for c in cpus if c not in online]
        if outside:
            raise VServerError('cpuset: CPUs %s are not online on this host (online: %s)'
                               % (format_cpulist(outside), format_cpulist(online)), 'cpuset')
        out['cpuset'] = format_cpulist(cpus)
    io = validate_io(params.get('io'), host)
    if io:
        out['io'] = io
    rlimits = validate_rlimits(params.get('rlimits'), host)
    if rlimits:
        out['rlimits'] = rlimits
    disk = disk_validate(params.get('disk'), params.get('disk_backend'), params.get('disk_fstype'))
    if disk:
        out['disk'] = disk
    return out


# Options a task leaves out (None) keep their stored value; these spellings remove an option from the section
# (the kernel default again). Sizes, counts and cpu.quota take max/unlimited, which the parsers already read as
# "no limit"; cpu_weight goes back to the default with 100; io and rlimits with {} (no I/O limit, no rlimit set).
CPUSET_ALL = ('all',)
DISK_NONE = ('none',)


def _is_word(value, words):
    return isinstance(value, str) and value.strip().lower() in words


def merge(stored, params):
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


# --- cgroup files ------------------------------------------------------------------------------------

class Setting:
    """One cgroup file: the value to write and how to compare it with what the kernel reads back."""

    def __init__(self, key, value, field, norm=None):
        self.key = key
        self.value = value          # canonical desired value (compared after norm())
        self.field = field          # the option it comes from (for error messages)
        self.norm = norm or (lambda raw: raw.strip())

    def __repr__(self):
        return 'Setting(%s=%r)' % (self.key, self.value)


def _v1_mem(raw):
    value = int(raw.strip())
    return MAX if value >= V1_UNLIMITED else value


def _v2_max(raw):
    text = raw.strip()
    return MAX if text == 'max' else int(text)


def _v1_quota(raw):
    value = int(raw.strip())
    return MAX if value < 0 else value


def _page(value):
    return value if value == MAX else (value // PAGE) * PAGE


def _keyed(raw):
    """'254:0 1048576\\n7:0 10' or io.max lines -> {'254:0': '1048576'} / {'254:0': {'rbps': ...}}."""
    out = {}
    for line in (raw or '').splitlines():
        parts = line.split()
        if len(parts) < 2 or ':' not in parts[0]:
            continue
        if '=' in parts[1]:
            out[parts[0]] = dict(p.split('=', 1) for p in parts[1:])
        else:
            out[parts[0]] = parts[1]
    return out


def _weight_norm(raw):
    text = raw.strip().splitlines()[0] if raw.strip() else ''
    return int(text.split()[-1]) if text else None


def _cpus_norm(raw):
    return format_cpulist(parse_cpulist(raw))


def _resolve_devices(io, host):
    out = []
    for index, entry in enumerate((io or {}).get('devices') or []):
        out.append((host.block_device(entry['device'], 'io.devices[%d].device' % index), entry))
    return out


def settings(section, layout, group=None, host=None):
    """The cgroup files (in write order) a limits section maps to on this host's backend.

    Every managed file is listed, options absent from the section with their default, so that applying
    a section to a running guest also lifts limits that were removed.
    """
    host = host or Host(layout=layout)
    section = section or {}
    out = []
    memory = _page(section.get('memory', MAX))
    high = _page(section.get('memory_high', MAX))
    swap = section.get('swap', MAX)
    cpu = section.get('cpu') or {}
    quota = cpu.get('quota', MAX)
    period = cpu.get('period', CPU_PERIOD_DEFAULT)
    burst = cpu.get('burst', 0)
    weight = section.get('cpu_weight', CPU_WEIGHT_DEFAULT)
    io = section.get('io') or {}
    devices = _resolve_devices(io, host)
    if layout.version == 2:
        out.append(Setting('memory.max', memory, 'memory', _v2_max))
        out.append(Setting('memory.high', high, 'memory_high', _v2_max))
        out.append(Setting('memory.swap.max', _page(swap), 'swap', _v2_max))
        out.append(Setting('pids.max', section.get('nproc', MAX), 'nproc', _v2_max))
        out.append(Setting('cpu.max', '%s %d' % (quota, period), 'cpu', lambda raw: ' '.join(raw.split())))
        out.append(Setting('cpu.max.burst', burst, 'cpu.burst', lambda raw: int(raw.strip())))
        out.append(Setting('cpu.weight', weight, 'cpu_weight', lambda raw: int(raw.strip())))
        out.append(Setting('cpuset.cpus', section.get('cpuset', ''), 'cpuset', _cpus_norm))
        out.append(Setting('io.weight', io.get('weight', IO_WEIGHT_DEFAULT), 'io.weight', _weight_norm))
        wanted = {}
        for majmin, entry in devices:
            wanted[majmin] = {'rbps': str(entry.get('read_bps', MAX)), 'wbps': str(entry.get('write_bps', MAX)),
                              'riops': str(entry.get('read_iops', MAX)), 'wiops': str(entry.get('write_iops', MAX))}
        out.append(Setting('io.max', wanted, 'io.devices', _keyed))
        return out
    # cgroup v1
    if swap == MAX or memory == MAX:
        memsw = MAX
    else:
        memsw = _page(memory + swap)
    out.append(Setting('memory.limit_in_bytes', memory, 'memory', _v1_mem))
    if os.path.exists(os.path.join(layout.v1.get('memory', '/nonexistent'), 'memory.memsw.limit_in_bytes')):
        out.append(Setting('memory.memsw.limit_in_bytes', memsw, 'swap', _v1_mem))
    # v1 has no throttling limit: memory_high maps to the soft limit (reclaimed first under host pressure).
    out.append(Setting('memory.soft_limit_in_bytes', high, 'memory_high', _v1_mem))
    out.append(Setting('pids.max', section.get('nproc', MAX), 'nproc', _v2_max))
    out.append(Setting('cpu.cfs_period_us', period, 'cpu.period', lambda raw: int(raw.strip())))
    out.append(Setting('cpu.cfs_quota_us', quota, 'cpu', _v1_quota))
    if os.path.exists(os.path.join(layout.v1.get('cpu', '/nonexistent'), 'cpu.cfs_burst_us')):
        out.append(Setting('cpu.cfs_burst_us', burst, 'cpu.burst', lambda raw: int(raw.strip())))
    out.append(Setting('cpu.shares', max(2, weight * 1024 // 100), 'cpu_weight', lambda raw: int(raw.strip())))
    default_cpus = ''
    if group is not None and 'cpuset' in layout.v1:
        default_cpus = _cgroup._read(os.path.join(os.path.dirname(group.dir_for('cpuset')), 'cpuset.cpus'), '')
    out.append(Setting('cpuset.cpus', section.get('cpuset', _cpus_norm(default_cpus or '')), 'cpuset', _cpus_norm))
    if 'blkio' in layout.v1:
        blkio = layout.v1['blkio']
        for name in ('blkio.bfq.weight', 'blkio.weight'):
            if os.path.exists(os.path.join(blkio, name)):
                # v1 weights are 1..1000 (BFQ) / 10..1000 (CFQ); the v2-style default 100 is the same.
                out.append(Setting(name, max(10, min(1000, io.get('weight', IO_WEIGHT_DEFAULT))), 'io.weight',
                                   _weight_norm))
                break
        for key, name in (('read_bps', 'blkio.throttle.read_bps_device'),
                          ('write_bps', 'blkio.throttle.write_bps_device'),
                          ('read_iops', 'blkio.throttle.read_iops_device'),
                          ('write_iops', 'blkio.throttle.write_iops_device')):
            wanted = {majmin: str(entry[key]) for majmin, entry in devices
                      if entry.get(key) not in (None, MAX)}
            out.append(Setting(name, wanted, 'io.devices', _keyed))
    return out


def check_supported(section, layout, host=None):
    """Options the host's kernel cannot enforce fail before anything is written."""
    section = section or {}
    if layout.version == 1:
        if (section.get('io') or {}).get('weight') is not None:
            blkio = layout.v1.get('blkio')
            if not blkio or not any(os.path.exists(os.path.join(blkio, n)) for n in ('blkio.bfq.weight',
                                                                                     'blkio.weight')):
                raise VServerError('io.weight: this cgroup v1 host has no proportional I/O weight (blkio.bfq.weight '
                                   'appears only with the BFQ I/O scheduler on the disk); use io.devices '
                                   'bandwidth limits, or switch the disk to bfq', 'io.weight')
        if section.get('swap') not in (None, MAX):
            memory = layout.v1.get('memory')
            if not memory or not os.path.exists(os.path.join(memory, 'memory.memsw.limit_in_bytes')):
                raise VServerError('swap: this host has no swap accounting (memory.memsw.*; boot with '
                                   'swapaccount=1)', 'swap')
        for ctrl, key in (('memory', 'memory'), ('pids', 'nproc'), ('cpu', 'cpu'), ('cpuset', 'cpuset')):
            if section.get(key) is not None and ctrl not in layout.v1:
                raise VServerError('%s: the cgroup v1 %s controller is not mounted on this host' % (key, ctrl), key)
    else:
        available = (_cgroup._read(os.path.join(layout.unified, 'cgroup.controllers'), '') or '').split()
        for ctrl, keys in (('memory', ('memory', 'memory_high', 'swap')), ('pids', ('nproc',)),
                           ('cpu', ('cpu', 'cpu_weight')), ('cpuset', ('cpuset',)), ('io', ('io',))):
            for key in keys:
                if section.get(key) is not None and ctrl not in available:
                    raise VServerError('%s: the cgroup v2 %s controller is not available on this host'
                                       % (key, ctrl), key)


def _render(setting, current_raw):
    """Lines to write so the file ends up at setting.value (keyed files: one line per device)."""
    if setting.key == 'io.max':
        current = _keyed(current_raw)
        lines = ['%s %s' % (dev, ' '.join('%s=%s' % kv for kv in sorted(vals.items())))
                 for dev, vals in sorted(setting.value.items()) if current.get(dev) != vals]
        lines += ['%s rbps=max wbps=max riops=max wiops=max' % dev for dev in sorted(current)
                  if dev not in setting.value]
        return lines
    if setting.key.startswith('blkio.throttle.'):
        current = _keyed(current_raw)
        lines = ['%s %s' % (dev, val) for dev, val in sorted(setting.value.items()) if current.get(dev) != val]
        lines += ['%s 0' % dev for dev in sorted(current) if dev not in setting.value]
        return lines
    value = setting.value
    if setting.key == 'io.weight':
        return ['default %d' % value]
    if value == MAX and setting.key in ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes',
                                        'memory.soft_limit_in_bytes', 'cpu.cfs_quota_us'):
        return ['-1']
    return [str(value)]


def _matches(setting, raw):
    if raw is None:
        return False
    try:
        current = setting.norm(raw)
    except (ValueError, IndexError):
        return False
    if setting.key == 'io.max':
        return current == setting.value
    if setting.key.startswith('blkio.throttle.'):
        return current == setting.value
    if setting.key == 'cpu.max':
        return current == setting.value
    if setting.key == 'cpuset.cpus':
        return current == _cpus_norm(str(setting.value))
    return current == setting.value


def diff_files(group, section, host=None):
    """[(setting, current_raw)] for every cgroup file whose kernel value differs from the section."""
    out = []
    for setting in settings(section, group.layout, group, host):
        try:
            raw = group.read(setting.key)
        except VServerError:
            raw = None
        if raw is None:
            if _is_default(setting):
                continue  # a kernel without that file: nothing to do for a default value
            _check_group_dir(group, setting)
            raise VServerError('%s: this host\'s cgroup has no %s file, so the limit cannot be enforced'
                               % (setting.field, setting.key), setting.field)
        if not _matches(setting, raw) and not _v2_cpuset_inherited(group, setting, raw):
            out.append((setting, raw))
    return out


def _check_group_dir(group, setting):
    """A file missing because the guest's own cgroup directory is gone (removed behind the module's back: the
    guest runs without that controller's limits) is said so, not blamed on the host."""
    try:
        directory = os.path.dirname(group.file(setting.key))
    except VServerError:
        return  # the controller is not mounted at all: the host's limit
    if not os.path.isdir(directory):
        what = 'cgroup' if group.layout.version == 2 else '%s cgroup' % setting.key.split('.')[0]
        raise VServerError('%s: the guest\'s %s %s is missing (removed while the guest runs), so the guest runs '
                           'without this limit; restart the guest (state: restarted, or stop then start) to recreate '
                           'its cgroups' % (setting.field, what, directory), setting.field)


def _v2_parent_cpus(group):
    return _cgroup._read(os.path.join(os.path.dirname(group.path), 'cpuset.cpus.effective'), '') or ''


def _v2_cpuset_inherited(group, setting, raw):
    """v2, no cpuset wanted: the parent's CPUs written explicitly count as no limit (some kernels refuse an
    empty cpuset.cpus on a populated cgroup, so that is what removing a cpuset writes there)."""
    if setting.key != 'cpuset.cpus' or setting.value or group.layout.version != 2 or not raw.strip():
        return False
    return _cpus_norm(raw) == _cpus_norm(_v2_parent_cpus(group))


KERNEL_DEFAULTS = {
    'memory.max': MAX, 'memory.high': MAX, 'memory.swap.max': MAX, 'pids.max': MAX,
    'cpu.max': 'max %d' % CPU_PERIOD_DEFAULT, 'cpu.max.burst': 0, 'cpu.weight': CPU_WEIGHT_DEFAULT,
    'cpuset.cpus': '', 'io.weight': IO_WEIGHT_DEFAULT, 'io.max': {},
    'memory.limit_in_bytes': MAX, 'memory.memsw.limit_in_bytes': MAX, 'memory.soft_limit_in_bytes': MAX,
    'cpu.cfs_period_us': CPU_PERIOD_DEFAULT, 'cpu.cfs_quota_us': MAX, 'cpu.cfs_burst_us': 0, 'cpu.shares': 1024,
    'blkio.bfq.weight': IO_WEIGHT_DEFAULT, 'blkio.weight': IO_WEIGHT_DEFAULT,
}


def _is_default(setting):
    """The value a fresh cgroup has anyway (so a kernel without that file needs nothing written)."""
    if setting.key.startswith('blkio.throttle.'):
        return setting.value == {}
    return setting.key in KERNEL_DEFAULTS and setting.value == KERNEL_DEFAULTS[setting.key]


def _write_setting(group, setting, raw):
    for line in _render(setting, raw):
        try:
            try:
                group.write(setting.key, line or '\n')   # an empty write() never reaches the kernel
            except OSError as exc:
                if not (setting.key == 'cpuset.cpus' and not line and exc.errno == errno.ENOSPC
                        and group.layout.version == 2):
                    raise
                group.write(setting.key, _v2_parent_cpus(group))  # see _v2_cpuset_inherited
        except OSError as exc:
            hint = ''
            if setting.key.startswith('memory') and exc.errno == errno.EBUSY:
                hint = ' (the guest uses more memory than that and the kernel could not reclaim it)'
            elif exc.errno == errno.EINVAL:
                hint = ' (the kernel refused the value)'
            raise VServerError('%s: writing %r to %s failed: %s%s'
                               % (setting.field, line, setting.key, exc.strerror, hint), setting.field)


def apply(group, section, host=None):
    """Bring the group's cgroup files to the section's values; returns the keys written.

    On failure the files already written get their previous values back, then the error is raised.
    """
    return [setting.key for setting, _raw in apply_undoable(group, section, host)]


def apply_undoable(group, section, host=None):
    """Like ``apply``, but returns [(setting, previous raw value)] so ``restore`` can undo the writes later."""
    pending = diff_files(group, section, host)
    done = []
    try:
        for setting, raw in _ordered(pending, group):
            _write_setting(group, setting, raw)
            done.append((setting, raw))
    except BaseException:
        restore(group, done)
        raise
    return done


def restore(group, done):
    """Write back the values ``apply_undoable`` replaced, last written first (that order keeps the kernel's
    invariants, see ``_ordered``). Returns the files that could not be restored."""
    failed = []
    for setting, raw in reversed(done):
        try:
            for line in _restore_lines(setting, raw):
                group.write(setting.key, line or '\n')
        except OSError:
            failed.append(setting.key)
    return failed


def _restore_lines(setting, raw):
    if setting.key == 'io.max' or setting.key.startswith('blkio.throttle.'):
        old = Setting(setting.key, _keyed(raw), setting.field, _keyed)
        # what was written: setting.value; to restore, render old against the new state
        return _render(old, _render_state(setting))
    if setting.key in ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.soft_limit_in_bytes'):
        return ['-1' if _v1_mem(raw) == MAX else raw.strip()]
    if setting.key == 'io.weight':
        return ['default %s' % _weight_norm(raw)]
    return [raw.strip()]


def _render_state(setting):
    if setting.key == 'io.max':
        return '\n'.join('%s %s' % (d, ' '.join('%s=%s' % kv for kv in sorted(v.items())))
                         for d, v in setting.value.items())
    return '\n'.join('%s %s' % kv for kv in setting.value.items())


def _ordered(pending, group):
    """Write order that keeps the kernel's invariants true after every single write:
    v1 memory.limit_in_bytes <= memory.memsw.limit_in_bytes, and a CFS burst <= its quota."""
    keys = [s.key for s, _raw in pending]
    first = set()
    if 'memory.memsw.limit_in_bytes' in keys and 'memory.limit_in_bytes' in keys:
        memsw = next(s for s, _raw in pending if s.key == 'memory.memsw.limit_in_bytes')
        current_memsw = _v1_mem(group.read('memory.memsw.limit_in_bytes') or '0')
        new = memsw.value
        grows = new == MAX or (current_memsw != MAX and new > current_memsw)
        first.add('memory.memsw.limit_in_bytes' if grows else 'memory.limit_in_bytes')
    for setting, raw in pending:
        if setting.key in ('cpu.max.burst', 'cpu.cfs_burst_us'):
            try:
                shrinks = setting.value < int(raw.strip())
            except (AttributeError, ValueError):
                shrinks = False
            if shrinks:
                first.add(setting.key)
    return sorted(pending, key=lambda item: 0 if item[0].key in first else 1)


def current(group):
    """The kernel's view of the guest's limits (for reports): {file: raw value}."""
    out = {}
    for setting in settings({}, group.layout, group):
        try:
            raw = group.read(setting.key)
        except VServerError:
            raw = None
        if raw is not None:
            out[setting.key] = raw
    return out


# --- devices ---------------------------------------------------------------------------------------------

def device_rules():
    return ['%s %d:%s rwm' % (kind, major, '*' if minor is None else minor) for kind, major, minor in DEVICES]


def apply_devices(group):
    """Allow only the guest's minimal /dev (v1 devices controller, v2 an eBPF device program)."""
    layout = group.layout
    if layout.version == 1 and 'devices' in layout.v1:
        group.write('devices.deny', 'a')
        for rule in device_rules():
            group.write('devices.allow', rule)
        return 'v1'
    if layout.version == 2:
        bpf_attach_devices(group.path, DEVICES)
        return 'bpf'
    return None


# --- rlimits ---------------------------------------------------------------------------------------------

def rlimit_pairs(section):
    return [(RLIMITS[name], name, _rl_int(spec['soft']), _rl_int(spec['hard']))
            for name, spec in sorted(((section or {}).get('rlimits') or {}).items())]


def _explain_rlimit(name, hard, exc):
    if exc.errno == errno.EPERM:
        return ('rlimits.%s: raising the hard limit to %s needs CAP_SYS_RESOURCE, which this host\'s root lacks; '
                'use at most the host\'s own hard limit'
                % (name, 'unlimited' if hard == resource.RLIM_INFINITY else hard))
    return 'rlimits.%s: %s' % (name, exc)


def set_rlimits(section, pid=0):
    """setrlimit/prlimit the section's rlimits on one process (0 = self)."""
    for res, name, soft, hard in rlimit_pairs(section):
        try:
            if pid:
                resource.prlimit(pid, res, (soft, hard))
            else:
                resource.setrlimit(res, (soft, hard))
        except OSError as exc:
            raise VServerError(_explain_rlimit(name, hard, exc), 'rlimits.' + name)
        except ValueError as exc:
            raise VServerError('rlimits.%s: %s' % (name, exc), 'rlimits.' + name)


def rlimits_differ(section, pids):
    """pids whose rlimits differ from the section (only the rlimits named in it are compared)."""
    pairs = rlimit_pairs(section)
    out = []
    for pid in pids:
        try:
            if any(resource.prlimit(pid, res) != (soft, hard) for res, _name, soft, hard in pairs):
                out.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def rlimits_snapshot(section, pids):
    """{pid: [(resource, (soft, hard))]}: the current values of the rlimits the section names, for every
    process whose rlimits differ from it (what ``rlimits_restore`` puts back)."""
    out = {}
    for pid in rlimits_differ(section, pids):
        try:
            out[pid] = [(res, resource.prlimit(pid, res)) for res, _name, _soft, _hard in rlimit_pairs(section)]
        except (ProcessLookupError, PermissionError):
            continue
    return out


def rlimits_restore(snapshot):
    """Put back the rlimits of a snapshot; returns the pids that could not get them back (raising a hard limit
    again needs CAP_SYS_RESOURCE). Processes that exited meanwhile are skipped."""
    failed = []
    for pid, pairs in sorted(snapshot.items()):
        try:
            for res, limits in pairs:
                resource.prlimit(pid, res, limits)
        except ProcessLookupError:
            continue
        except (OSError, ValueError):
            failed.append(pid)
    return failed


def apply_rlimits_live(section, pids):
    changed = []
    for pid in rlimits_differ(section, pids):
        try:
            set_rlimits(section, pid)
        except VServerError:
            if os.path.exists('/proc/%d' % pid):
                raise
            continue
        changed.append(pid)
    return changed


# --- devices on cgroup v2: an eBPF device program (BPF_PROG_TYPE_CGROUP_DEVICE) -------------------------
#
# cgroup v2 has no devices.allow file; the kernel asks a BPF program attached to the cgroup instead (runc,
# systemd and LXC do the same). The program is a dozen instructions assembled here and loaded with bpf(2)
# through ctypes: no compiler, no libbpf. Once attached, the cgroup holds the only reference to it, so it
# lives exactly as long as the guest's cgroup.

_SYS_BPF = {'x86_64': 321, 'aarch64': 280, 'riscv64': 280, 'ppc64le': 361, 'ppc64': 361, 's390x': 351,
            'i686': 357, 'i386': 357, 'armv7l': 386}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack('<BBhi', code, (src << 4) | dst, off, imm)


def bpf_device_program(rules):
    """Assemble an allow-list program: return 1 (allow) for a matching (type, major, minor|None), else 0."""
    ldx_w, and_k, jne_k, mov_k, exit_ = 0x61, 0x57, 0x55, 0xb7, 0x95
    code = [
        _insn(ldx_w, dst=2, src=1, off=0),      # r2 = ctx->access_type
        _insn(and_k, dst=2, imm=0xffff),        # r2 &= 0xffff   (device type; access bits are the upper half)
        _insn(ldx_w, dst=4, src=1, off=4),      # r4 = ctx->major
        _insn(ldx_w, dst=5, src=1, off=8),      # r5 = ctx->minor
    ]
    for kind, major, minor in rules:
        dev_type = BPF_DEVCG_DEV_CHAR if kind == 'c' else BPF_DEVCG_DEV_BLOCK
        size = 5 if minor is not None else 4
        code.append(_insn(jne_k, dst=2, off=size - 1, imm=dev_type))
        code.append(_insn(jne_k, dst=4, off=size - 2, imm=major))
        if minor is not None:
            code.append(_insn(jne_k, dst=5, off=size - 3, imm=minor))
        code.append(_insn(mov_k, dst=0, imm=1))
        code.append(_insn(exit_))
    code.append(_insn(mov_k, dst=0, imm=0))
    code.append(_insn(exit_))
    return b''.join(code)


def _bpf(cmd, attr):
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, 'bpf: unsupported architecture %s' % platform.machine())
    buf = ctypes.create_string_buffer(attr, len(attr))
    libc = K.libc()
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, 'bpf(%d): %s' % (cmd, os.strerror(err)))
    return result, buf.raw


def bpf_attach_devices(cgroup_dir, rules=DEVICES):
    """Load the allow-list program and attach it to a cgroup v2 directory (replacing an earlier one)."""
    program = bpf_device_program(rules)
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b'GPL')
    log = ctypes.create_string_buffer(65536)

    def load(level):
        attr = struct.pack('<IIQQIIQII16sII', BPF_PROG_TYPE_CGROUP_DEVICE, len(program) // 8,
                           ctypes.addressof(insns), ctypes.addressof(license_), level, len(log) if level else 0,
                           ctypes.addressof(log) if level else 0, 0, 0, b'vserver_dev', 0, BPF_CGROUP_DEVICE)
        return _bpf(BPF_PROG_LOAD, attr + b'\0' * (128 - len(attr)))[0]

    try:
        prog_fd = load(0)
    except OSError as exc:
        try:
            load(1)
        except OSError:
            pass
        raise VServerError('devices: the kernel refused the cgroup device program: %s %s'
                           % (exc, log.value.decode(errors='replace').strip()[-2000:]))
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(BPF_PROG_ATTACH, struct.pack('<IIIII', cg_fd, prog_fd, BPF_CGROUP_DEVICE, 0, 0) + b'\0' * 12)
        finally:
            os.close(cg_fd)
    finally:
        os.close(prog_fd)


def bpf_device_programs(cgroup_dir):
    """How many device programs are attached to a cgroup v2 directory (BPF_PROG_QUERY)."""
    cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ids = ctypes.create_string_buffer(64 * 4)
        attr = struct.pack('<IIIIQI', cg_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64)
        raw = _bpf(BPF_PROG_QUERY, attr + b'\0' * (64 - len(attr)))
        return struct.unpack_from('<I', raw[1], 24)[0]
    finally:
        os.close(cg_fd)


# --- disk: a per-guest loop image, or a btrfs qgroup -------------------------------------------------------

DISK_BACKENDS = ('auto', 'loop', 'btrfs')
DISK_FSTYPES = ('ext4', 'xfs')
DISK_MIN = {'ext4': 8 << 20, 'xfs': 300 << 20, 'btrfs': 1 << 20}   # mkfs.xfs refuses filesystems below 300M


def disk_validate(raw, backend=None, fstype=None, field='disk'):
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


def disk_image(root):
    return os.path.normpath(os.path.abspath(root)) + '.disk.img'


def _fstype(path, mountinfo='/proc/self/mountinfo'):
    """Filesystem type of the mount holding ``path`` (like ``findmnt --target``, without a subprocess)."""
    real = os.path.realpath(path)
    best, kind = -1, None
    for entry in K.read_mountinfo(mountinfo):  # later entries stack over earlier ones on the same point
        point = entry['mountpoint']
        if (real == point or real.startswith(point.rstrip('/') + '/')) and len(point) >= best:
            best, kind = len(point), entry['fstype']
    return kind


def _is_mountpoint(path, mountinfo='/proc/self/mountinfo'):
    real = os.path.realpath(path)
    return any(m['mountpoint'] == real for m in K.read_mountinfo(mountinfo))


def disk_resolve(root, disk):
    """'auto' -> 'btrfs' when the tree's filesystem is btrfs, else 'loop' (canonical section value)."""
    if not disk:
        return disk
    disk = dict(disk)
    if disk['backend'] == 'auto':
        parent = os.path.dirname(os.path.normpath(os.path.abspath(root)))
        disk['backend'] = 'btrfs' if _fstype(parent) == 'btrfs' else 'loop'
    if disk['backend'] == 'btrfs':
        disk.pop('fstype', None)
        if disk['size'] < DISK_MIN['btrfs']:
            raise VServerError('disk: too small', 'disk')
    elif disk['size'] < DISK_MIN[disk['fstype']]:
        raise VServerError('disk: %d bytes is too small for %s (at least %dM)'
                           % (disk['size'], disk['fstype'], DISK_MIN[disk['fstype']] >> 20), 'disk')
    return disk


def _btrfs_subvolume(path):
    try:
        return _fstype(path) == 'btrfs' and os.stat(path).st_ino == 256
    except OSError:
        return False


def _btrfs_limit(path):
    """The referenced-bytes limit of the subvolume's qgroup: int, 'none', or None (no quota/subvolume)."""
    if not _btrfs_subvolume(path):
        return None
    proc = K.run(['btrfs', 'qgroup', 'show', '-rf', '--raw', path], check=False)
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and re.match(r'^0/\d+$', parts[0]):
            return parts[3] if parts[3] == 'none' else int(parts[3])
    return None


def disk_state(root):
    image = disk_image(root)
    if os.path.exists(image):
        kind = K.run(['blkid', '-o', 'value', '-s', 'TYPE', image], check=False).stdout.strip() or None
        return {'backend': 'loop', 'size': os.stat(image).st_size, 'fstype': kind, 'mounted': _is_mountpoint(root)}
    limit = _btrfs_limit(root)
    if limit not in (None, 'none'):
        return {'backend': 'btrfs', 'size': limit}
    return {'backend': None, 'subvolume': _btrfs_subvolume(root) if os.path.isdir(root) else False}


def disk_plan(root, before, after, running):
    """What it takes to go from the disk the kernel shows to ``after``: actions, steps, needs_stop."""
    cur = disk_state(root)
    steps, actions = [], []
    if not after:
        if cur['backend'] == 'loop':
            steps, actions = ['loop_remove'], ['move the tree out of its disk image %s and delete it'
                                               % disk_image(root)]
        elif cur['backend'] == 'btrfs':
            steps, actions = ['btrfs_unlimit'], ['remove the btrfs qgroup limit']
    elif after['backend'] == 'loop':
        if cur['backend'] == 'btrfs':
            raise VServerError('disk_backend: the tree has a btrfs qgroup limit; remove the disk limit first, then '
                               'set a loop image', 'disk_backend')
        if cur['backend'] is None:
            steps = ['loop_create']
            actions = ['create a %dM %s image %s and move the tree into it'
                       % (after['size'] >> 20, after['fstype'], disk_image(root))]
        else:
            if cur['fstype'] and cur['fstype'] != after['fstype']:
                raise VServerError('disk_fstype: the guest\'s image holds %s; to change it remove the disk limit '
                                   '(moves the tree out), then set it again' % cur['fstype'], 'disk_fstype')
            if after['size'] < cur['size']:
                raise VServerError('disk: shrinking the %dM image to %dM is not supported (xfs cannot shrink; ext4 '
                                   'only offline); remove the disk limit and set it again'
                                   % (cur['size'] >> 20, after['size'] >> 20), 'disk')
            if after['size'] > cur['size']:
                if (cur['fstype'] or after['fstype']) == 'ext4' and not Host().has_cap(CAP_SYS_RESOURCE):
                    # online ext4 growth (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE: resize offline instead
                    steps = ['loop_grow_offline']
                else:
                    steps = ['loop_grow']
                actions = ['grow the disk image to %dM' % (after['size'] >> 20)]
    else:
        if cur['backend'] == 'loop':
            raise VServerError('disk_backend: the tree is on a loop image; remove the disk limit first', 'disk_backend')
        if _fstype(os.path.dirname(os.path.normpath(os.path.abspath(root)))) != 'btrfs':
            raise VServerError('disk_backend: btrfs needs the guest tree on a btrfs filesystem', 'disk_backend')
        if not _btrfs_subvolume(root):
            steps.append('btrfs_subvolume')
            actions.append('turn the tree into a btrfs subvolume')
        if cur.get('size') != after['size']:
            steps.append('btrfs_limit')
            actions.append('set the btrfs qgroup limit to %dM' % (after['size'] >> 20))
    needs_stop = running and any(s in ('loop_create', 'loop_remove', 'loop_grow_offline', 'btrfs_subvolume')
                                 for s in steps)
    return {'steps': steps, 'actions': actions, 'needs_stop': needs_stop}


def _copy_tree(src, dst, reflink=False):
    argv = ['cp', '-a', '--reflink=always' if reflink else '--reflink=auto', src.rstrip('/') + '/.', dst]
    K.run(argv, timeout=3600)


def _mount_image(image, target):
    K.run(['mount', '-o', 'loop,nodev', image, target])


def disk_ensure_mounted(root, disk):
    if disk.get('backend') != 'loop':
        return False
    image = disk_image(root)
    if not os.path.exists(image):
        raise VServerError('disk: the guest\'s disk image %s is missing' % image, 'disk')
    if _is_mountpoint(root):
        return False
    _mount_image(image, root)
    return True


def _loop_create(root, disk):
    root = os.path.normpath(os.path.abspath(root))
    image = disk_image(root)
    staging = root + '.disk.new'
    old = root + '.disk.old'
    st = os.stat(root)
    created = []
    try:
        with open(image, 'wb') as handle:
            created.append(('file', image))
            os.fchmod(handle.fileno(), 0o600)
            handle.truncate(disk['size'])
        if disk['fstype'] == 'xfs':
            K.run(['mkfs.xfs', '-q', '-f', image], timeout=600)
        else:
            K.run(['mkfs.ext4', '-q', '-F', '-E', 'nodiscard', image], timeout=600)
        os.mkdir(staging, 0o700)
        created.append(('dir', staging))
        _mount_image(image, staging)
        created.append(('mount', staging))
        _copy_tree(root, staging)
        os.chown(staging, st.st_uid, st.st_gid)
        os.chmod(staging, stat.S_IMODE(st.st_mode))
        K.umount(staging)
        created.pop()
        os.rename(root, old)
        created.append(('renamed', old))
        os.mkdir(root, stat.S_IMODE(st.st_mode))
        created.append(('dir', root))
        _mount_image(image, root)
    except BaseException:
        for kind, path in reversed(created):
            try:
                if kind == 'mount':
                    K.umount(path, K.MNT_DETACH)
                elif kind == 'dir':
                    os.rmdir(path)
                elif kind == 'file':
                    os.unlink(path)
                elif kind == 'renamed':
                    os.rename(path, root)
            except OSError:
                pass
        raise
    os.rmdir(staging)
    shutil.rmtree(old)


def _loop_remove(root):
    root = os.path.normpath(os.path.abspath(root))
    image = disk_image(root)
    out = root + '.disk.out'
    disk_ensure_mounted(root, {'backend': 'loop'})
    st = os.stat(root)
    os.mkdir(out, 0o700)
    try:
        _copy_tree(root, out)
        os.chown(out, st.st_uid, st.st_gid)
        os.chmod(out, stat.S_IMODE(st.st_mode))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    K.umount(root)
    os.rmdir(root)
    os.rename(out, root)
    os.unlink(image)


def _loop_grow(root, disk):
    image = disk_image(root)
    disk_ensure_mounted(root, disk)
    os.truncate(image, disk['size'])
    proc = K.run(['losetup', '-j', image, '-O', 'NAME', '-n'])
    devices = proc.stdout.split()
    if not devices:
        raise VServerError('disk: no loop device holds %s' % image, 'disk')
    K.run(['losetup', '-c', devices[0]])
    fstype = disk_state(root).get('fstype') or disk.get('fstype')
    if fstype == 'xfs':
        K.run(['xfs_growfs', os.path.realpath(root)], timeout=600)
    else:
        K.run(['resize2fs', devices[0]], timeout=600)


def _loop_grow_offline(root, disk):
    """ext4 without CAP_SYS_RESOURCE: unmount, check, resize the image file's filesystem, mount again."""
    image = disk_image(root)
    if _is_mountpoint(root):
        K.umount(root)
    os.truncate(image, disk['size'])
    fsck = K.run(['e2fsck', '-f', '-p', image], check=False, timeout=600)
    if fsck.returncode not in (0, 1):
        raise VServerError('disk: e2fsck of %s failed before the resize: %s' % (image, fsck.stdout + fsck.stderr),
                           'disk')
    K.run(['resize2fs', image], timeout=600)
    _mount_image(image, root)


def _btrfs_subvolume_convert(root):
    root = os.path.normpath(os.path.abspath(root))
    new = root + '.disk.new'
    old = root + '.disk.old'
    st = os.stat(root)
    K.run(['btrfs', 'subvolume', 'create', new])
    try:
        _copy_tree(root, new, reflink=True)
        os.chown(new, st.st_uid, st.st_gid)
        os.chmod(new, stat.S_IMODE(st.st_mode))
        os.rename(root, old)
    except BaseException:
        K.run(['btrfs', 'subvolume', 'delete', new], check=False)
        raise
    os.rename(new, root)
    shutil.rmtree(old)


def disk_execute(root, before, after, plan):
    for step in plan['steps']:
        if step == 'loop_create':
            _loop_create(root, after)
        elif step == 'loop_remove':
            _loop_remove(root)
        elif step == 'loop_grow':
            _loop_grow(root, after)
        elif step == 'loop_grow_offline':
            _loop_grow_offline(root, after)
        elif step == 'btrfs_subvolume':
            _btrfs_subvolume_convert(root)
        elif step == 'btrfs_limit':
            K.run(['btrfs', 'quota', 'enable', root])
            K.run(['btrfs', 'qgroup', 'limit', str(after['size']), root])
        elif step == 'btrfs_unlimit':
            K.run(['btrfs', 'qgroup', 'limit', 'none', root])


def disk_release(root):
    """Unmount a guest's loop image (before deleting the guest's tree); returns True if it was mounted."""
    if os.path.exists(disk_image(root)) and _is_mountpoint(root):
        K.umount(root)
        return True
    return False


def disk_usage(root):
    st = os.statvfs(root)
    return {'size': st.f_blocks * st.f_frsize, 'free': st.f_bavail * st.f_frsize}


# --- hooks (registered in _runtime) --------------------------------------------------------------------

def cgroup_hook(doc, group):
    """At guest start, before any process joins the new cgroup: pending disk changes (the guest is stopped
    now), the disk image mounted on the root, the devices policy and every cgroup limit."""
    section = doc.get('limits') or {}
    disk = section.get('disk')
    if disk or os.path.exists(disk_image(doc['root'])):
        plan = disk_plan(doc['root'], None, disk, running=False)
        disk_execute(doc['root'], None, disk, plan)
        if disk:
            disk_ensure_mounted(doc['root'], disk)
    apply_devices(group)
    apply(group, section)


def absent_hook(paths, doc):
    """When a guest is removed: its tree leaves the loop image (a plain directory again, kept or purged by
    the caller) and the image is deleted, so nothing stays mounted or orphaned."""
    if doc and doc.get('root') and os.path.exists(disk_image(doc['root'])):
        _loop_remove(doc['root'])


def child_hook(doc):
    """In the guest init before caps are dropped: rlimits (inherited by everything the guest runs)."""
    set_rlimits(doc.get('limits') or {})


# --- the manager -----------------------------------------------------------------------------------------

def _undo_live(paths, doc, rt, live, disk, exc):
    """The config could not be saved: give the running guest its previous cgroup values and rlimits back, so the
    kernel and the config still agree. Raises VServerError saying what was undone and what could not be (an
    interrupt is re-raised as it is, after the undo)."""
    from ansible_collections.vserver.core.plugins.module_utils import _runtime
    written, snapshot = live
    disk_actions, restarted = disk
    failed = ['rlimits of pid %d' % pid for pid in rlimits_restore(snapshot)]
    if not restarted:
        failed = restore(rt.group, written) + failed
    if not isinstance(exc, Exception):
        raise exc
    msg = 'limits: saving the config of guest %s failed (%s); ' % (doc['name'], exc)
    if failed:
        msg += ('the live change could not be undone for %s: the guest runs with values its config does not '
                'record until this task runs again (it compares with the kernel) or the guest restarts'
                % ', '.join(failed))
    elif written or snapshot:
        msg += 'the live change was undone: the guest keeps its previous limits'
    else:
        msg += 'nothing was changed on the guest'
    if disk_actions:
        msg += '; the disk change was made and stays (%s): run the task again once the config can be written' \
            % '; '.join(disk_actions)
        if restarted:
            try:
                _runtime.start(paths, doc, rt.layout)
                msg += ' (the guest was started again)'
            except Exception as start_exc:  # report both failures
                msg += ' (starting the guest again failed too: %s)' % start_exc
    raise VServerError(msg) from exc


def ensure(paths, name, params, check_mode=False, restart=False, host=None, layout=None, replace=False):
    """Set the options ``params`` gives on guest ``name``'s limits section; live on a running guest.

    An option that is None keeps its stored value (``merge``); with ``replace`` (the guests module, which
    holds a guest's whole desired state) ``params`` is the whole section and an option left out is lifted.

    Returns a result dict: changed, diff (before/after section), actions, restart_required, restarted,
    live (cgroup files written / would be written), rlimit_pids.
    """
    from ansible_collections.vserver.core.plugins.module_utils import _common, _config, _runtime
    layout = layout or _cgroup.host_layout()
    host = host or Host(layout=layout)
    with _common.HostLock(paths):
        doc = _config.load(paths, name)
        if doc is None:
            raise VServerError('guest %s has no config in %s; create it with vserver.core.context first'
                               % (name, paths.config_dir), 'name')
        after = validate(params if replace else merge(doc.get('limits'), params), host, layout)
        if after.get('disk'):
            after['disk'] = disk_resolve(doc['root'], after['disk'])
        check_supported(after, layout, host)
        before = copy.deepcopy(doc.get('limits') or {})
        rt = _runtime.Runtime(paths, name, layout)
        running = rt.init_pid() is not None
        actions = []
        live = []
        rlimit_pids = []
        restart_required = False
        restarted = False
        dplan = disk_plan(doc['root'], before.get('disk'), after.get('disk'), running)
        if dplan['needs_stop'] and not restart:
            restart_required = True
        if running:
            group = rt.group
            pending = diff_files(group, after, host)
            live = [s.key for s, _raw in pending]
            pids = group.procs()
            rlimit_pids = rlimits_differ(after, pids)
            if pending:
                actions.append('write %s' % ', '.join(live))
            if rlimit_pids:
                actions.append('prlimit %d processes' % len(rlimit_pids))
        if dplan['actions']:
            actions.extend(dplan['actions'])
        config_changed = before != after
        disk_now = bool(dplan['actions']) and not (dplan['needs_stop'] and not restart)
        if dplan['needs_stop'] and not restart:
            actions = [a for a in actions if a not in dplan['actions']] + [
                'at the next start: %s' % a for a in dplan['actions']]
        if config_changed:
            actions.insert(0, 'update config')
        changed = config_changed or bool(live) or bool(rlimit_pids) or disk_now
        if changed and not check_mode:
            # Kernel first, then the config; a config that cannot be saved undoes the live change (see
            # docs/limits.md, "Live changes and the config"). A run killed between the two leaves the kernel
            # ahead of the config: the next run compares with the kernel and only saves the config.
            written, snapshot = [], {}
            if running:
                written = apply_undoable(rt.group, after, host)
                try:
                    snapshot = rlimits_snapshot(after, rt.group.procs())
                    apply_rlimits_live(after, list(snapshot))
                except BaseException:
                    rlimits_restore(snapshot)
                    restore(rt.group, written)
                    raise
                live = [setting.key for setting, _raw in written]
            if disk_now:
                if dplan['needs_stop'] and running:
                    _runtime.stop(paths, doc)
                    restarted = True
                try:
                    disk_execute(doc['root'], before.get('disk'), after.get('disk'), dplan)
                except BaseException:
                    if restarted:  # bring the guest back as it was
                        _runtime.start(paths, doc, layout)
                    else:
                        rlimits_restore(snapshot)
                        restore(rt.group, written)
                    raise
            new = dict(doc, limits=after)
            try:
                _config.save(paths, new)
            except BaseException as exc:
                _undo_live(paths, new, rt, (written, snapshot), (dplan['actions'] if disk_now else [], restarted),
                           exc)
                raise
            if restarted:
                _runtime.start(paths, new, layout)
        return {
            'changed': changed, 'diff': {'before': before, 'after': after}, 'actions': actions,
            'restart_required': restart_required and not restarted, 'restarted': restarted,
            'running': running, 'live': live, 'rlimit_pids': len(rlimit_pids), 'limits': after,
            'backend': 'cgroup v%d' % layout.version,
        }
