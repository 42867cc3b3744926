"""Print the host's configured Debian apt sources (main component) as one-line ``deb URI SUITE main`` entries.

Reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.list (one-line format) and *.sources (deb822).
Keeps only entries for this host's release (CODENAME, CODENAME-updates, CODENAME-security) that carry
``main``, so third-party repositories (cloud SDKs, node...) are ignored. No mirror name is written
anywhere in the repository: the VM is built from whatever this host is configured to use.
"""
import importlib.util
import os
import sys

# One parser of apt sources for the whole project: module_utils _apt_sources (standard library only, no import from
# the collection), which the guest role's tree builder uses on managed hosts to pick a guest's mirror.
_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'plugins', 'module_utils',
                       '_apt_sources.py')
_spec = importlib.util.spec_from_file_location('_apt_sources', _HELPER)
_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sources)


def main():
    release = _sources.host_codename()
    if not release:
        sys.exit('mirror.py: no VERSION_CODENAME in /etc/os-release')
    wanted = (release, release + '-updates', release + '-security', release + '/updates')
    entries = _sources.host_sources()
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
