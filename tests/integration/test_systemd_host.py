"""The roles on a host whose PID 1 is systemd: boot units, restart on failure, the delegated cgroup, the timer.

This machine's PID 1 is not systemd; a container booting Debian's systemd 252 on this kernel stands in for such
a host (see systemd_container.py). Everything is done as an admin would: ansible-playbook with the host, guest
and unify roles, then systemctl, the `vserver` command and the kernel's files, from inside the container.
"""
import json
import os
import re
import shutil
import time

import pytest

from helpers import TOP
from systemd_container import CGROUP2, SystemdContainer, build_tree

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which('systemd-nspawn'), reason='systemd-nspawn (systemd-container) missing'),
              pytest.mark.skipif(not os.path.isfile(os.path.join(CGROUP2, 'cgroup.procs')),
                                 reason='the harness expects a hybrid host (cgroup2 at %s) like the CI machine' % CGROUP2)]

VENV_BIN = os.path.join(TOP, '.venv', 'bin')
CG = '/sys/fs/cgroup'
PLAYBOOK = """
- name: A systemd host with two guests
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    host_install_packages: false
    host_guest_log_max: 1M
    host_metrics_textfile_dir: /var/lib/prometheus/node-exporter
    host_metrics_interval: 2
    vserver_bridge: vstsdbr0
    vserver_bridge_addresses: [198.18.77.1/24]
    unify_schedule: auto
    vserver_guests:
      - name: sd-a
        xid: 4101
        template: busybox
        stop_timeout: 2
        autostart: true
        capabilities: {ccaps: [raw_icmp]}
        addresses: [198.18.77.11/24]
        network: {bridge: vstsdbr0}
      - name: sd-b
        xid: 4102
        template: clone
        clone_from: sd-a
        stop_timeout: 2
        autostart: false
        addresses: [198.18.77.12/24]
        network: {bridge: vstsdbr0}
  roles:
    - role: vserver.core.host
    - role: vserver.core.guest
    - role: vserver.core.unify
"""
ENV = {
    'PATH': '%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' % VENV_BIN,
    'HOME': '/root', 'LANG': 'C.UTF-8',
    'ANSIBLE_COLLECTIONS_PATH': os.path.join(TOP, '.build', 'collections'),
    'ANSIBLE_PYTHON_INTERPRETER': '/usr/bin/python3',
    'ANSIBLE_STDOUT_CALLBACK': 'json_results',
    'ANSIBLE_CALLBACK_PLUGINS': os.path.join(TOP, 'tests', 'integration', 'callback_plugins'),
    'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_RETRY_FILES_ENABLED': '0', 'ANSIBLE_LOCALHOST_WARNING': '0',
    'ANSIBLE_INVENTORY_UNPARSED_WARNING': '0', 'ANSIBLE_LOCAL_TEMP': '/root/.ansible/tmp',
}


def booted(tmp_path_factory, name):
    """A booted systemd container, powered off and removed when the fixture ends."""
    box = SystemdContainer(build_tree(), tmp_path_factory.mktemp(name))
    box.setup()
    try:
        box.boot()
        yield box
    finally:
        box.cleanup()


@pytest.fixture(scope='module')
def host(tmp_path_factory):
    for box in booted(tmp_path_factory, 'systemd-host'):
        os.makedirs(box.path('/var/lib/prometheus/node-exporter'))   # node_exporter's textfile directory
        with open(box.path('/root/site.yml'), 'w') as handle:
            handle.write(PLAYBOOK)
        yield box


def playbook(box, *options, path='/root/site.yml'):
    proc = box.sh('ansible-playbook -i localhost, %s ' % path + ' '.join(options), check=False, env=ENV,
                  timeout=600)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError('ansible-playbook output is not JSON:\n%s\n%s' % (proc.stdout[-4000:], proc.stderr[-4000:]))
    failed = [(task['task']['name'], res.get('msg'), res.get('stderr', '')[-2000:], res.get('module_stderr', '')[-2000:])
              for play in data['plays'] for task in play['tasks'] for top in task['hosts'].values()
              for res in [top] + top.get('results', []) if res.get('failed')]
    assert proc.returncode == 0, failed or proc.stderr[-4000:]
    return data['stats']['localhost']['changed']


def systemctl(box, *args):
    return box.sh('systemctl ' + ' '.join(args), check=False).stdout.strip()


def show(box, unit, prop):
    return systemctl(box, 'show', '-P', prop, unit)


def guest_init(box, name):
    """The guest's init PID (in the container's PID namespace), from `vserver NAME status`."""
    found = re.search(r'init pid (\d+)', box.sh('vserver %s status' % name, check=False).stdout)
    return int(found.group(1)) if found else None


def cgroup_of(box, pid):
    """A process's cgroup v2 path (the 0:: line; the kernel lists its v1 hierarchies too)."""
    lines = box.sh('cat /proc/%d/cgroup' % pid).stdout.splitlines()
    return [line[3:] for line in lines if line.startswith('0::')][0]


def wait_for(predicate, timeout, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@pytest.fixture(scope='module')
def converged(host):
    # check mode on the fresh host first: it must go through (no unit systemd does not know yet is touched)
    # and write nothing
    host.checked = playbook(host, '--check')
    host.after_check = host.sh('ls /etc/systemd/system /etc/vservers 2>&1; ls /var/lib/vservers').stdout
    first = playbook(host)
    second = playbook(host)
    return first, second


def test_check_mode_then_converge_then_idempotent(host, converged):
    first, second = converged
    assert host.checked > 0
    assert 'vserver@.service' not in host.after_check and 'vservers.service' not in host.after_check
    assert 'vserver-logs.service' not in host.after_check
    assert 'sd-a' not in host.after_check
    assert first > 0
    assert second == 0


def test_marked_guest_runs_under_its_unit_and_unmarked_does_not(host, converged):
    assert systemctl(host, 'is-enabled', 'vserver@sd-a.service') == 'enabled'
    assert systemctl(host, 'is-enabled', 'vserver@sd-b.service') == 'disabled'
    assert systemctl(host, 'is-active', 'vserver@sd-a.service') == 'active'
    assert systemctl(host, 'is-active', 'vserver@sd-b.service') == 'inactive'
    # both run (the guest role started sd-b directly: state started, not marked for boot)
    assert guest_init(host, 'sd-a') and guest_init(host, 'sd-b')


def test_guest_cgroups_live_in_the_delegated_unit(host, converged):
    state = show(host, 'vservers.service', 'ActiveState')
    assert state == 'active'
    assert show(host, 'vservers.service', 'Delegate') == 'yes'
    unit_cg = show(host, 'vservers.service', 'ControlGroup')
    assert unit_cg == '/system.slice/vservers.service'
    # systemd marked the subtree as delegated (trusted.delegate, systemd >= 251)
    assert host.sh('getfattr -n trusted.delegate --only-values %s%s 2>/dev/null || '
                   'python3 -c "import os,sys; print(os.getxattr(sys.argv[1], \'trusted.delegate\').decode())" %s%s'
                   % (CG, unit_cg, CG, unit_cg)).stdout.strip() == '1'
    for name in ('sd-a', 'sd-b'):
        pid = guest_init(host, name)
        assert cgroup_of(host, pid) == '/system.slice/vservers.service/vservers/' + name
    # its idle process sits in a leaf, so the unit's own cgroup has no process (it can hand out controllers)
    unit_dir = CG + unit_cg
    assert host.sh('cat %s/cgroup.procs' % unit_dir).stdout.strip() == ''
    assert host.sh('cat %s/hold/cgroup.procs' % unit_dir).stdout.strip()
    # stopping it would kill every guest: refused outside shutdown
    assert host.sh('systemctl stop vservers.service', check=False).returncode != 0
    assert show(host, 'vservers.service', 'ActiveState') == 'active'
    # systemd leaves the delegated subtree alone across a reload and a re-exec
    before = {name: guest_init(host, name) for name in ('sd-a', 'sd-b')}
    host.sh('systemctl daemon-reload && systemctl daemon-reexec')
    time.sleep(1)
    for name, pid in before.items():
        assert guest_init(host, name) == pid
        assert cgroup_of(host, pid) == '/system.slice/vservers.service/vservers/' + name


def test_crashed_marked_guest_is_restarted_and_a_clean_stop_is_not(host, converged):
    old = guest_init(host, 'sd-a')
    main_pid = show(host, 'vserver@sd-a.service', 'MainPID')
    host.sh('kill -KILL %d' % old)
    new = wait_for(lambda: (guest_init(host, 'sd-a') or 0) not in (0, old) and guest_init(host, 'sd-a'), 30)
    assert new and new != old, 'vserver@sd-a did not restart the guest: %s' % systemctl(
        host, 'status', '--no-pager', 'vserver@sd-a.service')
    assert show(host, 'vserver@sd-a.service', 'MainPID') != main_pid
    assert int(show(host, 'vserver@sd-a.service', 'NRestarts')) >= 1
    # an unmarked guest that dies stays dead (nothing supervises it): sd-b
    pid_b = guest_init(host, 'sd-b')
    host.sh('kill -KILL %d' % pid_b)
    time.sleep(7)
    assert not guest_init(host, 'sd-b')
    # a clean stop ends the unit without a restart
    host.sh('vserver sd-a stop')
    assert wait_for(lambda: systemctl(host, 'is-active', 'vserver@sd-a.service') == 'inactive', 15)
    time.sleep(6)
    assert not guest_init(host, 'sd-a')
    assert systemctl(host, 'is-active', 'vserver@sd-a.service') == 'inactive'


LOG_CAP = 1 << 20


def log_size(box, name):
    out = box.sh('stat -c %%s /var/log/vservers/%s 2>/dev/null || echo -1' % name, check=False).stdout.strip()
    return int(out)


def test_a_guest_started_by_hand_has_its_log_capped_by_one_host_watcher(host, converged):
    """vserver-logs.service (one vserver-supervise --logs for the whole host) caps the console log of an unmarked
    guest started by hand: 25 MiB written from inside to init's stdout (host_guest_log_max 1M) leave sd-b.log at
    or below 1 MiB within seconds. With the watcher stopped, `vserver NAME start` says the log is not watched."""
    assert systemctl(host, 'is-enabled', 'vserver-logs.service') == 'enabled'
    assert systemctl(host, 'is-active', 'vserver-logs.service') == 'active'
    assert show(host, 'vserver-logs.service', 'Restart') == 'always'
    watchers = [line for line in host.sh('ps -eo args').stdout.splitlines()
                if 'vserver-supervise' in line and '--logs' in line]
    assert len(watchers) == 1, watchers
    assert not guest_init(host, 'sd-b')  # killed above, unmarked: nothing restarted it
    proc = host.sh('vserver sd-b start', check=False)
    assert proc.returncode == 0 and 'note' not in proc.stderr, proc.stdout + proc.stderr
    try:
        # from inside the guest's namespaces (its /proc, its busybox dd) onto its init's stdout; nsenter, not
        # `vserver exec`: in this container the latter's second stage gets EPERM from pidfd_getfd
        flood = host.sh("nsenter -t %d -a /bin/sh -c 'dd if=/dev/zero bs=64k count=400 >> /proc/1/fd/1'"
                        % guest_init(host, 'sd-b'), check=False, timeout=300)
        assert flood.returncode == 0 and '400+0 records out' in flood.stderr, flood.stdout + flood.stderr
        assert wait_for(lambda: 0 <= log_size(host, 'sd-b.log') <= LOG_CAP, 30), log_size(host, 'sd-b.log')
        assert 0 < log_size(host, 'sd-b.log.1') <= LOG_CAP
        # no watcher: a start by hand says so (and the cap at start still holds)
        host.sh('systemctl stop vserver-logs.service')
        proc = host.sh('vserver sd-b restart', check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert 'no vserver-supervise watches /var/log/vservers' in proc.stderr, proc.stderr
    finally:
        host.sh('systemctl start vserver-logs.service; vserver sd-b stop', check=False)
    assert systemctl(host, 'is-active', 'vserver-logs.service') == 'active'


def test_unify_timer_and_service(host, converged):
    assert systemctl(host, 'is-enabled', 'vserver-unify.timer') == 'enabled'
    assert systemctl(host, 'is-active', 'vserver-unify.timer') == 'active'
    assert show(host, 'vserver-unify.timer', 'NextElapseUSecRealtime')
    host.sh('systemctl start vserver-unify.service')
    assert show(host, 'vserver-unify.service', 'Result') == 'success'
    a = os.stat(os.path.join(host.trees, 'sd-a', 'bin', 'busybox'))
    b = os.stat(os.path.join(host.trees, 'sd-b', 'bin', 'busybox'))
    assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def test_metrics_timer_writes_the_textfile(host, converged):
    """host_metrics_textfile_dir: vserver-metrics.timer runs `vserver metrics --textfile DIR` every 2 s; the file
    is whole (a real parser reads it) and follows the guests' states."""
    parser = pytest.importorskip('prometheus_client.parser')
    assert systemctl(host, 'is-enabled', 'vserver-metrics.timer') == 'enabled'
    assert systemctl(host, 'is-active', 'vserver-metrics.timer') == 'active'
    prom = host.path('/var/lib/prometheus/node-exporter/vserver.prom')

    def states():
        try:
            with open(prom) as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        return {s.labels['name']: s.labels['state'] for f in parser.text_string_to_metric_families(text)
                for s in f.samples if s.name == 'vserver_guest_state' and s.value == 1}
    want = {'sd-a': 'running' if guest_init(host, 'sd-a') else 'stopped',
            'sd-b': 'running' if guest_init(host, 'sd-b') else 'stopped'}
    assert wait_for(lambda: states() == want, 30), (states(), want)
    assert show(host, 'vserver-metrics.service', 'Result') == 'success'
    assert os.listdir(os.path.dirname(prom)) == ['vserver.prom']


def test_marked_guest_starts_at_boot(host, converged):
    host.poweroff()
    host.boot()
    # sd-a was stopped cleanly before the reboot but is marked: its unit starts it at boot; sd-b is not marked
    assert wait_for(lambda: guest_init(host, 'sd-a'), 30), systemctl(host, 'status', '--no-pager',
                                                                     'vserver@sd-a.service')
    assert systemctl(host, 'is-active', 'vserver@sd-a.service') == 'active'
    assert not guest_init(host, 'sd-b')
    assert systemctl(host, 'is-active', 'vserver-logs.service') == 'active'
    pid = guest_init(host, 'sd-a')
    assert cgroup_of(host, pid) == '/system.slice/vservers.service/vservers/sd-a'
    # the bridge came back too? not the role's promise at boot: the guest's address is on its own link
    out = host.sh('vserver sd-a exec ip -o addr show').stdout
    assert '198.18.77.11/24' in out


ABSENT = """
- name: Take the host setup away
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    host_install_packages: false
    host_metrics_textfile_dir: /var/lib/prometheus/node-exporter
    vserver_bridge: vstsdbr0
    vserver_bridge_addresses: [198.18.77.1/24]
    host_state: absent
  roles:
    - role: vserver.core.host
"""
UNITS = ('/etc/systemd/system/vserver@.service', '/etc/systemd/system/vservers.service',
         '/etc/systemd/system/vserver-logs.service',
         '/etc/systemd/system/multi-user.target.wants/vserver@sd-a.service',
         '/etc/systemd/system/multi-user.target.wants/vservers.service',
         '/etc/systemd/system/multi-user.target.wants/vserver-logs.service',
         '/etc/systemd/system/vserver-metrics.service', '/etc/systemd/system/vserver-metrics.timer',
         '/etc/systemd/system/timers.target.wants/vserver-metrics.timer',
         '/var/lib/prometheus/node-exporter/vserver.prom')


def exists(box, path):
    return box.sh('test -e %s' % path, check=False).returncode == 0


def test_host_role_absent_removes_units_guests_and_command(host, converged):
    """host_state absent on the systemd host: refused while guests are configured (nothing touched); with
    host_remove_guests the guests go, then vserver@.service, the guests' enablements and vservers.service
    (which refuses a manual stop), the bridge and the command; a second run changes nothing."""
    with open(host.path('/root/absent.yml'), 'w') as handle:
        handle.write(ABSENT)
    proc = host.sh('ansible-playbook -i localhost, /root/absent.yml', check=False, env=ENV, timeout=600)
    assert proc.returncode != 0 and 'sd-a' in proc.stdout and 'host_remove_guests' in proc.stdout
    assert all(exists(host, unit) for unit in UNITS)
    assert exists(host, '/usr/local/bin/vserver') and guest_init(host, 'sd-a')

    args = ('-e host_remove_guests=true -e host_purge_guest_trees=true',)
    assert playbook(host, '--check', *args, path='/root/absent.yml') > 0
    assert all(exists(host, unit) for unit in UNITS) and guest_init(host, 'sd-a')
    assert playbook(host, *args, path='/root/absent.yml') > 0
    assert [unit for unit in UNITS if exists(host, unit)] == []
    assert show(host, 'vservers.service', 'LoadState') == 'not-found'
    assert show(host, 'vserver-logs.service', 'LoadState') == 'not-found'
    assert show(host, 'vserver@sd-a.service', 'ActiveState') == 'inactive'
    assert not exists(host, CG + '/system.slice/vservers.service')
    assert not exists(host, '/usr/local/bin/vserver') and not exists(host, '/usr/local/lib/vserver-core')
    assert not exists(host, '/etc/default/vserver') and not exists(host, '/etc/vservers')
    # purged guests' logs (sd-b.log.1 too) and the watchers' lock files: the log directory is gone
    assert not exists(host, '/var/log/vservers'), host.sh('ls -A /var/log/vservers', check=False).stdout
    assert host.sh('ip link show vstsdbr0', check=False).returncode != 0
    assert host.sh('ls -A /var/lib/vservers').stdout.strip() == ''  # purged (the directory is a bind mount: kept)
    assert playbook(host, *args, path='/root/absent.yml') == 0


def test_demo_clean_on_a_systemd_host(host, converged):
    """Demo guests on the now bare systemd host, then demo-clean: the delegated unit the runtime installed for them
    goes too, with the guests, logs, index and directories; the command (installed again by demo.yml) stays."""
    demo = '%s/playbooks/demo.yml' % TOP
    # two of the demo's guests, started and unified as the demo does (its limits task is left out: this machine's
    # cgroup v2 hierarchy, the container's view, carries no controllers; see systemd_container.py)
    env = dict(ENV, ANSIBLE_STDOUT_CALLBACK='minimal')
    for name, xid in (('demo-web', 101), ('demo-dns', 103)):
        args = json.dumps({'name': name, 'xid': xid, 'state': 'started', 'template': 'busybox', 'stop_timeout': 2})
        proc = host.sh("ansible localhost -i localhost, -c local -m vserver.core.context -a '%s'" % args, check=False,
                       env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    args = json.dumps({'guests': ['demo-web', 'demo-dns'], 'method': 'hardlink'})
    proc = host.sh("ansible localhost -i localhost, -c local -m vserver.core.unify -a '%s'" % args, check=False,
                   env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert exists(host, '/etc/systemd/system/vservers.service') and exists(host, '/etc/vservers/.unify-index')
    assert playbook(host, '-c local -e demo_state=absent', path=demo) > 0
    assert not exists(host, '/etc/systemd/system/vservers.service')
    assert show(host, 'vservers.service', 'LoadState') == 'not-found'
    for path in ('/etc/vservers', '/var/log/vservers', '/run/vservers', CG + '/system.slice/vservers.service'):
        assert not exists(host, path), path
    assert host.sh('ls -A /var/lib/vservers').stdout.strip() == ''
    assert exists(host, '/usr/local/bin/vserver')
    assert playbook(host, '-c local -e demo_state=absent', path=demo) == 0


@pytest.fixture(scope='module')
def bare_host(tmp_path_factory):
    """A second systemd host where no role ran: only the collection's modules."""
    yield from booted(tmp_path_factory, 'systemd-bare')


def test_modules_alone_install_and_start_the_delegated_unit(bare_host):
    """Without the host role the runtime itself installs vservers.service on the first start and puts the guest's
    cgroup below it: a systemd host is never left with guests in cgroups systemd did not delegate."""
    box = bare_host
    assert systemctl(box, 'is-active', 'vservers.service') == 'inactive'
    args = json.dumps({'name': 'sd-raw', 'xid': 4109, 'state': 'started', 'stop_timeout': 2})
    env = dict(ENV, ANSIBLE_STDOUT_CALLBACK='minimal')
    proc = box.sh("ansible localhost -i localhost, -c local -m vserver.core.context -a '%s'" % args, check=False,
                  env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Delegate=yes' in box.sh('cat /etc/systemd/system/vservers.service').stdout
    assert systemctl(box, 'is-enabled', 'vservers.service') == 'enabled'
    assert show(box, 'vservers.service', 'ControlGroup') == '/system.slice/vservers.service'
    # no host role, so no installed command: the checkout's own
    out = box.sh('/usr/bin/python3 %s/bin/vserver sd-raw status' % TOP, check=False).stdout
    pid = int(re.search(r'init pid (\d+)', out).group(1))
    assert cgroup_of(box, pid) == '/system.slice/vservers.service/vservers/sd-raw'
    xattr = box.sh('python3 -c "import os; print(os.getxattr(\'%s/system.slice/vservers.service\', '
                   '\'trusted.delegate\').decode())"' % CG).stdout.strip()
    assert xattr == '1'
