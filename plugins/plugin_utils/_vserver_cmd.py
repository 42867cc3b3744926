# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the command lines of the vserver connection and inventory plugins (controller side).

Both reach a guest's host the same way: the controller itself (the `vserver` command run as a subprocess) or a
host over OpenSSH (one remote command line, the `vserver` command there). Nothing here enters a guest: the
`vserver` command on the guest's host does, through its one entry path (`vserver NAME exec`).
"""

from __future__ import annotations

import os
import re
import shlex

LOCAL_HOSTS = ('', 'localhost')  # 127.0.0.1 is reached over ssh: a way to measure ssh to this host
ROOT_KEYS = ('config_dir', 'run_dir', 'tree_dir', 'log_dir', 'cgroup_parent')
# what the vserver command says on stderr (one line, exit status 1) when it could not enter the guest at all
ENTRY_REFUSED = re.compile(r'^vserver: (no such guest: .*|guest \S+ is (not running|frozen).*|needs root.*|'
                           r'invalid guest name.*|.*: no such directory)$', re.M)
# what OpenSSH says when it never reached the host (its exit status is then 255)
SSH_FAILED = re.compile(r'(^ssh: |Permission denied|Connection (refused|timed out|closed|reset)|Host key verification|'
                        r'Could not resolve|No route to host|kex_exchange|Network is unreachable|'
                        r'Operation timed out|banner exchange)', re.M)


def is_local(ssh_host: str | None) -> bool:
    return (ssh_host or '') in LOCAL_HOSTS


def root_options(roots: dict | None) -> list[str]:
    """`--config-dir=...` options of the vserver command from a host roots mapping (keys as the modules' options)."""
    out = []
    for key, value in sorted((roots or {}).items()):
        if key not in ROOT_KEYS:
            raise ValueError('host_roots: unknown key %r (one of %s)' % (key, ', '.join(ROOT_KEYS)))
        if value is not None and value != '':
            out.append('--%s=%s' % (key.replace('_', '-'), value))
    return out


def vserver_argv(command: str, roots: dict | None, words: list[str]) -> list[str]:
    """The vserver command line: ``command`` (a shell-style string, `vserver` or `/usr/bin/python3 /x/bin/vserver`),
    the host roots, then ``words`` (`NAME exec CMD...`, `list --json`)."""
    argv = shlex.split(command or 'vserver')
    if not argv:
        raise ValueError('vserver_command: empty')
    return argv + root_options(roots) + list(words)


def ssh_argv(opts: dict, remote: list[str]) -> list[str]:
    """OpenSSH's command line running ``remote`` (an argv, quoted for the remote shell) on ``opts['host']``.

    ``opts``: host, port, user, private_key_file, common_args, extra_args, executable, control_path_dir,
    connect_timeout. ControlPersist keeps one connection per host open between tasks (as the ssh plugin does)."""
    argv = [opts.get('executable') or 'ssh', '-o', 'BatchMode=yes']
    if opts.get('connect_timeout'):
        argv += ['-o', 'ConnectTimeout=%d' % int(opts['connect_timeout'])]
    if opts.get('control_path_dir'):
        cp_dir = os.path.expanduser(opts['control_path_dir'])
        os.makedirs(cp_dir, mode=0o700, exist_ok=True)
        argv += ['-o', 'ControlMaster=auto', '-o', 'ControlPersist=%s' % (opts.get('control_persist') or '60s'),
                 '-o', 'ControlPath=%s' % os.path.join(cp_dir, 'vs-%C')]
    if opts.get('port'):
        argv += ['-p', str(opts['port'])]
    if opts.get('user'):
        argv += ['-l', opts['user']]
    if opts.get('private_key_file'):
        argv += ['-i', os.path.expanduser(opts['private_key_file']), '-o', 'IdentitiesOnly=yes']
    for key in ('common_args', 'extra_args'):
        argv += shlex.split(opts.get(key) or '')
    return argv + [opts['host'], '--', ' '.join(shlex.quote(word) for word in remote)]


def ssh_unreachable(returncode: int, stderr: bytes) -> bool:
    """True when ssh itself failed (status 255 and one of its messages), not the command it ran."""
    return returncode == 255 and bool(SSH_FAILED.search(stderr.decode('utf-8', 'replace')))


def entry_refused(returncode: int, stderr: bytes) -> str | None:
    """The vserver command's own one-line refusal (unknown or stopped guest...), else None."""
    if returncode not in (1, 126):
        return None
    found = ENTRY_REFUSED.search(stderr.decode('utf-8', 'replace'))
    return found.group(0)[len('vserver: '):] if found else None
