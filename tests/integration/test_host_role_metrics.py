"""The host role's metrics writer (host_metrics_textfile_dir) on a host without systemd (this machine), seen on the
host: refused for a directory that does not exist before anything is touched, a detached `vserver metrics
--textfile DIR --every S` whose file a real parser reads and which follows a guest's state, idempotent, restarted
when its settings change, removed (with its textfile) when turned off and by host_state=absent.

Everything is private to the test (paths under tmp, cgroup parent vstest-..., the command under a tmp prefix); the
guest is vs18m-role, xid 1810. The systemd timer is seen in test_systemd_host.py's container.
"""
import os
import secrets
import shutil
import signal

import pytest


from ansible_collections.vserver.core.plugins.module_utils import _cgroup, _common, _config, _runtime
from ansible_helpers import changed_count, run_playbook
from conftest import stop_guests
from helpers import wait_for

text_string_to_metric_families = pytest.importorskip(
    'prometheus_client.parser', reason='prometheus-client is not installed (make setup)').text_string_to_metric_families
pytestmark = pytest.mark.slow   # (not cgroup: driven by ansible-playbook, minutes in the v2 VM)

PLAY = """
- name: The host role
  hosts: localhost
  gather_facts: false
  roles:
    - role: vserver.core.host
"""


def writer_pid(paths):
    try:
        with open(os.path.join(paths.run_dir, '.metrics.pid')) as handle:
            pid = int(handle.read())
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            return pid if b'metrics' in handle.read() else None
    except (OSError, ValueError):
        return None


def states(path):
    """{guest: state} from a textfile, read with prometheus_client's parser."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    return {s.labels['name']: s.labels['state'] for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == 'vserver_guest_state' and s.value == 1}


@pytest.fixture
def host(tmp_path):
    base = str(tmp_path)
    evars = {
        'host_config_dir': base + '/etc', 'host_run_dir': base + '/run', 'host_tree_dir': base + '/trees',
        'host_log_dir': base + '/log', 'host_cgroup_parent': 'vstest-hm-%s/guests' % secrets.token_hex(3),
        'host_env_file': base + '/vserver.env', 'host_install_packages': False, 'host_cli_prefix': base + '/prefix',
        'host_cli_bindir': base + '/bin', 'host_cli_sbindir': base + '/sbin', 'host_service': 'supervise',
        'host_metrics_textfile_dir': base + '/textfile', 'host_metrics_interval': 1,
    }
    for sub in ('bin', 'sbin', 'textfile'):
        os.makedirs(os.path.join(base, sub))
    paths = _common.Paths(config_dir=evars['host_config_dir'], run_dir=evars['host_run_dir'],
                          tree_dir=evars['host_tree_dir'], log_dir=evars['host_log_dir'],
                          cgroup_parent=evars['host_cgroup_parent'])
    playbook = tmp_path / 'host.yml'
    playbook.write_text(PLAY)
    box = {'vars': evars, 'paths': paths, 'play': playbook, 'prom': os.path.join(base, 'textfile', 'vserver.prom')}
    try:
        yield box
    finally:
        pid = writer_pid(paths)
        if pid:
            os.kill(pid, signal.SIGTERM)
        stop_guests(paths)
        top = evars['host_cgroup_parent'].split('/')[0]   # a failed run leaves the parent the role made
        layout = _cgroup.host_layout()
        for root in set(layout.v1.values()) | ({layout.unified} if layout.unified else set()):
            for sub in ('guests', ''):
                try:
                    os.rmdir(os.path.join(root, top, sub))
                except OSError:
                    pass


def run(box, **extra):
    rc, data = run_playbook(box['play'], dict(box['vars'], **extra))
    results = [(task['task']['name'], res) for play in data['plays'] for task in play['tasks']
               for res in task['hosts'].values()]
    failed = [res.get('msg') for dummy, res in results if res.get('failed')]
    return rc, data, failed + ['changed: %s %s' % (name, res.get('actions', '')) for name, res in results
                               if res.get('changed')]


def test_the_role_keeps_one_metrics_writer_and_removes_it(host, busybox_tree):
    paths, prom = host['paths'], host['prom']
    # a textfile directory that does not exist: refused by name, nothing installed
    rc, data, failed = run(host, host_metrics_textfile_dir=host['prom'] + '.missing')
    assert rc != 0 and any('host_metrics_textfile_dir' in (m or '') and 'is not a directory' in (m or '')
                           for m in failed), failed
    assert os.listdir(host['vars']['host_cli_bindir']) == [] and not os.path.exists(paths.config_dir)

    rc, data, failed = run(host)
    assert rc == 0, failed
    pid = writer_pid(paths)
    assert pid and wait_for(lambda: states(prom) == {}, timeout=10)
    # a guest started by hand shows up in the next write, its state as it changes
    root = os.path.join(paths.tree_dir, 'vs18m-role')
    shutil.copytree(busybox_tree, root, symlinks=True)
    doc = {'name': 'vs18m-role', 'xid': 1810, 'root': root, 'init': ['/sbin/init'], 'stop_timeout': 1,
           'stop_signal': 'SIGKILL', 'schema': _config.SCHEMA}
    _config.save(paths, doc)
    assert wait_for(lambda: states(prom) == {'vs18m-role': 'stopped'}, timeout=10), states(prom)
    _runtime.start(paths, doc)
    assert wait_for(lambda: states(prom) == {'vs18m-role': 'running'}, timeout=10), states(prom)

    rc, data, failed = run(host)   # the same settings: nothing to do, the same writer
    assert rc == 0 and changed_count(data) == 0 and writer_pid(paths) == pid, failed
    rc, data, failed = run(host, host_metrics_interval=2)   # other settings: a new writer
    assert rc == 0 and changed_count(data) == 1, failed
    assert writer_pid(paths) not in (None, pid)
    pid = writer_pid(paths)

    rc, data, failed = run(host, host_metrics_textfile_dir='')   # turned off: writer and its file gone
    assert rc == 0 and changed_count(data) == 1, failed
    assert writer_pid(paths) is None and not os.path.exists(prom) and not os.path.exists(
        os.path.join(paths.run_dir, '.metrics.pid'))
    with open('/proc/%d/stat' % pid) if os.path.exists('/proc/%d/stat' % pid) else open(os.devnull) as handle:
        assert handle.read().rsplit(')', 1)[-1].split()[:1] in ([], ['Z'])   # gone, or a zombie not reaped yet

    rc, data, failed = run(host)
    assert rc == 0 and writer_pid(paths) and wait_for(lambda: os.path.exists(prom), timeout=10), failed
    _runtime.stop(paths, doc)
    rc, data, failed = run(host, host_state='absent', host_remove_guests=True)
    assert rc == 0, failed
    assert writer_pid(paths) is None and not os.path.exists(prom)
    assert os.listdir(os.path.dirname(prom)) == []
