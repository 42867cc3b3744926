# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the guest config store (one JSON document per guest under CONFIG_DIR).

Top-level keys belong to the ``context`` module; ``capabilities``, ``limits``, ``network`` and ``unify``
are sections owned by their modules. Writers hold the host lock (``_common.HostLock``).

Every read is validated (``check_doc``): a file that is not a usable guest config raises ``BrokenConfig``
naming the file and the problem. ``scan`` reads them all and keeps each broken one apart, so one bad file
never hides or breaks the others.
"""

from __future__ import annotations

import json
import os

from ansible_collections.vserver.core.plugins.module_utils._common import (
    XID_MAX, XID_MIN, VServerError, check_name, check_xid, write_json)

SECTIONS = ('capabilities', 'limits', 'network', 'unify')
# Marks the runtime writes into a config: ``purging`` (a purge in progress; a re-run of absent finishes it).
MARKS = ('purging',)
# Sections checked with their concern's validator (the others only for being JSON objects): a reader checks
# what it uses. ``load`` (one guest: start, stop, enter, the modules) checks CHECKED; ``scan`` (listings, xid
# and address allocation) checks LISTED, what listings show: checking limits too made `vserver stat` of 20 guests
# ~5 ms (12%) slower. The unify section is read only by the unify concern, which asks for it (importing that
# concern alone costs ~15 ms, a third of a whole `vserver stat`).
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
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_context  # late: the manager imports us
    if not isinstance(doc, dict):
        raise BrokenConfig(path, 'holds %s, not a JSON object' % _kind(doc), doc)
    unknown = sorted(set(doc) - set(_mgr_context.CONTEXT_KEYS) - set(SECTIONS) - set(MARKS), key=str)
    if unknown:
        raise BrokenConfig(path, 'unknown key %s (known: %s)' % (
            ', '.join(map(repr, unknown)), ', '.join(_mgr_context.CONTEXT_KEYS + SECTIONS + MARKS)), doc)
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
        opts = _mgr_context.validate({key: doc.get(key) for key in _mgr_context.CONTEXT_KEYS})
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
    try:
        with open(path, 'rb') as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        raise BrokenConfig(path, 'cannot be read: %s' % (exc.strerror or exc))
    if len(raw) > MAX_BYTES:
        raise BrokenConfig(path, 'is larger than %d bytes' % MAX_BYTES)
    if not raw.strip():
        raise BrokenConfig(path, 'is empty')
    try:
        return json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as exc:
        raise BrokenConfig(path, 'is not UTF-8 text: %s' % exc)
    except ValueError as exc:
        raise BrokenConfig(path, 'is not valid JSON (truncated or corrupt?): %s' % exc)


def load(paths, name, sections=CHECKED):
    """Guest ``name``'s config, validated; None when it has none. Raises BrokenConfig for an unusable file."""
    check_name(name)
    path = paths.config_file(name)
    doc = _read(path)
    if doc is _MISSING:
        return None
    return check_doc(doc, path, name, sections)


def names(paths):
    try:
        entries = os.listdir(paths.config_dir)
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.endswith('.json') and not entry.startswith('.'):
            out.append(entry[:-5])
    return sorted(out)


def scan(paths, sections=LISTED):
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


def load_all(paths, sections=LISTED):
    """The good configs by name (see ``scan`` for the broken ones)."""
    return scan(paths, sections)[0]


def save(paths, doc):
    os.makedirs(paths.config_dir, mode=0o755, exist_ok=True)
    write_json(paths.config_file(doc['name']), doc, 0o644)


def remove(paths, name):
    try:
        os.unlink(paths.config_file(name))
    except FileNotFoundError:
        pass


def xids_in_use(paths, exclude=None):
    """xid -> guest name, also for broken configs whose xid can still be read (never handed out twice)."""
    docs, broken = scan(paths)
    used = {exc.xid: name for name, exc in broken.items() if name != exclude and exc.xid is not None}
    used.update((doc['xid'], name) for name, doc in docs.items() if name != exclude)
    return used


def free_xid(paths, exclude=None):
    used = xids_in_use(paths, exclude)
    for xid in range(XID_MIN, XID_MAX + 1):
        if xid not in used:
            return xid
    raise VServerError('no free xid left between %d and %d' % (XID_MIN, XID_MAX), 'xid')


def by_xid(paths):
    return dict(xids_in_use(paths))
