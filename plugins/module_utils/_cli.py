# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Day-to-day admin of the guests on this host (run it as root).

commands:
  stat                 one line per guest: CTX PROC RSS DISK CPUTIME UPTIME STATE
                       NAME ADDRESSES (DISK: the disk limit, `none` if it has none)
  stat --json          the same as a JSON document: {"host": ..., "guests": [...]}, each
                       guest as the context_info module returns it, with its
                       figures for monitoring under "metrics"
  ps                   every process on the host, labelled with its context
  list                 guest names
  list --json          every guest as JSON (one object: host, guests with name,
                       xid, state, hostname, addresses, limits, python), what
                       the vserver.core.vserver inventory plugin reads
  metrics [NAME...]    every (or the named) guest's figures in the Prometheus text
                       format: CPU, memory, processes, OOM kills, throttling,
                       network per interface, disk, state, uptime
                       (docs/monitoring.md)
  metrics --textfile DIR [--every S] [NAME...]
                       write them to DIR/vserver.prom instead, atomically (DIR:
                       node_exporter's textfile-collector directory, which must
                       exist); with --every, again every S seconds until killed
  NAME start|stop      start the guest; stop it (its stop_signal, then SIGKILL
                       after its stop_timeout)
  NAME restart         stop it, then start it
  NAME freeze|thaw     freeze every process of the guest; thaw them
  NAME status          one line; exit status 0 when the guest runs (or is
                       frozen), 3 when it is stopped, 4 when it is broken
                       (processes in its cgroup but no tracked init: `start` or
                       `stop` cleans that up)
  NAME enter           a shell inside the guest
  NAME exec CMD [ARG...]
                       run a command inside the guest: every word after `exec`
                       is the command's, untouched (`vserver web exec ls -la`)

Options go before NAME or the listing; anything else is refused (exit status
2). A guest may be named like a listing: `vserver stat` alone is the listing,
`vserver stat start` starts the guest named stat.

Host roots come from the options, else the VSERVER_* environment variables,
else /etc/default/vserver (written by the host role), else the defaults. A
--config-dir given on the command line must be an existing directory (a typo
would read as a host without guests); one from the environment, the defaults
file or the default may not exist yet (a fresh host: no guests).

A guest whose config file is unusable (not a JSON object, empty, truncated, an
unknown key, a value of the wrong type or range, another guest's name) is never
hidden and never breaks the others: `stat` shows it with STATE `broken` (CTX `-`
when no xid can be read), prints one line per broken guest on stderr naming the
file and the problem, and still exits 0 (the listing itself worked); `ps`
labels its processes with its name. `NAME stop` still stops it (default signal
SIGTERM, timeout 10 s, with a warning on stderr); every other command on it
fails with that one-line message and exit status 1.

Exit status: 0 done, 1 failed (one line on stderr, never a traceback; also when
not run as root), 2 a usage error, 3 and 4 from `status`; `exec` and `enter`
give the command's (126 when the guest cannot be entered, 127 when the command
is not found in it). A listing whose reader goes away (`vserver ps | head -1`)
ends quietly, killed by SIGPIPE as other tools are.
`start` and `restart` print a one-line note on stderr when no vserver-supervise keeps
the guests' console logs capped (docs/security.md).

Built on the collection's module_utils: the same code as the Ansible modules.
"""
# This file is the command's body (`vserver --help` prints its docstring); bin/vserver is a stub that finds the
# collection and calls ``run``: a module is byte-compiled where the host role installs it, a script is compiled at
# every start (~1.5 ms of each `vserver exec`).

from __future__ import annotations

import os
import sys

from ansible_collections.vserver.core.plugins.module_utils import _enter, _enter_stage

LISTINGS = ('stat', 'ps', 'list', 'metrics')
GUEST_COMMANDS = ('start', 'stop', 'restart', 'freeze', 'thaw', 'status', 'enter', 'exec')
# the host roots (_enter's copy of _common.DEFAULTS' keys: exec's fast path does without _common, which imports json
# and re; tests/unit/test_cli_options.py holds them together)
OPTIONS = _enter.ROOT_KEYS
USAGE = ('vserver [OPTION...] stat [--json]|ps|list\n'
         '       vserver [OPTION...] metrics [--textfile DIR [--every S]] [NAME...]\n'
         '       vserver [OPTION...] NAME start|stop|restart|freeze|thaw|status|enter\n'
         '       vserver [OPTION...] NAME exec CMD [ARG...]')


def _entry_command(argv):
    """``(options, [NAME, exec|enter, ARG...])`` for a well-formed `vserver [--OPT VALUE|--OPT=VALUE...] NAME exec
    CMD [ARG...]` or `... NAME enter`, else None. The fast path of exec/enter: no argparse (its import costs
    more than the rest of this parse); anything else, or anything unusual here, goes to parse(), which takes it
    or refuses it."""
    opts = {}
    rest = list(argv)
    while rest and rest[0].startswith('-'):
        flag, eq, value = rest.pop(0).partition('=')
        key = flag[2:].replace('-', '_')
        if not flag.startswith('--') or key not in OPTIONS:
            return None
        if not eq:
            if not rest or rest[0].startswith('-'):
                return None
            value = rest.pop(0)
        opts[key] = value
    if not (len(rest) == 2 and rest[1] == 'enter' or len(rest) > 2 and rest[1] == 'exec' and rest[2]):
        return None
    return opts, rest


def _say(text):
    """One line on stdout (what print does; a module_utils file may not call print)."""
    sys.stdout.write('%s\n' % text)


def _entered(code):
    """The command's exit status, now: the interpreter's teardown (tens of ms) is skipped after exec/enter."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _enter_known(entry):
    """exec/enter the fast way when nothing it rests on changed since the last entry into that guest (_enter's
    enter_known: without loading the config store, its validators or the runtime); returns when the full way
    must decide (the first entry after a start, a changed config, anything unusual)."""
    global STAGE
    opts, words = entry
    try:
        code = _enter.enter_known(opts, words[0], _enter.LOGIN_ARGV if words[1] == 'enter' else words[2:], STAGE)
    except OSError as exc:  # after the plan went: as main() reports it
        from ansible_collections.vserver.core.plugins.module_utils._common import terminal_safe
        sys.stderr.write('vserver: %s\n' % terminal_safe(exc))
        code = 1
    except KeyboardInterrupt:
        code = 130
    if code is not None:
        STAGE = None
        _entered(code)


# The rest of the library is imported inside the functions below: the fast path above does without it.


WHAT = {'config_dir': 'the guests\' config files, NAME.json (must exist when given here)',
        'run_dir': 'the guests\' runtime state', 'tree_dir': 'where guest trees are made by default',
        'log_dir': 'the guests\' console logs', 'cgroup_parent': 'the guests\' parent cgroup, a relative path'}


def _parser():
    """The argparse parser (imported here: exec and enter do without it, see _entry_command)."""
    import argparse
    from ansible_collections.vserver.core.plugins.module_utils._common import DEFAULTS, ENV

    paragraphs = __doc__.split('\n\n')
    parser = argparse.ArgumentParser(
        prog='vserver', usage=USAGE, description='\n\n'.join(paragraphs[:2]), epilog='\n\n'.join(paragraphs[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    for key in OPTIONS:
        parser.add_argument('--' + key.replace('_', '-'), dest=key,
                            metavar='CGROUP' if key == 'cgroup_parent' else 'DIR',
                            help='%s; else $%s, else /etc/default/vserver, else %s' % (
                                WHAT[key], ENV[key], DEFAULTS[key]))
    parser.add_argument('words', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parse(argv):
    """``(options, words)`` of the command line; exits 2 with the usage and what is wrong, 0 after --help."""
    parser = _parser()
    given = parser.parse_args(argv)
    words = given.words[1:] if given.words[:1] == ['--'] else given.words
    if words[1:2] != ['exec'] and ('-h' in words or '--help' in words):
        parser.print_help()
        raise SystemExit(0)
    problem = _problem(words)
    if problem:
        parser.error(problem)
    return dict((key, getattr(given, key)) for key in OPTIONS if getattr(given, key) is not None), words


def _problem(words):
    """What is wrong with the words after the options ('' when nothing)."""
    if not words:
        return 'a command is needed'
    if words[0].startswith('-'):
        return 'unknown option %s' % words[0]
    if len(words) == 1:
        if words[0] in LISTINGS:
            return ''
        if words[0] in GUEST_COMMANDS:
            return '%s needs a guest name: vserver NAME %s' % (words[0], words[0])
        return 'no command given for guest %s (one of %s)' % (words[0], ', '.join(GUEST_COMMANDS))
    name, command, args = words[0], words[1], words[2:]
    if is_list_json(words):
        return ''
    if command not in GUEST_COMMANDS:
        if name in FIGURES:
            return figures_args(words)[1]
        if name in LISTINGS:
            return '%s takes no arguments (got %s)%s' % (name, ' '.join(words[1:]), _hint(words[1:]))
        return 'unknown command for guest %s: %s (one of %s)' % (name, command, ', '.join(GUEST_COMMANDS))
    if command == 'exec':
        return '' if args and args[0] else 'exec needs a command: vserver %s exec CMD [ARG...]' % name
    if command == 'enter' and args:
        return 'enter takes no arguments (to run a command: vserver %s exec CMD [ARG...])' % name
    if args:
        return '%s takes no arguments (got %s)%s' % (command, ' '.join(args), _hint(args))
    return ''


def _hint(args):
    return '; options go before the guest name or the listing' if any(a.startswith('-') for a in args) else ''


def guest_command(paths, name, command, args, roots=None):
    """``roots``: ``(options, _enter.roots_key(options))`` read before ``paths`` was made (exec and enter)."""
    # what each command needs, imported there: exec and enter start faster without the managers (~30 ms)
    from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime
    from ansible_collections.vserver.core.plugins.module_utils._common import VServerError
    if command in ('start', 'stop', 'restart', 'freeze', 'thaw'):
        state = {'start': 'started', 'stop': 'stopped', 'restart': 'restarted', 'freeze': 'frozen',
                 'thaw': 'started'}[command]
        try:
            known = _config.load(paths, name) is not None
        except _config.BrokenConfig:
            known = True  # stop still works (the runtime record knows the guest); the others say what is wrong
        if not known:
            raise VServerError('no such guest: %s' % name, 'name')
        from ansible_collections.vserver.core.plugins.module_utils import _mgr_context
        result = _mgr_context.ensure_context(paths, {'name': name, 'state': state})
        for warning in result.get('warnings') or []:
            sys.stderr.write('vserver: warning: %s\n' % warning)
        _say('%s: %s' % (name, ', '.join(result['actions']) or 'nothing to do'))
        if command in ('start', 'restart') and result['actions'] and not _runtime.log_watched(paths):
            sys.stderr.write('vserver: note: no vserver-supervise watches %s; %s.log is capped only at its starts '
                             '(run vserver-supervise --logs; docs/security.md)\n' % (paths.log_dir, name))
        return 0
    doc, raw = _config.load_raw(paths, name)
    if doc is None:
        raise VServerError('no such guest: %s' % name, 'name')
    if command == 'status':
        from ansible_collections.vserver.core.plugins.module_utils import _runtime_views
        info = _runtime.status(paths, doc)
        if info['state'] == 'stopped':
            _say('%s is stopped' % name)
            return 3
        if info['state'] == 'broken':
            _say('%s is broken: %s' % (name, info['message']))
            return 4
        _say('%s is %s (xid %s, init pid %s, %d processes, uptime %s)' % (
            name, info['state'], info['xid'], info['init_pid'], info['nproc'],
            _runtime_views.format_duration(info['uptime'])))
        return 0
    # enter and exec (their arguments were checked by the parse); a pty of the guest's own stands in for each of
    # fds 0-2 that is a terminal here: ours never crosses
    # what this entry concludes (from these options and config bytes) is kept for the next: _enter_known
    argv = _enter.LOGIN_ARGV if command == 'enter' else args
    return _entered(_enter.enter(_runtime.Runtime(paths, name), doc, argv, terminal=True, stage=_take_stage(),
                                 known=roots and roots + (raw,)))


def _take_stage():
    global STAGE
    stage, STAGE = STAGE, None
    return stage


def listing(paths, what):
    """Print a listing; a reader that goes away (`vserver ps | head -1`) ends it quietly."""
    from ansible_collections.vserver.core.plugins.module_utils import _config, _mgr_context, _runtime_views
    from ansible_collections.vserver.core.plugins.module_utils._common import terminal_safe
    try:
        if what == 'stat':
            rows = _mgr_context.info(paths, with_processes=False)['guests']
            _say('\n'.join(terminal_safe(line) for line in _runtime_views.stat_table(rows).splitlines()))
            for row in rows:
                if row.get('error'):
                    sys.stderr.write(terminal_safe('vserver: %s is broken: %s' % (row['name'], row['error'])) + '\n')
        elif what == 'ps':
            _say('%7s %6s %8s %-16s %1s %8s %s' % ('PID', 'CTX', 'GPID', 'GUEST', 'S', 'RSS', 'COMMAND'))
            for proc in _mgr_context.info(paths, with_processes=True)['processes']:
                _say('%7d %6s %8d %-16s %1s %7dK %s' % (
                    proc['pid'], '-' if proc['xid'] is None else proc['xid'], proc['guest_pid'],
                    proc['guest'] or '(host)', proc['state'],
                    proc['rss_kb'], terminal_safe(proc['comm'])))  # a guest names its processes: escape
        else:
            for name in _config.names(paths):
                _say(name)
        sys.stdout.flush()
    except BrokenPipeError:
        _end_by_sigpipe()
    return 0


def is_list_json(words: list[str]) -> bool:
    """`vserver list --json` (a guest named list is reached by its commands, none of which is --json)."""
    return words == ['list', '--json']


def list_json(paths) -> int:
    """`vserver list --json`: one JSON object, ``{"host": NODENAME, "guests": [...]}``, each guest with its name,
    xid, state (running, frozen, stopped, broken), hostname, addresses, limits (its config's section), init_pid, the
    host's name and ``python`` (``/usr/bin/python3`` when its tree has one, else null): what the inventory plugin
    reads. A broken config is listed (state broken, its problem in ``error``), never hidden."""
    import json
    from ansible_collections.vserver.core.plugins.module_utils import _config, _runtime
    docs, broken = _config.scan(paths)
    host = os.uname().nodename
    guests = []
    for name in sorted(set(docs) | set(broken)):
        if name in broken:
            guests.append({'name': name, 'xid': broken[name].xid, 'state': 'broken', 'host': host, 'hostname': None,
                           'addresses': [], 'limits': {}, 'init_pid': None, 'python': None,
                           'error': str(broken[name])})
            continue
        doc = docs[name]
        row = _runtime.status(paths, doc)
        guests.append({'name': name, 'xid': doc.get('xid'), 'state': row['state'], 'host': host,
                       'hostname': row['hostname'], 'addresses': row['addresses'], 'limits': doc.get('limits') or {},
                       'init_pid': row['init_pid'], 'python': tree_python(doc.get('root'))})
    try:
        _say(json.dumps({'host': host, 'guests': guests}, sort_keys=True))
        sys.stdout.flush()
    except BrokenPipeError:
        _end_by_sigpipe()
    return 0


def tree_python(root: str | None) -> str | None:
    """``/usr/bin/python3`` if the guest tree at ``root`` has it as an executable regular file, else None. Looked
    up with openat2 RESOLVE_IN_ROOT (the guest's symlinks resolve inside its tree, never on the host's)."""
    import stat
    from ansible_collections.vserver.core.plugins.module_utils import _kernel
    python = '/usr/bin/python3'
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, TypeError):
        return None
    try:
        fd = _kernel.open_in_root(root_fd, python.lstrip('/'))
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    return python if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 else None


def _end_by_sigpipe():
    """End as other tools do when their reader is gone: killed by SIGPIPE (141 in a shell), without a word."""
    import signal
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush must not fail
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)  # only if whoever started us blocked SIGPIPE


# --- `vserver stat --json` and `vserver metrics`: the guests' figures for monitoring (_runtime_metrics) ------------

FIGURES = ('stat', 'metrics')  # the listings that take arguments of their own (see figures_args)


def figures_args(words):
    """``(arguments, problem)`` of `stat --json` or `metrics [--textfile DIR [--every S]] [NAME...]`."""
    out = {'json': False, 'textfile': None, 'every': None, 'names': []}
    rest = list(words[1:])
    if words[0] == 'stat':
        out['json'] = True
        return out, '' if rest in ([], ['--json']) else 'stat takes no arguments but --json (got %s)' % ' '.join(rest)
    while rest:
        flag, eq, value = rest.pop(0).partition('=')
        if not flag.startswith('-'):
            out['names'].append(flag + eq + value)
            continue
        if flag not in ('--textfile', '--every'):
            return out, 'metrics takes --textfile DIR, --every S and guest names (got %s)' % flag
        if not eq:
            if not rest:
                return out, 'metrics %s needs a value' % flag
            value = rest.pop(0)
        out[flag[2:]] = value
    if out['every'] is not None:
        try:
            out['every'] = float(out['every'])
        except ValueError:
            out['every'] = -1.0
        if not 1 <= out['every'] <= 86400:
            return out, 'metrics --every takes seconds between 1 and 86400 (got %s)' % value
        if out['textfile'] is None:
            return out, 'metrics --every needs --textfile DIR (it writes there again every S seconds)'
    if out['textfile'] == '':
        return out, 'metrics --textfile needs a directory'
    return out, ''


def figures(paths, words):
    """`stat --json` and `metrics`: print (or write to the textfile directory) the guests' figures."""
    import json
    from ansible_collections.vserver.core.plugins.module_utils import _runtime_metrics
    args = figures_args(words)[0]
    try:
        if args['json']:
            from ansible_collections.vserver.core.plugins.module_utils import _mgr_context
            rows = _mgr_context.info(paths, with_processes=False, metrics=True)['guests']
            _say(json.dumps({'host': os.uname().nodename, 'guests': rows}, sort_keys=True))
        elif args['textfile'] is None:
            sys.stdout.write(_runtime_metrics.render(_runtime_metrics.collect(paths, args['names'])))
        else:
            _textfile_loop(paths, args, _runtime_metrics)
        sys.stdout.flush()
    except BrokenPipeError:
        _end_by_sigpipe()
    return 0


def _textfile_loop(paths, args, metrics):
    """Write the exposition to the textfile directory once, or every ``args['every']`` seconds: the first write
    fails the command (a bad directory, an unknown guest); a later failure is said on stderr (once while it lasts,
    the log stays small) and retried."""
    import time
    from ansible_collections.vserver.core.plugins.module_utils._common import VServerError, terminal_safe
    metrics.write_textfile(args['textfile'], metrics.render(metrics.collect(paths, args['names'])))
    said = None
    while args['every']:
        time.sleep(args['every'] - time.monotonic() % args['every'])
        try:
            metrics.write_textfile(args['textfile'], metrics.render(metrics.collect(paths, args['names'])))
            problem = None
        except (VServerError, OSError) as exc:
            problem = 'vserver: metrics: %s' % terminal_safe(exc)
        if problem != said:
            sys.stderr.write('%s\n' % (problem or 'vserver: metrics: written again'))
            sys.stderr.flush()
            said = problem


def main(argv):
    from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError
    opts, words = _entry_command(argv) or parse(argv)
    if os.geteuid() != 0:
        raise VServerError('needs root: run it as root (e.g. with sudo)')
    if 'config_dir' in opts and not os.path.isdir(opts['config_dir']):
        _parser().error('--config-dir %s: no such directory' % opts['config_dir'])  # a typo would list no guests
    roots = (opts, _enter.roots_key(opts)) if words[1:2] in (['exec'], ['enter']) else None
    paths = Paths(**opts)
    if words[0] in FIGURES and (words[0] == 'metrics' or words[1:]) and words[1:2] not in [[c] for c in GUEST_COMMANDS]:
        return figures(paths, words)
    if len(words) == 1:
        return listing(paths, words[0])
    if is_list_json(words):
        return list_json(paths)
    return guest_command(paths, words[0], words[1], words[2:], roots)


STAGE = None


def run(argv: list[str]) -> int:
    """The command: exit status (exec/enter end the process with their command's, see _entered)."""
    global STAGE
    # `exec` and `enter` start their second stage (a fresh interpreter, see _enter_stage) before anything else is
    # loaded: it starts up while this process reads the config and checks the guest
    entry = _entry_command(argv)
    STAGE = _enter_stage.spawn() if entry and os.geteuid() == 0 else None
    if STAGE is not None:
        _enter_known(entry)
    from ansible_collections.vserver.core.plugins.module_utils._common import VServerError, terminal_safe
    try:
        return main(argv)
    except VServerError as exc:
        sys.stderr.write('vserver: %s\n' % terminal_safe(exc))
        return 1
    except OSError as exc:  # refused by the kernel (EPERM in a confined root, ENOSPC...): one line, no traceback
        sys.stderr.write('vserver: %s\n' % terminal_safe(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if STAGE is not None:  # exec/enter never got as far as the guest (bad input): no plan, it exits
            STAGE.abort()
