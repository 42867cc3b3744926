# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the limits concern's planner (floor 3): section -> cgroup files.

``settings(section, layout, group, host)`` maps a canonical section to the cgroup files of the host's backend (v1
or v2) as typed ``Setting`` records, every managed file listed (an option left out gets the kernel default, so
applying a section also lifts removed limits). ``diff_files(group, section, host)`` compares them with what the
kernel reads back and returns the ``PendingWrite`` records still to do; _limits_apply writes them.
"""

from __future__ import annotations

import os
import resource
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from ansible_collections.vserver.core.plugins.module_utils import _cgroup
from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
from ansible_collections.vserver.core.plugins.module_utils._limits_parse import (
    CPU_PERIOD_DEFAULT, CPU_WEIGHT_DEFAULT, IO_WEIGHT_DEFAULT, MAX, PAGE, RLIMITS, V1_UNLIMITED, Host,
    format_cpulist, parse_cpulist)


def _strip(raw):
    return raw.strip()


class Setting(NamedTuple):
    """One cgroup file: the value to write (canonical, compared after ``norm``) and the option it comes from (for
    error messages). ``norm`` turns what the kernel reads back into the same canonical form."""
    key: str
    value: Any
    field: str
    norm: Optional[Callable[[str], Any]] = None

    def normalize(self, raw: str) -> Any:
        return (self.norm or _strip)(raw)

    def __repr__(self):
        return 'Setting(%s=%r)' % (self.key, self.value)


class PendingWrite(NamedTuple):
    """A file whose kernel value differs from the setting: the setting and the raw value read (what an undo
    writes back)."""
    setting: Setting
    current: str


def _v1_mem(raw):
    value = int(raw.strip())
    return MAX if value >= V1_UNLIMITED else value


def _v2_max(raw):
    text = raw.strip()
    return MAX if text == 'max' else int(text)


def _v1_quota(raw):
    value = int(raw.strip())
    return MAX if value < 0 else value


def _int(raw):
    return int(raw.strip())


def _words(raw):
    return ' '.join(raw.split())


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


class _Wanted(NamedTuple):
    """The section's values with every default filled in, shared by both backends."""
    memory: Any
    high: Any
    swap: Any
    nproc: Any
    quota: Any
    period: int
    burst: int
    weight: int
    io_weight: int
    devices: list


def _wanted(section, host):
    cpu = section.get('cpu') or {}
    io = section.get('io') or {}
    return _Wanted(_page(section.get('memory', MAX)), _page(section.get('memory_high', MAX)),
                   section.get('swap', MAX), section.get('nproc', MAX), cpu.get('quota', MAX),
                   cpu.get('period', CPU_PERIOD_DEFAULT), cpu.get('burst', 0),
                   section.get('cpu_weight', CPU_WEIGHT_DEFAULT), io.get('weight', IO_WEIGHT_DEFAULT),
                   _resolve_devices(io, host))


def settings(section: Optional[dict], layout, group=None, host: Optional[Host] = None) -> List[Setting]:
    """The cgroup files (in write order) a limits section maps to on this host's backend.

    Every managed file is listed, options absent from the section with their default, so that applying
    a section to a running guest also lifts limits that were removed.
    """
    host = host or Host(layout=layout)
    section = section or {}
    wanted = _wanted(section, host)
    if layout.version == 2:
        return _v2_settings(section, wanted)
    return _v1_settings(section, wanted, layout, group)


def _v2_settings(section, w):
    io_max = {majmin: {'rbps': str(entry.get('read_bps', MAX)), 'wbps': str(entry.get('write_bps', MAX)),
                       'riops': str(entry.get('read_iops', MAX)), 'wiops': str(entry.get('write_iops', MAX))}
              for majmin, entry in w.devices}
    return [
        Setting('memory.max', w.memory, 'memory', _v2_max),
        Setting('memory.high', w.high, 'memory_high', _v2_max),
        Setting('memory.swap.max', _page(w.swap), 'swap', _v2_max),
        Setting('pids.max', w.nproc, 'nproc', _v2_max),
        Setting('cpu.max', '%s %d' % (w.quota, w.period), 'cpu', _words),
        Setting('cpu.max.burst', w.burst, 'cpu.burst', _int),
        Setting('cpu.weight', w.weight, 'cpu_weight', _int),
        Setting('cpuset.cpus', section.get('cpuset', ''), 'cpuset', _cpus_norm),
        Setting('io.weight', w.io_weight, 'io.weight', _weight_norm),
        Setting('io.max', io_max, 'io.devices', _keyed),
    ]


V1_THROTTLE = (('read_bps', 'blkio.throttle.read_bps_device'), ('write_bps', 'blkio.throttle.write_bps_device'),
               ('read_iops', 'blkio.throttle.read_iops_device'), ('write_iops', 'blkio.throttle.write_iops_device'))


def _v1_settings(section, w, layout, group):
    memsw = MAX if w.swap == MAX or w.memory == MAX else _page(w.memory + w.swap)
    out = [Setting('memory.limit_in_bytes', w.memory, 'memory', _v1_mem)]
    if os.path.exists(os.path.join(layout.v1.get('memory', '/nonexistent'), 'memory.memsw.limit_in_bytes')):
        out.append(Setting('memory.memsw.limit_in_bytes', memsw, 'swap', _v1_mem))
    # v1 has no throttling limit: memory_high maps to the soft limit (reclaimed first under host pressure).
    out.append(Setting('memory.soft_limit_in_bytes', w.high, 'memory_high', _v1_mem))
    out.append(Setting('pids.max', w.nproc, 'nproc', _v2_max))
    out.append(Setting('cpu.cfs_period_us', w.period, 'cpu.period', _int))
    out.append(Setting('cpu.cfs_quota_us', w.quota, 'cpu', _v1_quota))
    if os.path.exists(os.path.join(layout.v1.get('cpu', '/nonexistent'), 'cpu.cfs_burst_us')):
        out.append(Setting('cpu.cfs_burst_us', w.burst, 'cpu.burst', _int))
    out.append(Setting('cpu.shares', max(2, w.weight * 1024 // 100), 'cpu_weight', _int))
    default_cpus = ''
    if group is not None and 'cpuset' in layout.v1:
        default_cpus = _cgroup._read(os.path.join(os.path.dirname(group.dir_for('cpuset')), 'cpuset.cpus'), '')
    out.append(Setting('cpuset.cpus', section.get('cpuset', _cpus_norm(default_cpus or '')), 'cpuset', _cpus_norm))
    if 'blkio' in layout.v1:
        out.extend(_v1_blkio(layout.v1['blkio'], w))
    return out


def _v1_blkio(blkio, w):
    out = []
    for name in ('blkio.bfq.weight', 'blkio.weight'):
        if os.path.exists(os.path.join(blkio, name)):
            # v1 weights are 1..1000 (BFQ) / 10..1000 (CFQ); the v2-style default 100 is the same.
            out.append(Setting(name, max(10, min(1000, w.io_weight)), 'io.weight', _weight_norm))
            break
    for key, name in V1_THROTTLE:
        wanted = {majmin: str(entry[key]) for majmin, entry in w.devices if entry.get(key) not in (None, MAX)}
        out.append(Setting(name, wanted, 'io.devices', _keyed))
    return out


V2_CONTROLLERS = (('memory', ('memory', 'memory_high', 'swap')), ('pids', ('nproc',)), ('cpu', ('cpu', 'cpu_weight')),
                  ('cpuset', ('cpuset',)), ('io', ('io',)))


def check_supported(section: Optional[dict], layout) -> None:
    """Options the host's kernel cannot enforce fail before anything is written."""
    section = section or {}
    if layout.version == 1:
        _check_v1(section, layout)
        return
    available = (_cgroup._read(os.path.join(layout.unified, 'cgroup.controllers'), '') or '').split()
    for ctrl, keys in V2_CONTROLLERS:
        for key in keys:
            if section.get(key) is not None and ctrl not in available:
                raise VServerError('%s: the cgroup v2 %s controller is not available on this host'
                                   % (key, ctrl), key)


def _check_v1(section, layout):
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


# --- comparing with the kernel ---------------------------------------------------------------------------------

def _matches(setting, raw):
    if raw is None:
        return False
    try:
        current = setting.normalize(raw)
    except (ValueError, IndexError):
        return False
    if setting.key == 'cpuset.cpus':
        return current == _cpus_norm(str(setting.value))
    return current == setting.value


def _read_setting(group, setting):
    try:
        return group.read(setting.key)
    except VServerError:
        return None


def diff_files(group, section: Optional[dict], host: Optional[Host] = None) -> List[PendingWrite]:
    """The cgroup files whose kernel value differs from the section, with the value read."""
    out = []
    for setting in settings(section, group.layout, group, host):
        raw = _read_setting(group, setting)
        if raw is None:
            if _is_default(setting):
                continue  # a kernel without that file: nothing to do for a default value
            _check_group_dir(group, setting)
            raise VServerError('%s: this host\'s cgroup has no %s file, so the limit cannot be enforced'
                               % (setting.field, setting.key), setting.field)
        if not _matches(setting, raw) and not _v2_cpuset_inherited(group, setting, raw):
            out.append(PendingWrite(setting, raw))
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


def current(group) -> Dict[str, str]:
    """The kernel's view of the guest's limits (for reports): {file: raw value}."""
    out = {}
    for setting in settings({}, group.layout, group):
        raw = _read_setting(group, setting)
        if raw is not None:
            out[setting.key] = raw
    return out


# --- rlimits --------------------------------------------------------------------------------------------------

def _rl_int(value):
    return resource.RLIM_INFINITY if value == 'unlimited' else value


def rlimit_pairs(section: Optional[dict]) -> list:
    """[(resource id, name, soft, hard)] of the section's rlimits, by name."""
    return [(RLIMITS[name], name, _rl_int(spec['soft']), _rl_int(spec['hard']))
            for name, spec in sorted(((section or {}).get('rlimits') or {}).items())]


def rlimits_differ(section: Optional[dict], pids: List[int]) -> List[int]:
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
