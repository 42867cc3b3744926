"""Print the host's configured Debian apt sources (main component) as one-line ``deb URI SUITE main`` entries.

Reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.list (one-line format) and *.sources (deb822).
Keeps only entries for this host's release (CODENAME, CODENAME-updates, CODENAME-security) that carry
``main``, so third-party repositories (cloud SDKs, node...) are ignored. No mirror name is written
anywhere in the repository: the VM is built from whatever this host is configured to use.
"""
import glob
import os
import sys


def codename(os_release='/etc/os-release'):
    with open(os_release) as handle:
        for line in handle:
            key, dummy, value = line.strip().partition('=')
            if key == 'VERSION_CODENAME':
                return value.strip('"')
    raise SystemExit('mirror.py: no VERSION_CODENAME in %s' % os_release)


def one_line(path):
    out = []
    with open(path) as handle:
        for raw in handle:
            line = raw.split('#', 1)[0].strip()
            if not line.startswith('deb '):
                continue
            words = line.split()[1:]
            if words and words[0].startswith('['):  # options: [arch=amd64 signed-by=...]
                while words and not words[0].endswith(']'):
                    words.pop(0)
                words.pop(0)
            if len(words) >= 3:
                out.append((words[0], words[1], words[2:]))
    return out


def deb822(path):
    out = []
    with open(path) as handle:
        text = handle.read()
    for para in text.split('\n\n'):
        fields = {}
        key = None
        for raw in para.splitlines():
            if raw.startswith('#') or not raw.strip():
                continue
            if raw[0] in ' \t' and key:
                fields[key] += ' ' + raw.strip()
                continue
            key, dummy, value = raw.partition(':')
            key = key.strip().lower()
            fields[key] = value.strip()
        if 'deb' not in fields.get('types', '').split() or fields.get('enabled', 'yes').lower() == 'no':
            continue
        for uri in fields.get('uris', '').split():
            for suite in fields.get('suites', '').split():
                out.append((uri, suite, fields.get('components', '').split()))
    return out


def main():
    release = codename()
    wanted = (release, release + '-updates', release + '-security', release + '/updates')
    entries = []
    files = ['/etc/apt/sources.list'] + sorted(glob.glob('/etc/apt/sources.list.d/*.list'))
    for path in files:
        if os.path.isfile(path):
            entries += one_line(path)
    for path in sorted(glob.glob('/etc/apt/sources.list.d/*.sources')):
        entries += deb822(path)
    seen = []
    for uri, suite, comps in entries:
        line = 'deb %s %s main' % (uri.rstrip('/'), suite)
        if suite in wanted and 'main' in comps and line not in seen:
            seen.append(line)
    if not any(line.split()[2] == release for line in seen):
        sys.exit('mirror.py: no apt source for %s main is configured on this host' % release)
    print(release)
    for line in seen:
        print(line)


if __name__ == '__main__':
    main()
