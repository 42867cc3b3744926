# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the host's apt sources (one-line and deb822 files) and the Debian mirror they name.

Floor 1, standard library only and no import from this package: tests/vm/mirror.py loads this file by its path."""

from __future__ import annotations

import glob
import re
from urllib.parse import urlsplit

APT_SOURCES = ('/etc/apt/sources.list', '/etc/apt/sources.list.d/*.list', '/etc/apt/sources.list.d/*.sources')


def parse_one_line(text):
    """[(uri, suite, components)] of the ``deb`` lines of a one-line sources file."""
    out = []
    for raw in text.splitlines():
        line = raw.split('#', 1)[0].strip()
        words = line.split()
        if not words or words[0] != 'deb':
            continue
        words = words[1:]
        if words and words[0].startswith('['):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith(']'):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            out.append((words[0], words[1], words[2:]))
    return out


def parse_deb822(text):
    """[(uri, suite, components)] of the enabled ``Types: deb`` stanzas of a deb822 sources file."""
    out = []
    for stanza in re.split(r'\n[ \t]*\n', text):
        fields = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith('#') or not raw.strip():
                continue
            if raw[0] in ' \t' and key:
                fields[key] += ' ' + raw.strip()
                continue
            key, dummy, value = raw.partition(':')
            key = key.strip().lower()
            fields[key] = value.strip()
        if 'deb' not in fields.get('types', '').split() or fields.get('enabled', 'yes').lower() in ('no', 'false'):
            continue
        for uri in fields.get('uris', '').split():
            for suite in fields.get('suites', '').split():
                out.append((uri, suite, fields.get('components', '').split()))
    return out


def host_codename(os_release='/etc/os-release'):
    try:
        with open(os_release) as handle:
            for line in handle:
                key, dummy, value = line.strip().partition('=')
                if key == 'VERSION_CODENAME':
                    return value.strip('"\'')
    except OSError:
        pass
    return None


def host_sources(patterns=APT_SOURCES):
    entries = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path) as handle:
                    text = handle.read()
            except OSError:
                continue
            entries += parse_deb822(text) if path.endswith('.sources') else parse_one_line(text)
    return entries


def pick_mirror(entries, suite, codename):
    """The archive URI of the host's sources that serves SUITE (else this host's own release) with main."""
    usable = [(uri, s) for uri, s, comps in entries
              if 'main' in comps and urlsplit(uri).scheme in ('http', 'https', 'file')]
    for wanted in (suite, codename):
        for uri, s in usable:
            if wanted and s == wanted:
                return uri
    return None
