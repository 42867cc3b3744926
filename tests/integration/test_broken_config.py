"""A corrupt guest config never breaks or hides the other guests, and the broken guest can still be stopped and
removed: `vserver stat`, `vserver ps`, context_info, `vserver NAME stop` and context state=stopped/absent, with two
running guests of which one gets a corrupt config file."""
import json
import os
import time

import pytest
import yaml

from ansible_collections.vserver.core.plugins.module_utils import _runtime, _procfs as P
from helpers import vserver
from ansible_helpers import path_vars, run_playbook, task_results


GOOD_XID, BAD_XID = 420, 421

# (id, the corrupt file made from the good doc, words of the error, whether the xid can still be read)
CORRUPTIONS = [
    ('list', lambda doc: '[1, 2]', 'holds a JSON list, not a JSON object', False),
    ('null', lambda doc: 'null', 'holds null, not a JSON object', False),
    ('empty', lambda doc: '', 'is empty', False),
    ('truncated', lambda doc: json.dumps(doc)[:30], 'is not valid JSON', False),
    ('string-xid', lambda doc: dict(doc, xid=str(doc['xid'])), "xid must be stored as the number 421 (got the "
                                                               "string '421')", True),
    ('xid-range', lambda doc: dict(doc, xid=70000), 'xid must be an integer from 2 to 49151 (got 70000)', False),
    ('unknown-key', lambda doc: dict(doc, colour='red'), "unknown key 'colour'", True),
    ('wrong-type', lambda doc: dict(doc, stop_timeout='soon'), "stop_timeout must be a number of seconds", True),
    ('name-mismatch', lambda doc: dict(doc, name='other'), "names guest 'other', not 'bad'", True),
]


def corrupt(paths, doc, make):
    content = make(doc)
    with open(paths.config_file(doc['name']), 'w') as handle:
        handle.write(content if isinstance(content, str) else json.dumps(content))


def play(tmp_path, tasks, name='play.yml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}]))
    return path


def info_task(paths):
    return {'name': 'info', 'vserver.core.context_info': {
        'config_dir': paths.config_dir, 'run_dir': paths.run_dir, 'cgroup_parent': paths.cgroup_parent},
        'register': 'info'}


def gone(pid, start, timeout=30.0):
    """Poll until the process ``pid`` started at ``start`` no longer runs (a loaded machine can be slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = P.read_stat(pid)
        if st is None or st[0] in ('Z', 'X') or st[2] != start:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize('make,words,xid_readable', [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_listings_show_the_broken_guest_and_it_still_stops(host_paths, make_guest, tmp_path, make, words,
                                                           xid_readable):
    make_guest('good', xid=GOOD_XID, stop_signal='SIGKILL', start=True)
    bad = make_guest('bad', xid=BAD_XID, start=True)
    good_rt, bad_rt = _runtime.Runtime(host_paths, 'good'), _runtime.Runtime(host_paths, 'bad')
    good_pid, bad_pid = good_rt.init_pid(), bad_rt.init_pid()
    bad_start = bad_rt.record['init_start']
    bad_groups = list(bad_rt.group.paths().values())
    assert good_pid and bad_pid and all(os.path.isdir(g) for g in bad_groups)
    corrupt(host_paths, bad, make)
    problem = '%s: %s' % (host_paths.config_file('bad'), words)
    ctx = str(BAD_XID) if xid_readable else '-'

    out = vserver(host_paths, 'stat')
    assert out.returncode == 0 and 'Traceback' not in out.stderr, out.stderr
    rows = {line.split()[7]: line.split() for line in out.stdout.splitlines()[1:]}
    assert rows['good'][:2] == [str(GOOD_XID), '1'] and rows['good'][6] == 'running'
    assert rows['bad'][0] == ctx and rows['bad'][6] == 'broken'
    assert 'vserver: bad is broken: %s' % problem in out.stderr

    out = vserver(host_paths, 'ps')
    assert out.returncode == 0 and 'Traceback' not in out.stderr, out.stderr
    lines = {int(ln.split()[0]): ln.split() for ln in out.stdout.splitlines()[1:]}
    assert lines[good_pid][1:4] == [str(GOOD_XID), '1', 'good']
    assert lines[bad_pid][1:4] == [ctx, '1', 'bad']

    rc, data = run_playbook(play(tmp_path, [info_task(host_paths)]))
    res = task_results(data)[0][1]
    assert rc == 0 and not res.get('failed'), res
    guests = {g['name']: g for g in res['guests']}
    assert guests['good']['state'] == 'running' and guests['good']['xid'] == GOOD_XID
    assert guests['good']['init_pid'] == good_pid and 'error' not in guests['good']
    assert guests['bad']['state'] == 'broken' and problem in guests['bad']['error']
    assert guests['bad']['config'] == host_paths.config_file('bad')
    assert guests['bad']['runtime_state'] == 'running' and guests['bad']['init_pid'] == bad_pid
    assert guests['bad']['xid'] == (BAD_XID if xid_readable else None)
    procs = {p['pid']: p for p in res['processes']}
    assert procs[bad_pid]['guest'] == 'bad' and procs[good_pid]['xid'] == GOOD_XID

    # other commands on the broken guest: one line naming the file, exit 1, never a traceback
    for command in (['bad', 'status'], ['bad', 'start'], ['bad', 'exec', 'true']):
        out = vserver(host_paths, *command)
        assert out.returncode == 1 and out.stderr.startswith('vserver: %s' % problem), (command, out.stderr)
        assert len(out.stderr.splitlines()) == 1

    out = vserver(host_paths, 'bad', 'stop')
    assert out.returncode == 0 and out.stdout.strip() == 'bad: stop', (out.stdout, out.stderr)
    assert 'config of guest bad is broken (%s' % problem in out.stderr and 'SIGTERM' in out.stderr
    assert gone(bad_pid, bad_start)
    assert not any(os.path.exists(g) for g in bad_groups) and not os.path.exists(host_paths.runtime('bad'))
    assert good_rt.init_pid() == good_pid  # the good guest was not touched

    context = dict(name='bad', state='absent', **path_vars(host_paths))
    rc, data = run_playbook(play(tmp_path, [{'name': 'remove', 'vserver.core.context': context},
                                            info_task(host_paths)], 'absent.yml'))
    results = task_results(data)
    assert rc == 0, results
    removed, info = results[0][1], results[1][1]
    assert removed['changed'] and removed['actions'] == ['remove config'], removed
    assert any('config of guest bad is broken' in w for w in removed.get('warnings', [])), removed
    assert not os.path.exists(host_paths.config_file('bad'))
    assert os.path.isdir(bad['root'])  # the tree is kept
    assert [g['name'] for g in info['guests']] == ['good'] and info['guests'][0]['state'] == 'running'


def test_context_stops_a_broken_guest_and_never_overwrites_it(host_paths, make_guest, tmp_path):
    bad = make_guest('bad', xid=BAD_XID, start=True)
    rt = _runtime.Runtime(host_paths, 'bad')
    pid, start = rt.init_pid(), rt.record['init_start']
    corrupt(host_paths, bad, lambda doc: dict(doc, xid=str(doc['xid'])))
    with open(host_paths.config_file('bad'), 'rb') as handle:
        broken_bytes = handle.read()
    base = path_vars(host_paths)

    # started (or present) on a broken config: refused, naming the file; the file and the guest are left alone
    rc, data = run_playbook(play(tmp_path, [{'name': 'start', 'vserver.core.context': dict(
        name='bad', state='started', **base)}], 'start.yml'))
    res = task_results(data)[0][1]
    assert rc != 0 and res.get('failed') and host_paths.config_file('bad') in res['msg'], res
    assert 'xid must be stored as the number 421' in res['msg'] and 'Traceback' not in res['msg']
    with open(host_paths.config_file('bad'), 'rb') as handle:
        assert handle.read() == broken_bytes
    assert rt.init_pid() == pid

    # a new guest never takes the xid the broken config still names
    rc, data = run_playbook(play(tmp_path, [{'name': 'new', 'vserver.core.context': dict(
        name='fresh', state='present', **base)}], 'new.yml'))
    assert rc == 0, task_results(data)
    with open(host_paths.config_file('fresh')) as handle:
        assert json.load(handle)['xid'] != BAD_XID

    # stopped, in check mode first (nothing happens), then for real
    task = {'name': 'stop', 'vserver.core.context': dict(name='bad', state='stopped', **base)}
    rc, data = run_playbook(play(tmp_path, [task], 'stop.yml'), check=True)
    res = task_results(data)[0][1]
    assert rc == 0 and res['changed'] and res['actions'] == ['stop'] and rt.init_pid() == pid, res
    rc, data = run_playbook(play(tmp_path, [task], 'stop.yml'))
    res = task_results(data)[0][1]
    assert rc == 0 and res['changed'] and res['actions'] == ['stop'], res
    assert res['guest']['state'] == 'broken' and res['guest']['runtime_state'] == 'stopped'
    assert any('stop_signal SIGTERM' in w for w in res.get('warnings', [])), res
    assert gone(pid, start) and not _runtime.Runtime(host_paths, 'bad').leftovers()
    with open(host_paths.config_file('bad'), 'rb') as handle:
        assert handle.read() == broken_bytes  # stopping does not rewrite the broken file
    rc, data = run_playbook(play(tmp_path, [task], 'stop.yml'))
    assert rc == 0 and not task_results(data)[0][1]['changed']

    # absent with purge is refused (the tree cannot be known); without purge it removes the file
    rc, data = run_playbook(play(tmp_path, [{'name': 'purge', 'vserver.core.context': dict(
        name='bad', state='absent', purge=True, **base)}], 'purge.yml'))
    res = task_results(data)[0][1]
    assert rc != 0 and 'purge' in res['msg'] and os.path.exists(host_paths.config_file('bad')), res
    rc, data = run_playbook(play(tmp_path, [{'name': 'absent', 'vserver.core.context': dict(
        name='bad', state='absent', **base)}], 'absent.yml'))
    assert rc == 0 and not os.path.exists(host_paths.config_file('bad'))
    assert os.path.isdir(bad['root'])
