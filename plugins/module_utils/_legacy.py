# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: util-vserver's per-guest configuration read and mapped (floor 3, a concern).

util-vserver keeps one directory per guest, ``/etc/vservers/NAME/`` (its documentation: doc/configuration.xml of
util-vserver, "the flower page"): ``context`` (the xid; missing: a dynamic context), ``uts/nodename``,
``interfaces/N/{ip,prefix,mask,dev,name,nodev,vlandev,disabled}``, ``bcapabilities``, ``ccapabilities``,
``flags``/``cflags``, ``rlimits/RES[.soft|.hard|.min]``, ``sched/*``, ``cpuset/*``, ``cgroup/*``, ``dlimits/N/*``,
``apps/init/{style,mark,cmd.start,depends}``, ``apps/vunify/exclude``, ``personality`` and the ``vdir`` link to the
tree. ``read_guest`` reads one such directory into a guest entry of the ``guests`` manager and a mapping report:
every setting read, what it became, and every setting with no mainline equivalent, with the reason. Pure: no side
effect; the files are the admin's (root-owned /etc), read size-capped; bad input raises naming the file. The
manager that writes the result is _mgr_import. The mapping table for users is docs/import.md.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import stat

from ansible_collections.vserver.core.plugins.module_utils import _caps
from ansible_collections.vserver.core.plugins.module_utils._common import (
    NAME_RE, XID_MAX, XID_MIN, VServerError)
from ansible_collections.vserver.core.plugins.module_utils._legacy_reasons import (
    CCAPS_NONE, FLAGS, INIT_STYLES, NOT_MAPPED, READ, RLIMIT_CGROUP, RLIMIT_NONE, RLIMIT_PROCESS, SCHED_NONE)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional  # noqa: F401

LEGACY_DIR = '/etc/vservers'
DEFAULT_VDIRBASE = '/vservers'
MAX_FILE = 64 * 1024
INF = ('inf', 'infinity', 'unlimited', '-1')
PAGE = os.sysconf('SC_PAGE_SIZE')


class Report:
    """What one guest's import reads: ``mapped`` (file, value, to) and ``unmapped`` (file, value, reason)."""

    def __init__(self, confdir: str) -> None:
        self.confdir = confdir
        self.mapped: List[Dict[str, Any]] = []
        self.unmapped: List[Dict[str, Any]] = []

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.confdir)

    def map(self, path: str, value: Any, to: str) -> None:
        self.mapped.append({'file': self.rel(path), 'value': value, 'to': to})

    def skip(self, path: str, value: Any, reason: str) -> None:
        self.unmapped.append({'file': self.rel(path), 'value': value, 'reason': reason})


# --- reading files ---------------------------------------------------------------------------------------------

def read_text(path: str) -> Optional[str]:
    """A regular file's text (None when absent), size-capped; a FIFO or device is never opened blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if exc.errno == errno.ELOOP:
            raise VServerError('%s: a symbolic link where a file is expected' % path, path)
        raise VServerError('%s: cannot be read (%s)' % (path, exc.strerror), path)
    with os.fdopen(fd, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VServerError('%s: not a regular file' % path, path)
        data = handle.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise VServerError('%s: larger than %d bytes' % (path, MAX_FILE), path)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        raise VServerError('%s: not UTF-8 text' % path, path)


def read_scalar(path: str) -> Optional[str]:
    """The first line of a file, stripped (util-vserver reads scalars so)."""
    text = read_text(path)
    if text is None:
        return None
    lines = text.splitlines()
    return lines[0].strip() if lines else ''


def read_list(path: str) -> Optional[List[str]]:
    """A list file: one entry a line; blank lines and '#' comments skipped."""
    text = read_text(path)
    if text is None:
        return None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith('#')]


def listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_int(path: str, low: int = 0, high: Optional[int] = None, infinite: bool = False, form: str = '') -> Any:
    """An integer scalar; 'inf' (when allowed) is returned as 'max'. Garbage raises naming the file."""
    text = read_scalar(path)
    if text is None:
        return None
    if infinite and text.lower() in INF:
        return 'max'
    if not re.match(r'^[0-9]+$', text) or int(text) < low or (high is not None and int(text) > high):
        bounds = 'from %d' % low + (' to %d' % high if high is not None else '')
        raise VServerError('%s: expected %s (an integer %s%s), got %r'
                           % (path, form or 'a number', bounds, ', or inf' if infinite else '', text), path)
    return int(text)


# --- the pieces of a guest directory -----------------------------------------------------------------------------

def guest_name(dirname: str) -> str:
    """The guest's name here: the directory's name when our rules accept it, else mapped to one they do."""
    if NAME_RE.match(dirname) and '..' not in dirname:
        return dirname
    name = re.sub(r'[^a-z0-9_.-]', '-', dirname.lower()).lstrip('.')
    name = re.sub(r'\.{2,}', '.', name)[:63] or 'guest'
    return name


def _context(confdir: str, rep: Report) -> Optional[int]:
    path = os.path.join(confdir, 'context')
    xid = read_int(path, XID_MIN, XID_MAX, form='the static context id')
    if xid is None:
        rep.skip(path, None, 'no context file: a dynamic context; a free xid is allocated and kept')
    else:
        rep.map(path, xid, 'xid')
    return xid


def _uts(confdir: str, rep: Report, entry: dict) -> None:
    uts = os.path.join(confdir, 'uts')
    for item in listdir(uts):
        path = os.path.join(uts, item)
        value = read_scalar(path)
        if item in ('nodename', 'domainname'):
            if not value:
                raise VServerError('%s: empty; give a host name or remove the file' % path, path)
            key = 'hostname' if item == 'nodename' else 'domainname'
            entry[key] = value
            rep.map(path, value, key)
        else:
            rep.skip(path, value, 'the kernel\'s %s cannot be faked without a patched kernel' % item)


def _caps_lists(confdir: str, rep: Report, entry: dict) -> None:
    add, drop, ccaps = [], [], []
    path = os.path.join(confdir, 'bcapabilities')
    for line in read_list(path) or []:
        negate = line[0] in '!~^'
        cap = line[1:].strip() if negate else line
        try:
            key = _caps.normalize(cap, path)
        except VServerError:
            rep.skip(path, line, 'unknown capability on this kernel')
            continue
        (drop if negate else add).append(key)
        rep.map(path, line, 'capabilities.bcaps_%s: %s' % ('drop' if negate else 'add', key))
    path = os.path.join(confdir, 'ccapabilities')
    for line in read_list(path) or []:
        key = line.lstrip('!~^').strip().lower()
        if line[0] in '!~^':
            rep.skip(path, line, 'removing a context capability: none is given by default here')
        elif key in ('raw_icmp', 'ping'):
            ccaps.append('raw_icmp')
            rep.map(path, line, 'capabilities.ccaps: raw_icmp')
        else:
            rep.skip(path, line, CCAPS_NONE.get(key) or 'unknown context capability')
    for flagfile in ('flags', 'cflags'):
        path = os.path.join(confdir, flagfile)
        for line in read_list(path) or []:
            key = line.lstrip('!~^').strip().lower()
            rep.skip(path, line, FLAGS.get(key) or 'unknown flag: ignored')
    section = {}
    if add:
        section['bcaps_add'] = add
    if drop:
        section['bcaps_drop'] = drop
    if ccaps:
        section['ccaps'] = ccaps
    entry['capabilities'] = section


# --- limits ------------------------------------------------------------------------------------------------------

def _rlimit_values(rdir: str, res: str) -> dict:
    """soft/hard/min of one resource: RES holds both, RES.soft/RES.hard/RES.min override."""
    out = {}
    both = read_int(os.path.join(rdir, res), infinite=True, form='a limit')
    if both is not None:
        out['soft'] = out['hard'] = both
    for kind in ('soft', 'hard', 'min'):
        value = read_int(os.path.join(rdir, '%s.%s' % (res, kind)), infinite=True, form='a limit')
        if value is not None:
            out[kind] = value
    return out


def _bytes(value: Any, unit: int) -> Any:
    return value if value == 'max' else value * unit


def _rlimits(confdir: str, rep: Report, limits: dict) -> None:
    rdir = os.path.join(confdir, 'rlimits')
    names = sorted({item.rsplit('.', 1)[0] if item.endswith(('.soft', '.hard', '.min')) else item
                    for item in listdir(rdir)})
    known = set(RLIMIT_CGROUP) | set(RLIMIT_PROCESS) | set(RLIMIT_NONE)
    per_process = {}
    for res in names:
        path = os.path.join(rdir, res)
        if res not in known:
            raise VServerError('%s: unknown resource %r; util-vserver knows %s' % (path, res, ', '.join(sorted(known))),
                               path)
        values = _rlimit_values(rdir, res)
        if 'min' in values:
            rep.skip(path + '.min', values.pop('min'),
                     'a guaranteed minimum: the import sets no memory.low or reservation')
        if not values:
            continue
        if res in RLIMIT_NONE:
            rep.skip(path, values, RLIMIT_NONE[res])
        elif res == 'rss':
            limits['memory'] = _bytes(values.get('hard', values.get('soft')), PAGE)
            rep.map(path, values, 'limits.memory (pages of %d bytes, hard limit)' % PAGE)
            if values.get('soft') not in (None, 'max') and values.get('soft') != values.get('hard'):
                limits['memory_high'] = _bytes(values['soft'], PAGE)
                rep.map(path + '.soft', values['soft'], 'limits.memory_high (reclaim above it)')
        elif res == 'nproc':
            limits['nproc'] = values.get('hard', values.get('soft'))
            rep.map(path, values, 'limits.nproc (pids.max: processes of the whole guest, as VServer counted them)')
        else:
            unit = PAGE if res == 'memlock' else 1
            soft, hard = values.get('soft', values.get('hard')), values.get('hard', values.get('soft'))
            if soft != 'max' and hard != 'max' and soft > hard:
                raise VServerError('%s: soft limit %s is above the hard limit %s' % (path, soft, hard), path)
            per_process[res] = {'soft': _bytes(soft, unit), 'hard': _bytes(hard, unit)}
            rep.map(path, values, 'limits.rlimits.%s (per process here; VServer counted %s per guest)'
                    % (res, 'it' if res in ('nofile', 'locks', 'memlock') else 'it per process too'))
    if per_process:
        limits['rlimits'] = per_process


def _sched(confdir: str, rep: Report, limits: dict) -> None:
    sdir = os.path.join(confdir, 'sched')
    values = {}
    for item in listdir(sdir):
        path = os.path.join(sdir, item)
        if os.path.isdir(path):
            rep.skip(path, None, 'per-CPU token buckets: no CFS counterpart')
            continue
        if item == 'idle-time':
            rep.skip(path, True, SCHED_NONE[item])
            continue
        value = read_int(path, form='a number of tokens or jiffies')
        if item in ('fill-rate', 'interval'):
            values[item] = value
        elif item in SCHED_NONE:
            rep.skip(path, value, SCHED_NONE[item])
        else:
            rep.skip(path, value, 'unknown scheduler setting: ignored')
    if values:
        if set(values) != {'fill-rate', 'interval'}:
            path = os.path.join(sdir, 'interval' if 'fill-rate' in values else 'fill-rate')
            raise VServerError('%s: missing; the token bucket needs both fill-rate and interval' % path, path)
        if values['fill-rate'] < 1 or values['interval'] < 1:
            path = os.path.join(sdir, 'fill-rate' if values['fill-rate'] < 1 else 'interval')
            raise VServerError('%s: must be at least 1' % path, path)
        limits['cpu'] = {'fill_rate': values['fill-rate'], 'interval': values['interval']}
        rep.map(sdir, values, 'limits.cpu (fill_rate/interval of one CPU: CFS quota per period)')


def _cpuset(confdir: str, rep: Report, limits: dict) -> None:
    path = os.path.join(confdir, 'cpuset')
    if os.path.isfile(path):  # odd but seen: a plain CPU list
        cpus = read_scalar(path)
        limits['cpuset'] = cpus
        rep.map(path, cpus, 'limits.cpuset')
        return
    for item in listdir(path):
        sub = os.path.join(path, item)
        value = read_scalar(sub)
        if item == 'cpus':
            if not value or not re.match(r'^[0-9,\- ]+$', value):
                raise VServerError('%s: expected a CPU list such as 0-1 or 0,2 (got %r)' % (sub, value), sub)
            limits['cpuset'] = value.replace(' ', '')
            rep.map(sub, value, 'limits.cpuset')
        elif item == 'name':
            rep.map(sub, value, 'the cpuset is the guest\'s own cgroup (named after the guest)')
        else:
            rep.skip(sub, value, 'memory nodes and exclusive cpusets are not imported' if item != 'nocreate'
                     else 'the guest\'s cpuset is always its own cgroup')


def _shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144, default 1024) -> cgroup v2 cpu.weight (1..10000, default 100)."""
    return max(1, min(10000, 1 + ((shares - 2) * 9999) // 262142))


CGROUP_FILES = {
    'memory.limit_in_bytes': 'memory', 'memory.max': 'memory', 'memory.high': 'memory_high',
    'memory.soft_limit_in_bytes': 'memory_high', 'pids.max': 'nproc', 'cpuset.cpus': 'cpuset',
    'cpu.shares': 'cpu_weight', 'cpu.weight': 'cpu_weight',
}


def _cgroup(confdir: str, rep: Report, limits: dict) -> None:
    cdir = os.path.join(confdir, 'cgroup')
    swap = None
    for item in listdir(cdir):
        path = os.path.join(cdir, item)
        if item in ('name', 'mnt', 'base', 'per-ctx'):
            rep.skip(path, read_scalar(path), 'the guest\'s cgroup is always its own, under the host\'s parent')
            continue
        key = CGROUP_FILES.get(item)
        if key is None and item != 'memory.memsw.limit_in_bytes':
            rep.skip(path, read_scalar(path), 'no limits option for this cgroup file')
            continue
        if key == 'cpuset':
            limits['cpuset'] = read_scalar(path)
        elif key == 'cpu_weight':
            value = read_int(path, 1, 262144 if item == 'cpu.shares' else 10000, form='a CPU weight')
            limits['cpu_weight'] = _shares_to_weight(value) if item == 'cpu.shares' else value
        elif item == 'memory.memsw.limit_in_bytes':
            swap = read_int(path, 1, infinite=True, form='bytes')
            continue
        else:
            limits[key] = read_int(path, 1, infinite=True, form='bytes' if key != 'nproc' else 'processes')
        rep.map(path, read_scalar(path), 'limits.%s' % key)
    if swap is not None:
        path = os.path.join(cdir, 'memory.memsw.limit_in_bytes')
        memory = limits.get('memory')
        if swap == 'max' or memory in (None, 'max'):
            limits['swap'] = 'max' if swap == 'max' else swap
        elif swap < memory:
            raise VServerError('%s: memory+swap %d is below memory.limit_in_bytes %d' % (path, swap, memory), path)
        else:
            limits['swap'] = swap - memory
        rep.map(path, swap, 'limits.swap (memory+swap minus memory)')


def _dlimits(confdir: str, rep: Report, unified: bool) -> None:
    ddir = os.path.join(confdir, 'dlimits')
    for item in listdir(ddir):
        sub = os.path.join(ddir, item)
        values = {}
        for key in ('space_total', 'inodes_total', 'reserved'):
            value = read_int(os.path.join(sub, key), form='a number')
            if value is not None:
                values[key] = value
        values['directory'] = read_scalar(os.path.join(sub, 'directory'))
        if unified:
            reason = ('the guest stays unified: a disk image of its own would copy every file it shares with '
                      'other guests (limits.disk after de-unifying it)')
        else:
            reason = ('limits.disk moves the tree into a loop image: set it afterwards, it is not done silently '
                      '(space_total is in KiB: %s)' % values.get('space_total'))
        rep.skip(sub, values, reason)


# --- network, init, tree ----------------------------------------------------------------------------------------

def _prefix(path_prefix: str, path_mask: str, default: Any) -> Any:
    prefix = read_scalar(path_prefix)
    if prefix is not None:
        if not re.match(r'^[0-9]{1,3}$', prefix):
            raise VServerError('%s: expected a prefix length such as 24 (got %r)' % (path_prefix, prefix),
                               path_prefix)
        return int(prefix)
    mask = read_scalar(path_mask)
    if mask is not None:
        try:
            return ipaddress.IPv4Network('0.0.0.0/%s' % mask).prefixlen
        except ValueError:
            raise VServerError('%s: expected a netmask such as 255.255.255.0 (got %r)' % (path_mask, mask),
                               path_mask)
    return default


def _interface(idir: str, rep: Report, default_prefix: Any) -> Optional[str]:
    if os.path.exists(os.path.join(idir, 'disabled')):
        rep.skip(idir, 'disabled', 'a disabled interface is not imported')
        return None
    ip_path = os.path.join(idir, 'ip')
    ip = read_scalar(ip_path)
    if not ip:
        raise VServerError('%s: missing or empty; every interface of a guest needs its address' % ip_path, ip_path)
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise VServerError('%s: not an IPv4 or IPv6 address (got %r)' % (ip_path, ip), ip_path)
    prefix = _prefix(os.path.join(idir, 'prefix'), os.path.join(idir, 'mask'), default_prefix)
    if prefix is None:
        prefix = addr.max_prefixlen
        rep.skip(idir, None, 'no prefix or mask: a host address (/%d) is assumed' % prefix)
    if prefix > addr.max_prefixlen:
        raise VServerError('%s: prefix %d is too long for %s' % (os.path.join(idir, 'prefix'), prefix, ip), idir)
    cidr = '%s/%d' % (addr, prefix)
    rep.map(ip_path, ip, 'addresses: %s (in the guest\'s own network namespace)' % cidr)
    reasons = {
        'dev': 'the host device the address was added to: the guest gets a veth on the import\'s bridge instead',
        'name': 'an interface label (alias): the guest\'s interface has its own name',
        'nodev': 'the address lives in the guest\'s network namespace; remove it from the host\'s device',
        'vlandev': 'a VLAN device: give vlan and parent to vserver.core.address (macvlan) to keep it',
        'novlandev': 'no VLAN device: nothing to do', 'bcast': 'the broadcast address follows the prefix',
        'scope': 'the address scope is global inside the guest'}
    for item, reason in sorted(reasons.items()):
        path = os.path.join(idir, item)
        if os.path.exists(path):
            rep.skip(path, read_scalar(path) if os.path.isfile(path) else True, reason)
    return cidr


def _interfaces(confdir: str, rep: Report) -> List[str]:
    idir = os.path.join(confdir, 'interfaces')
    default = _prefix(os.path.join(idir, 'prefix'), os.path.join(idir, 'mask'), None)
    out = []
    for item in listdir(idir):
        path = os.path.join(idir, item)
        if os.path.isdir(path):
            cidr = _interface(path, rep, default)
            if cidr:
                out.append(cidr)
        elif item not in ('prefix', 'mask'):
            rep.skip(path, read_scalar(path), 'a default of util-vserver\'s interface setup: the guest has its '
                                              'own network namespace')
    return out


def _init(confdir: str, rep: Report, entry: dict) -> None:
    adir = os.path.join(confdir, 'apps', 'init')
    path = os.path.join(adir, 'style')
    style = read_scalar(path)
    if style is not None:
        if style not in INIT_STYLES:
            raise VServerError('%s: unknown init style %r; util-vserver knows %s' % (path, style,
                                                                                     ', '.join(INIT_STYLES)), path)
        rep.map(path, style, 'init: /sbin/init run as the guest\'s PID 1' if style != 'plain' else
                'init: /sbin/init (the plain style)')
        entry['init'] = ['/sbin/init']
    path = os.path.join(adir, 'cmd.start')
    cmd = read_list(path)
    if cmd:
        entry['init'] = cmd
        rep.map(path, cmd, 'init (its argv, one line each)')
    path = os.path.join(adir, 'mark')
    mark = read_scalar(path)
    entry['autostart'] = mark == 'default'
    if mark is not None:
        rep.map(path, mark, 'autostart: %s (util-vserver\'s boot script starts the guests marked default)'
                % ('on' if mark == 'default' else 'off'))
    path = os.path.join(adir, 'depends')
    depends = read_list(path)
    if depends:
        rep.skip(path, depends, 'no start order between guests at boot here: the import starts %s first; at '
                                'boot, order them as cluster resources (docs/ha.md)' % ', '.join(depends))
    for item in listdir(adir):
        if item not in ('style', 'cmd.start', 'mark', 'depends'):
            rep.skip(os.path.join(adir, item), None, 'not imported (util-vserver\'s own init handling)')


def _unify(confdir: str, rep: Report) -> Optional[dict]:
    """The guest's vunify rules (None: the guest is not unified by util-vserver)."""
    udir = os.path.join(confdir, 'apps', 'vunify')
    if not os.path.isdir(udir):
        return None
    path = os.path.join(udir, 'exclude')
    exclude, include = [], []
    for line in read_list(path) or []:
        pattern = line[1:].strip() if line[0] in '+-~' else line
        if not pattern.startswith('/') and '*' not in pattern:
            pattern = '/' + pattern
        (include if line[0] == '+' else exclude).append(pattern)
    if exclude or include:
        rep.map(path, read_list(path), 'unify exclude %s, include %s' % (exclude, include))
    for item in listdir(udir):
        if item != 'exclude':
            rep.skip(os.path.join(udir, item), None, 'vunify\'s reference servers and hash store: our index '
                                                     'takes the already-linked files as they are')
    return {'exclude': exclude or None, 'include': include}


def _root(confdir: str, legacy_dir: str, dirname: str, rep: Report) -> str:
    path = os.path.join(confdir, 'vdir')
    if os.path.islink(path) or os.path.isdir(path):
        root = os.path.realpath(path)
    else:
        base = os.path.join(legacy_dir, '.defaults', 'vdirbase')
        root = os.path.join(os.path.realpath(base) if os.path.exists(base) else DEFAULT_VDIRBASE, dirname)
        path = base
    if not os.path.isdir(root):
        raise VServerError('%s: the guest tree %s is not a directory' % (path, root), path)
    rep.map(path, root, 'root (the tree stays where it is)')
    return root


def _others(confdir: str, rep: Report) -> None:
    path = os.path.join(confdir, 'personality')
    value = read_scalar(path)
    if value is not None:
        rep.skip(path, value, 'the runtime sets no personality: run the guest\'s init through setarch %s'
                 % ('linux32' if '32' in value else value.lower()))
    path = os.path.join(confdir, 'name')
    value = read_scalar(path)
    if value is not None:
        rep.skip(path, value, 'a display name: the guest is named after its directory')
    for item in listdir(confdir):
        if item in NOT_MAPPED:
            rep.skip(os.path.join(confdir, item), None, NOT_MAPPED[item])
        elif item not in READ:
            rep.skip(os.path.join(confdir, item), None, 'not a util-vserver setting the import knows: not read')


def read_guest(legacy_dir: str, dirname: str) -> dict:
    """One util-vserver guest (``legacy_dir/dirname``) as a guest entry of the guests manager (``entry``), with
    ``mapped``, ``unmapped``, ``unify`` (vunify rules, or None), ``xid`` (None: dynamic) and ``legacy``."""
    confdir = os.path.join(legacy_dir, dirname)
    if not os.path.isdir(confdir) or os.path.islink(confdir):
        raise VServerError('%s: no such util-vserver guest directory' % confdir, confdir)
    rep = Report(confdir)
    entry = {'name': guest_name(dirname), 'template': 'none', 'stop_timeout': 10}
    xid = _context(confdir, rep)
    entry['root'] = _root(confdir, legacy_dir, dirname, rep)
    _uts(confdir, rep, entry)
    _caps_lists(confdir, rep, entry)
    limits = {}
    _rlimits(confdir, rep, limits)
    _sched(confdir, rep, limits)
    _cpuset(confdir, rep, limits)
    _cgroup(confdir, rep, limits)
    entry['limits'] = limits
    entry['addresses'] = _interfaces(confdir, rep)
    _init(confdir, rep, entry)
    unify = _unify(confdir, rep)
    _dlimits(confdir, rep, unify is not None)
    _others(confdir, rep)
    depends = read_list(os.path.join(confdir, 'apps', 'init', 'depends')) or []
    return {'entry': entry, 'xid': xid, 'legacy': confdir, 'unify': unify, 'depends': depends, 'mapped': rep.mapped,
            'unmapped': rep.unmapped, 'renamed_from': dirname if entry['name'] != dirname else None}


def guest_dirs(legacy_dir: str) -> List[str]:
    """The guest directories of a util-vserver config tree (``.defaults`` and other dot entries are not guests)."""
    return [item for item in listdir(legacy_dir)
            if not item.startswith('.') and os.path.isdir(os.path.join(legacy_dir, item))
            and not os.path.islink(os.path.join(legacy_dir, item))]


def is_legacy_tree(path: str) -> bool:
    """``path`` holds util-vserver guest directories (a ``context`` file, ``vdir`` link or ``.defaults``)."""
    if os.path.isdir(os.path.join(path, '.defaults')):
        return True
    return any(os.path.lexists(os.path.join(path, item, probe)) for item in guest_dirs(path)
               for probe in ('context', 'vdir', 'apps'))
