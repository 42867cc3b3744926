# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the guest config store (one JSON document per guest under CONFIG_DIR).

Top-level keys belong to the ``context`` module; ``capabilities``, ``limits``, ``network`` and ``unify``
are sections owned by their modules. Writers hold the host lock (``_common.HostLock``).

Every read is validated (``check_doc``): a file that is not a usable guest config raises ``BrokenConfig``
naming the file and the problem. ``scan`` reads them all and keeps each broken one apart, so one bad file
never hides or breaks the others.

Documents carry a schema version (key ``schema``, ``SCHEMA``): ``save`` writes it, every read migrates an older
document (one written before versions: schema 0) in memory, step by step (``MIGRATIONS``), before checking it.

Floor 4, the store (see docs/architecture.md): above the concerns, below the runtime. The context keys (name, xid,
root, init, stop settings...) are checked here, the document's own; each section is checked by its concern's
validator, so the store sits above the concerns (each imported where used: a reader pays only for the concerns
whose sections it checks). No concern reads a config: their managers read the documents and pass them in.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal

from ansible_collections.vserver.core.plugins.module_utils._common import (
    XID_MAX, XID_MIN, Paths, VServerError, check_name, check_xid, write_json)

CONTEXT_KEYS = ('name', 'xid', 'root', 'hostname', 'domainname', 'init', 'stop_signal', 'stop_timeout', 'lxcfs')
SECTIONS = ('capabilities', 'limits', 'network', 'unify')
SCHEMA_KEY = 'schema'
SCHEMA = 1
# Marks the runtime writes into a config: ``purging`` (a purge in progress; a re-run of absent finishes it).
MARKS = ('purging',)
# Sections checked with their concern's validator (the others only for being JSON objects): a reader checks
# what it uses. ``load`` (one guest: start, stop, enter, the modules) checks CHECKED; ``scan`` (listings, xid
# and address allocation) checks LISTED, what listings show: checking limits too made `vserver stat` of 20 guests
# ~5 ms (12%) slower. The unify section is read only by the unify manager, which asks for it (_mgr_unify.select;
# importing that concern alone costs ~15 ms, a third of a whole `vserver stat`).
CHECKED = ('capabilities', 'limits', 'network')
LISTED = ('capabilities', 'network')
REQUIRED = ('name', 'xid', 'root', 'init')
MAX_BYTES = 1 << 20  # a guest config is a few hundred bytes; refuse to parse anything huge


class BrokenConfig(VServerError):
    """A guest config file that exists but cannot be used. ``raw`` is what it parsed to (None if nothing)."""

    def __init__(self, path, problem, raw=None):
        super().__init__('%s: %s' % (path, problem), 'config')
        self.path = path
        self.problem = problem
        self.raw = raw

    @property
    def xid(self):
        """The xid the file holds if one can be read (so that no other guest gets it), else None."""
        if isinstance(self.raw, dict):
            try:
                return check_xid(self.raw.get('xid'))
            except VServerError:
                return None
        return None


def _kind(value):
    if value is None:
        return 'null'
    return {list: 'a JSON list', str: 'a JSON string', bool: 'a JSON boolean', int: 'a JSON number',
            float: 'a JSON number'}.get(type(value), type(value).__name__)


def _same(stored, canonical):
    """``stored`` already has the canonical value and type (a string '101' is not the integer 101)."""
    return stored == canonical and isinstance(stored, bool) == isinstance(canonical, bool) and \
        isinstance(stored, str) == isinstance(canonical, str)


# --- the context keys (the context module's options stored in the document) -------------------------------

HOSTNAME_RE = re.compile(r'^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
                         r'(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$')
DEFAULT_INIT = ['/sbin/init']
DEFAULT_STOP_SIGNAL = 'SIGTERM'
DEFAULT_STOP_TIMEOUT = 10
REFUSED_ROOTS = ('/', '/bin', '/boot', '/dev', '/etc', '/home', '/lib', '/lib64', '/proc', '/root', '/run', '/sbin',
                 '/sys', '/tmp', '/usr', '/var', '/var/lib')
_RT_SIGNAL = re.compile(r'^SIGRT(MIN|MAX)(?:([+-])([0-9]+))?$')


def signal_name(num: int) -> str:
    """The canonical name of a signal number: SIGTERM, SIGRTMIN+3 (real-time ones counted from SIGRTMIN)."""
    if num == signal.SIGRTMIN:
        return 'SIGRTMIN'
    if num == signal.SIGRTMAX:
        return 'SIGRTMAX'
    if signal.SIGRTMIN < num < signal.SIGRTMAX:
        return 'SIGRTMIN+%d' % (num - signal.SIGRTMIN)
    return signal.Signals(num).name


_VALID_SIGNALS = []


def _valid_signals():
    """signal.valid_signals() as numbers, built once (it makes ~60 enum members per call: a listing of 100 guests
    spent 8 ms of its 50 on it)."""
    if not _VALID_SIGNALS:
        _VALID_SIGNALS.append(frozenset(int(num) for num in signal.valid_signals()))
    return _VALID_SIGNALS[0]


def parse_signal(value: object, field: str = 'stop_signal') -> int:
    """A stop signal -> its number. Accepts names (SIGTERM, term), SIGRTMIN+N / SIGRTMAX-N and numbers;
    refuses SIGSTOP and SIGCONT (they stop or resume, never end init) and anything out of range."""
    bad = VServerError('%s must be a signal name such as SIGTERM, SIGPWR or SIGKILL, SIGRTMIN+N or SIGRTMAX-N '
                       '(N from 0 to %d; SIGRTMIN+3 for systemd), or a number from 1 to %d; not SIGSTOP or SIGCONT '
                       '(got %r)' % (field, signal.SIGRTMAX - signal.SIGRTMIN, signal.SIGRTMAX, value), field)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad
    text = str(value).strip().upper()
    if text.isdigit():
        num = int(text)
    else:
        name = text if text.startswith('SIG') else 'SIG' + text
        match = _RT_SIGNAL.match(name)
        if match:
            offset = int(match.group(3) or 0)
            if (match.group(1) == 'MIN') == (match.group(2) == '-') and offset:
                raise bad  # SIGRTMIN-N, SIGRTMAX+N
            num = signal.SIGRTMIN + offset if match.group(1) == 'MIN' else signal.SIGRTMAX - offset
        elif name in signal.Signals.__members__:
            num = int(signal.Signals[name])
        else:
            raise bad
    if num not in _valid_signals() or num in (signal.SIGSTOP, signal.SIGCONT) or \
            signal.SIGSYS < num < signal.SIGRTMIN:  # 32, 33: the C library's own
        raise bad
    return int(num)


def parse_stop_timeout(value: object, field: str = 'stop_timeout') -> int | float:
    """Seconds from 0 to 3600 (int when whole)."""
    try:
        timeout = float(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        timeout = -1
    if not 0 <= timeout <= 3600:  # also refuses nan
        raise VServerError('%s must be a number of seconds from 0 to 3600 (got %r)' % (field, value), field)
    return int(timeout) if timeout == int(timeout) else timeout


def check_init(value: object) -> list | None:
    if value is None:
        return None
    argv = [value] if isinstance(value, str) else list(value)
    if not argv or not all(isinstance(a, str) and a for a in argv) or not argv[0].startswith('/'):
        raise VServerError('init must be an absolute path inside the guest or an argv list starting with one '
                           '(got %r)' % (value,), 'init')
    if '\x00' in ''.join(argv):
        raise VServerError('init must not contain NUL bytes', 'init')
    return argv


def check_root(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise VServerError('root must be an absolute path (got %r)' % (value,), 'root')
    norm = os.path.normpath(value)
    if norm in REFUSED_ROOTS:
        raise VServerError('root must be a dedicated directory for the guest, not %s' % norm, 'root')
    return norm


def check_context(params: dict) -> dict:
    """The context keys of ``params`` checked and normalized (name always; the others None when not given)."""
    out = {'name': check_name(params.get('name'))}
    if params.get('xid') is not None:
        out['xid'] = check_xid(params['xid'])
    out['root'] = check_root(params.get('root'))
    for key in ('hostname', 'domainname'):
        value = params.get(key)
        if value is not None and not HOSTNAME_RE.match(value):
            raise VServerError('%s must be a DNS name of letters, digits, "-" and "." (at most 64 characters, '
                               'got %r)' % (key, value), key)
        out[key] = value
    out['init'] = check_init(params.get('init'))
    if params.get('stop_signal') is not None:
        out['stop_signal'] = signal_name(parse_signal(params['stop_signal']))
    if params.get('stop_timeout') is not None:
        out['stop_timeout'] = parse_stop_timeout(params['stop_timeout'])
    if params.get('lxcfs') is not None:
        if not isinstance(params['lxcfs'], bool):
            raise VServerError('lxcfs must be true or false (got %r)' % (params['lxcfs'],), 'lxcfs')
        out['lxcfs'] = params['lxcfs']
    return out


# --- the sections, checked by their concerns --------------------------------------------------------------

def _check_caps(_name, section):
    from ansible_collections.vserver.core.plugins.module_utils import _caps
    unknown = sorted(set(section) - set(_caps.SECTION_KEYS))
    if unknown:
        raise VServerError('unknown key %s' % ', '.join(unknown))
    _caps.validate(section)


def _check_limits(_name, section):
    from ansible_collections.vserver.core.plugins.module_utils import _limits
    _limits.validate(section)


def _check_network(name, section):
    from ansible_collections.vserver.core.plugins.module_utils import _netns
    unknown = sorted(set(section) - set(_netns.SECTION_KEYS))
    if unknown:
        raise VServerError('unknown key %s' % ', '.join(unknown))
    _netns.validate(dict(section, name=name))


def _check_unify(_name, section):
    from ansible_collections.vserver.core.plugins.module_utils import _unify
    if 'guests' in section:
        raise VServerError('unknown key guests')
    _unify.validate(section)


SECTION_CHECKS = {'capabilities': _check_caps, 'limits': _check_limits, 'network': _check_network,
                  'unify': _check_unify}


def check_doc(doc, path, name=None, sections=CHECKED):
    """Raise BrokenConfig unless ``doc`` (parsed from ``path``) is a usable config of guest ``name``.

    Reuses the validators of the modules that write each part: the context keys through the context
    module's ``validate``, the ``sections`` named through their concern's ``validate``."""
    if not isinstance(doc, dict):
        raise BrokenConfig(path, 'holds %s, not a JSON object' % _kind(doc), doc)
    known = CONTEXT_KEYS + SECTIONS + MARKS + (SCHEMA_KEY,)
    unknown = sorted(set(doc) - set(known), key=str)
    if unknown:
        raise BrokenConfig(path, 'unknown key %s (known: %s)' % (', '.join(map(repr, unknown)), ', '.join(known)), doc)
    if SCHEMA_KEY in doc and not _same(doc[SCHEMA_KEY], SCHEMA):
        raise BrokenConfig(path, '%s must be %d (got %r)' % (SCHEMA_KEY, SCHEMA, doc[SCHEMA_KEY]), doc)
    for key in MARKS:
        if key in doc and not isinstance(doc[key], bool):
            raise BrokenConfig(path, '%s must be true or false (got %r)' % (key, doc[key]), doc)
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise BrokenConfig(path, 'missing key %s' % ', '.join(missing), doc)
    if name is not None and doc['name'] != name:
        raise BrokenConfig(path, 'names guest %r, not %r' % (doc['name'], name), doc)
    nulls = [key for key in REQUIRED if doc[key] is None]
    if nulls:
        raise BrokenConfig(path, '%s must not be null' % ', '.join(nulls), doc)
    for key in ('root', 'hostname', 'domainname', 'stop_signal'):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise BrokenConfig(path, '%s must be a string (got %r)' % (key, doc[key]), doc)
    if not isinstance(doc['init'], list):
        raise BrokenConfig(path, 'init must be an argv list such as ["/sbin/init"] (got %r)' % (doc['init'],), doc)
    try:
        opts = check_context({key: doc.get(key) for key in CONTEXT_KEYS})
    except VServerError as exc:
        raise BrokenConfig(path, str(exc), doc)
    except (TypeError, ValueError, AttributeError) as exc:  # a type the option parser never gets from Ansible
        raise BrokenConfig(path, 'a context key has the wrong type (%s: %s)' % (type(exc).__name__, exc), doc)
    for key in ('xid', 'init', 'stop_signal', 'stop_timeout'):
        if doc.get(key) is not None and not _same(doc[key], opts[key]):
            raise BrokenConfig(path, '%s must be stored as %s %r (got %s %r)' % (
                key, _kind(opts[key]).replace('a JSON ', 'the '), opts[key],
                _kind(doc[key]).replace('a JSON ', 'the '), doc[key]), doc)
    for key in SECTIONS:
        section = doc.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise BrokenConfig(path, '%s must be a JSON object (got %s)' % (key, _kind(section)), doc)
        if key not in sections:
            continue
        try:
            SECTION_CHECKS[key](doc['name'], section)
        except VServerError as exc:
            raise BrokenConfig(path, '%s: %s' % (key, exc), doc)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a shape the validator did not expect
            raise BrokenConfig(path, '%s: malformed section (%s: %s)' % (key, type(exc).__name__, exc), doc)
    return doc


_MISSING = object()


def _read(path):
    """The parsed JSON document at ``path``; _MISSING if there is no such file; BrokenConfig if unreadable."""
    return _read_raw(path)[0]


def _read_raw(path):
    """``(document, the bytes it was parsed from)``; ``(_MISSING, None)`` if there is no such file."""
    try:
        with open(path, 'rb') as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return _MISSING, None
    except OSError as exc:
        raise BrokenConfig(path, 'cannot be read: %s' % (exc.strerror or exc))
    if len(raw) > MAX_BYTES:
        raise BrokenConfig(path, 'is larger than %d bytes' % MAX_BYTES)
    if not raw.strip():
        raise BrokenConfig(path, 'is empty')
    try:
        return json.loads(raw.decode('utf-8')), raw
    except UnicodeDecodeError as exc:
        raise BrokenConfig(path, 'is not UTF-8 text: %s' % exc)
    except ValueError as exc:
        raise BrokenConfig(path, 'is not valid JSON (truncated or corrupt?): %s' % exc)


# --- schema versions: a document read is migrated to SCHEMA in memory, step by step --------------------------

class Migration(collections.namedtuple('Migration', 'to apply change at_next_start restart', defaults=(None, False))):
    """One step: ``to`` the version it produces, ``apply(doc)`` the doc of version ``to - 1`` -> one of ``to``,
    ``change`` what it changes in the document, ``at_next_start`` what changes for a guest that runs at its next
    start (None: nothing), ``restart`` whether a running guest needs that restart to match its config. (Not a
    typing.NamedTuple: this file is on the path of every `vserver exec`, which does not load typing.)"""

    __slots__ = ()


def _to_1(doc: dict) -> dict:
    return dict(doc, schema=1)


# Schema 0: the documents written before versions (vserver.core 0.1: no ``schema`` key); tests/unit/fixtures/config.
MIGRATIONS = (
    Migration(1, _to_1, 'the document gets its schema version'),
)


def migrate(doc: dict, path: str = 'config') -> tuple[dict, list[Migration]]:
    """``(doc of version SCHEMA, the steps applied)``. A version this code does not know (a newer collection's,
    or not a number) raises BrokenConfig: such a document is never guessed at."""
    version = doc.get(SCHEMA_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise BrokenConfig(path, '%s must be a version number (got %r)' % (SCHEMA_KEY, version), doc)
    if version > SCHEMA:
        raise BrokenConfig(path, 'was written by a newer vserver.core (schema %d; this one reads up to %d): '
                                 'upgrade the collection on this host' % (version, SCHEMA), doc)
    steps = [step for step in MIGRATIONS if step.to > version]
    for step in steps:
        doc = step.apply(doc)
    return doc, steps


def _load(paths, name, sections):
    check_name(name)
    path = paths.config_file(name)
    doc, raw = _read_raw(path)
    if doc is _MISSING:
        return None, [], None
    steps = []
    if isinstance(doc, dict):
        doc, steps = migrate(doc, path)
    return check_doc(doc, path, name, sections), steps, raw


def load(paths, name: str, sections=CHECKED) -> dict | None:
    """Guest ``name``'s config, validated and migrated; None when it has none. Raises BrokenConfig for an unusable
    file."""
    return _load(paths, name, sections)[0]


def load_migrated(paths, name: str, sections=CHECKED) -> tuple[dict | None, list[Migration]]:
    """``(config, migration steps applied to it)`` of guest ``name``; ``(None, [])`` when it has none. The file is
    not rewritten here: the next ``save`` writes the current schema."""
    return _load(paths, name, sections)[:2]


def load_raw(paths, name: str, sections=CHECKED) -> tuple[dict | None, bytes | None]:
    """``(config, the exact bytes it was parsed from)`` as ``load``; ``(None, None)`` when it has none."""
    doc, _steps, raw = _load(paths, name, sections)
    return doc, raw


def names(paths: Paths) -> list[str]:
    try:
        entries = os.listdir(paths.config_dir)
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.endswith('.json') and not entry.startswith('.'):
            out.append(entry[:-5])
    return sorted(out)


def scan(paths: Paths, sections: tuple = LISTED) -> tuple[dict[str, dict], dict[str, BrokenConfig]]:
    """Every guest config: ``(docs, broken)``, good docs by name and BrokenConfig errors by name."""
    docs, broken = {}, {}
    for name in names(paths):
        try:
            doc = load(paths, name, sections)
        except BrokenConfig as exc:
            broken[name] = exc
            continue
        except VServerError as exc:  # a file name that is no guest name
            broken[name] = BrokenConfig(paths.config_file(name), str(exc))
            continue
        if doc is not None:
            docs[name] = doc
    return docs, broken


def load_all(paths: Paths, sections: tuple = LISTED) -> dict[str, dict]:
    """The good configs by name (see ``scan`` for the broken ones)."""
    return scan(paths, sections)[0]


def save(paths, doc: dict) -> None:
    """Write guest ``doc['name']``'s config (atomically), as the current schema version."""
    os.makedirs(paths.config_dir, mode=0o755, exist_ok=True)
    write_json(paths.config_file(doc['name']), dict(doc, schema=SCHEMA), 0o644)


def remove(paths: Paths, name: str) -> None:
    try:
        os.unlink(paths.config_file(name))
    except FileNotFoundError:
        pass


def xids_in_use(paths: Paths, exclude: str | None = None) -> dict[int, str]:
    """xid -> guest name, also for broken configs whose xid can still be read (never handed out twice)."""
    docs, broken = scan(paths)
    used = {exc.xid: name for name, exc in broken.items() if name != exclude and exc.xid is not None}
    used.update((doc['xid'], name) for name, doc in docs.items() if name != exclude)
    return used


def free_xid(paths: Paths, exclude: str | None = None) -> int:
    used = xids_in_use(paths, exclude)
    for xid in range(XID_MIN, XID_MAX + 1):
        if xid not in used:
            return xid
    raise VServerError('no free xid left between %d and %d' % (XID_MIN, XID_MAX), 'xid')
