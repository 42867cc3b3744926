"""Import of util-vserver guests (vserver.core.util_vserver_import): legacy config trees built here after
util-vserver's documented layout (doc/configuration.xml, the "flower page"), imported, started and looked at from
inside and from the cgroup files; bad legacy input refused naming the file with nothing written; a re-import
changes nothing; the clash of both config stores in /etc/vservers."""
import os
import secrets
import shutil
import subprocess

import pytest

from ansible_collections.vserver.core.plugins.module_utils import (
    _caps, _cgroup, _config, _mgr_import, _runtime, _runtime_views, _unify_index)
from ansible_collections.vserver.core.plugins.module_utils._common import Paths, VServerError

from helpers import guest_sh

pytestmark = pytest.mark.cgroup
LAYOUT = _cgroup.detect()
NET4 = '198.19.190'
NET6 = 'fd00:19:190::'


def _write(base, rel, text):
    path = os.path.join(str(base), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)


def _legacy_guest(legacy, trees, busybox_tree, dirname, files, vdir=True):
    """A util-vserver guest directory with ``files`` (relative path -> content) and a busybox tree."""
    root = os.path.join(str(trees), dirname)
    shutil.copytree(busybox_tree, root, symlinks=True)
    for rel, text in files.items():
        _write(os.path.join(str(legacy), dirname), rel, text)
    if vdir:
        os.symlink(root, os.path.join(str(legacy), dirname, 'vdir'))
    return root


WEB = {
    'context': '1901\n', 'name': 'Web Server\n',
    'uts/nodename': 'www.uni.example\n', 'uts/domainname': 'uni.example\n', 'uts/machine': 'i686\n',
    'interfaces/prefix': '24\n',
    'interfaces/00/ip': NET4 + '.2\n', 'interfaces/00/dev': 'eth0\n', 'interfaces/00/name': 'web\n',
    'interfaces/01/ip': NET6 + '2\n', 'interfaces/01/prefix': '64\n', 'interfaces/01/nodev': '',
    'interfaces/02/ip': NET4 + '.99\n', 'interfaces/02/disabled': '',
    'bcapabilities': '# web needs raw sockets\nCAP_NET_RAW\n\n!CAP_CHOWN\nCAP_QUOTACTL\n',
    'ccapabilities': 'raw_icmp\nset_utsname\n', 'flags': 'virt_uptime\nhide_netif\nfrobnicate\n',
    'rlimits/nproc': '64\n', 'rlimits/rss.hard': '32768\n', 'rlimits/rss.soft': '16384\n',
    'rlimits/rss.min': '1000\n', 'rlimits/nofile.soft': '512\n', 'rlimits/nofile.hard': '1024\n',
    'rlimits/as': 'inf\n', 'rlimits/anon': '10000\n',
    'sched/fill-rate': '1\n', 'sched/interval': '4\n', 'sched/tokens-max': '500\n', 'sched/priority-bias': '3\n',
    'cpuset/cpus': '0\n', 'cpuset/name': 'web\n', 'cpuset/mems': '0\n',
    'cgroup/cpu.shares': '512\n', 'cgroup/name': 'web\n', 'cgroup/blkio.weight': '300\n',
    'dlimits/0/directory': '/vservers/web\n', 'dlimits/0/space_total': '1048576\n',
    'dlimits/0/inodes_total': '100000\n', 'dlimits/0/reserved': '5\n',
    'apps/init/style': 'plain\n', 'apps/init/mark': 'default\n', 'apps/init/depends': 'vs19-dns\n',
    'apps/vunify/exclude': '/etc\n/var\n~/root\n+/usr/share/doc\n', 'personality': 'linux_32bit\n',
    'fstab': 'none /proc proc defaults 0 0\n', 'scripts/pre-start': '#!/bin/sh\n',
}
DNS = {  # no context file: a dynamic context
    'uts/nodename': 'ns1\n', 'interfaces/0/ip': NET4 + '.3\n', 'interfaces/0/mask': '255.255.255.0\n',
    'apps/init/mark': 'nightly\n', 'apps/init/cmd.start': '/sbin/init\n', 'apps/vunify/exclude': '/etc\n/var\n',
}
MAIL = {'context': '1903\n', 'uts/nodename': 'mail\n', 'cgroup/memory.limit_in_bytes': '100663296\n',
        'cgroup/memory.memsw.limit_in_bytes': '134217728\n', 'cgroup/pids.max': '100\n'}


@pytest.fixture
def legacy(tmp_path, busybox_tree):
    """/etc/vservers as util-vserver leaves it: three guests, two of them unified (a shared immutable file)."""
    legacy = tmp_path / 'etc-vservers'
    trees = tmp_path / 'vservers'
    os.makedirs(str(legacy / '.defaults'))
    os.makedirs(str(trees))
    web = _legacy_guest(legacy, trees, busybox_tree, 'vs19-web', WEB)
    dns = _legacy_guest(legacy, trees, busybox_tree, 'vs19-dns', DNS)
    _legacy_guest(legacy, trees, busybox_tree, 'VS19-Mail', MAIL)
    # vhashify's work: one file shared by web and dns, immutable
    _write(web, 'usr/lib/shared.txt', 'unified by vhashify\n')
    os.makedirs(os.path.join(dns, 'usr/lib'), exist_ok=True)
    os.link(os.path.join(web, 'usr/lib/shared.txt'), os.path.join(dns, 'usr/lib/shared.txt'))
    subprocess.run(['chattr', '+i', os.path.join(web, 'usr/lib/shared.txt')], check=True)
    yield {'dir': str(legacy), 'trees': str(trees), 'web': web, 'dns': dns}
    subprocess.run(['chattr', '-R', '-i', str(trees)], capture_output=True, check=False)


@pytest.fixture
def bridge():
    name = 'vs19br' + secrets.token_hex(3)
    yield name
    subprocess.run(['ip', 'link', 'del', name], capture_output=True, check=False)


def _import(paths, legacy, check_mode=False, **params):
    params.setdefault('legacy_dir', legacy['dir'])
    return _mgr_import.ensure(paths, None, params, check_mode).to_dict()


def _files(res, guest, key):
    return {item['file']: item for item in res['guests'][guest][key]}


def _snapshot(paths):
    if not os.path.isdir(paths.config_dir):
        return []
    return sorted(os.listdir(paths.config_dir))


def test_import_start_and_look_inside(host_paths, legacy, bridge):
    plan = _import(host_paths, legacy, check_mode=True, state='started', bridge=bridge)
    assert plan['changed'] and _snapshot(host_paths) in ([], ['.lock'])   # check mode: the plan, nothing written
    assert set(plan['guests']) == {'vs19-web', 'vs19-dns', 'vs19-mail'}
    res = _import(host_paths, legacy, state='started', bridge=bridge)
    assert res["changed"]
    web = res['guests']['vs19-web']
    assert res['guests']['vs19-mail']['renamed_from'] == 'VS19-Mail'
    # the report: every setting mapped or said why not
    mapped, unmapped = _files(res, 'vs19-web', 'mapped'), _files(res, 'vs19-web', 'unmapped')
    assert mapped['context']['to'] == 'xid' and mapped['sched']['to'].startswith('limits.cpu')
    assert 'unified' in unmapped['dlimits/0']['reason']
    assert unmapped['rlimits/as']['reason'] and unmapped['rlimits/anon']['reason'] and unmapped['personality']
    assert 'depends' in ' '.join(unmapped) and 'fstab' in unmapped and 'scripts' in unmapped
    flags = [u for u in web['unmapped'] if u['file'] == 'flags']
    assert {f['value'] for f in flags} == {'virt_uptime', 'hide_netif', 'frobnicate'}
    assert [f['reason'] for f in flags if f['value'] == 'frobnicate'] == ['unknown flag: ignored']
    assert 'dynamic' in _files(res, 'vs19-dns', 'unmapped')['context']['reason']
    docs = {n: _config.load(host_paths, n) for n in ('vs19-web', 'vs19-dns', 'vs19-mail')}
    assert docs['vs19-web']['xid'] == 1901 and docs['vs19-mail']['xid'] == 1903
    assert docs['vs19-dns']['xid'] not in (1901, 1903)
    assert docs['vs19-web']['root'] == legacy['web']                       # the tree stays in place
    assert os.path.exists(host_paths.autostart_mark('vs19-web'))
    assert not os.path.exists(host_paths.autostart_mark('vs19-dns'))      # mark nightly: not started at boot
    _check_inside(host_paths, docs)
    _check_cgroups(host_paths)
    # the shared immutable file is still one inode, immutable, and in our unification index
    shared = [os.path.join(legacy[g], 'usr/lib/shared.txt') for g in ('web', 'dns')]
    st = [os.stat(p) for p in shared]
    assert st[0].st_ino == st[1].st_ino and st[0].st_nlink >= 2
    assert 'i' in subprocess.run(['lsattr', shared[0]], capture_output=True, text=True, check=True).stdout.split()[0]
    index = _unify_index.Index(os.path.join(host_paths.config_dir, _unify_index.INDEX_NAME))
    index.load([st[0].st_dev])
    assert (st[0].st_dev, st[0].st_ino) in index.rows
    # idempotent: a second import changes nothing, restarts nothing
    pid = _runtime.Runtime(host_paths, 'vs19-web').state() and _init_pid(host_paths, 'vs19-web')
    again = _import(host_paths, legacy, state='started', bridge=bridge)
    assert again['changed'] is False, again['actions']
    assert _init_pid(host_paths, 'vs19-web') == pid


def _init_pid(paths, name):
    return [p['pid'] for p in _runtime_views.processes(paths) if p['guest'] == name and p['comm'] == 'init'][0]


def _check_inside(paths, docs):
    labels = {p['guest']: p['xid'] for p in _runtime_views.processes(paths) if p['guest']}
    assert labels == {n: d['xid'] for n, d in docs.items()}                 # every guest's processes carry its xid
    out = guest_sh(paths, 'vs19-web', 'hostname; cat /proc/sys/kernel/domainname; ip -o addr; '
                                      'grep CapBnd /proc/self/status; grep "open files" /proc/self/limits')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == 'www.uni.example' and lines[1] == 'uni.example'
    assert NET4 + '.2/24' in out.stdout and NET6 + '2/64' in out.stdout and NET4 + '.99' not in out.stdout
    bnd = int([line for line in lines if line.startswith('CapBnd')][0].split()[1], 16)
    assert bnd & (1 << _caps.CAP_BITS['net_raw']) and not bnd & (1 << _caps.CAP_BITS['chown'])
    assert not bnd & (1 << _caps.CAP_BITS['sys_admin'])
    assert lines[-1].split()[3:5] == ['512', '1024']
    dns = guest_sh(paths, 'vs19-dns', 'hostname; ip -o addr')
    assert dns.stdout.splitlines()[0] == 'ns1' and NET4 + '.3/24' in dns.stdout
    ping = guest_sh(paths, 'vs19-web', 'ping -c 1 -W 2 %s.3' % NET4)          # both on the import's bridge
    assert ping.returncode == 0, ping.stdout + ping.stderr


def _check_cgroups(paths):
    web = _runtime.Runtime(paths, 'vs19-web', LAYOUT).group
    mail = _runtime.Runtime(paths, 'vs19-mail', LAYOUT).group
    assert web.read('pids.max') == '64' and mail.read('pids.max') == '100'
    if LAYOUT.version == 2:
        assert web.read('memory.max') == str(32768 * os.sysconf('SC_PAGE_SIZE'))
        assert web.read('cpu.max').split() == ['25000', '100000']
        assert mail.read('memory.max') == '100663296' and mail.read('memory.swap.max') == str(32 << 20)
    else:
        assert web.read('memory.limit_in_bytes') == str(32768 * os.sysconf('SC_PAGE_SIZE'))
        assert web.read('cpu.cfs_quota_us') == '25000' and web.read('cpu.cfs_period_us') == '100000'
        assert mail.read('memory.limit_in_bytes') == '100663296'
    assert web.read('cpuset.cpus') == '0'


BAD = [
    ('garbage in a limit file', 'vs19-web', 'rlimits/nproc', 'lots\n', 'rlimits/nproc: expected a limit'),
    ('an interface without an address', 'vs19-web', 'interfaces/05/dev', 'eth0\n', 'interfaces/05/ip: missing'),
    ('a duplicate xid', 'VS19-Mail', 'context', '1901\n', 'also the context of'),
    ('an empty context', 'vs19-dns', 'context', '\n', 'context: expected the static context id'),
    ('an unknown rlimit', 'vs19-dns', 'rlimits/bogus', '5\n', 'rlimits/bogus: unknown resource'),
    ('half a token bucket', 'vs19-dns', 'sched/fill-rate', '1\n', 'sched/interval: missing'),
    ('a token bucket too small for CFS', 'vs19-web', 'sched/interval', '1000\n', 'CPU share is too small'),
]


@pytest.mark.parametrize('what,guest,rel,text,message', BAD, ids=[b[0] for b in BAD])
def test_bad_legacy_input_names_the_file_and_writes_nothing(host_paths, legacy, what, guest, rel, text, message):
    _write(os.path.join(legacy['dir'], guest), rel, text)
    before = _snapshot(host_paths)
    with pytest.raises(VServerError) as info:
        _import(host_paths, legacy, state='started')
    assert os.path.join(legacy['dir'], guest) in str(info.value) and message in str(info.value), str(info.value)
    assert _snapshot(host_paths) == before or _snapshot(host_paths) == ['.lock']
    assert not os.path.isdir(host_paths.run_dir) or not os.listdir(host_paths.run_dir)


def test_missing_guest_directory_is_refused(host_paths, legacy):
    with pytest.raises(VServerError, match='no util-vserver guest directory .*vs19-nope'):
        _import(host_paths, legacy, guests=['vs19-nope'])
    assert _config.names(host_paths) == []


def test_clash_in_etc_vservers(tmp_path, legacy):
    """Our store pointed at util-vserver's directory: refused, naming both ways out; with move_legacy their tree
    moves aside first and the import reads it there; a re-run changes nothing."""
    shared = legacy['dir']
    paths = Paths(config_dir=shared, run_dir=str(tmp_path / 'run'), tree_dir=str(tmp_path / 'trees'),
                  log_dir=str(tmp_path / 'log'), cgroup_parent='vstest-vs19' + secrets.token_hex(3))
    with pytest.raises(VServerError, match='util-vserver.s configuration directory') as info:
        _mgr_import.ensure(paths, None, {'legacy_dir': shared, 'guests': ['VS19-Mail']})
    assert info.value.field == 'config_dir'
    assert not [f for f in os.listdir(shared) if f.endswith('.json')]
    res = _mgr_import.ensure(paths, None, {'legacy_dir': shared, 'guests': ['VS19-Mail'], 'move_legacy': True})
    moved = shared + '.util-vserver'
    assert res.extra['moved_to'] == moved and os.path.isdir(os.path.join(moved, 'VS19-Mail'))
    assert sorted(f for f in os.listdir(shared) if not f.startswith('.')) == ['vs19-mail.json']
    assert _config.load(paths, 'vs19-mail')['xid'] == 1903
    again = _mgr_import.ensure(paths, None, {'legacy_dir': shared, 'guests': ['VS19-Mail'], 'move_legacy': True})
    assert again.changed is False, again.actions
    shutil.rmtree(moved)


@pytest.mark.slow
def test_playbook_plan_import_rerun(host_paths, legacy, tmp_path):
    """playbooks/import_util_vserver.yml: the plan writes nothing, the import writes, a re-run changes nothing;
    every key the module returns is documented in its RETURN."""
    import sys
    from ansible_helpers import path_vars, run_playbook, task_results
    from helpers import TOP
    sys.path.insert(0, os.path.join(TOP, 'tests', 'tools'))
    import return_docs
    book = os.path.join(TOP, 'playbooks', 'import_util_vserver.yml')
    extra = {('vserver_' + k): v for k, v in path_vars(host_paths).items()}
    extra.update(vserver_hosts_pattern='localhost', import_legacy_dir=legacy['dir'], import_guests=['VS19-Mail'],
                 ansible_python_interpreter='/usr/bin/python3')
    rc, data = run_playbook(book, dict(extra, import_apply=False))
    assert rc == 0 and _config.names(host_paths) == [], data
    rc, data = run_playbook(book, dict(extra, import_apply=True))
    results = dict(task_results(data))
    assert rc == 0 and results['Import the guests']['changed'], results
    assert _runtime.Runtime(host_paths, 'vs19-mail').state() == 'running'
    doc = return_docs.return_doc('util_vserver_import')
    assert return_docs.undocumented(results['Import the guests'], doc) == []
    assert return_docs.missing_always(results['Import the guests'], doc) == []
    rc, data = run_playbook(book, dict(extra, import_apply=True))
    assert rc == 0 and dict(task_results(data))['Import the guests']['changed'] is False


def test_half_way_failure_removes_what_the_run_created(host_paths, legacy, make_guest, bridge):
    """dns's address is an existing guest's: the import fails at dns (after mail was written); mail and dns are
    removed again, the existing guest and every legacy tree are untouched."""
    from ansible_collections.vserver.core.plugins.module_utils import _mgr_address
    make_guest('vs19-other', xid=1950)
    _mgr_address.ensure(host_paths, 'vs19-other', {'addresses': [NET4 + '.3/24'], 'bridge': bridge})
    before = open(host_paths.config_file('vs19-other')).read()
    with pytest.raises(VServerError, match=NET4 + r'\.3'):
        _import(host_paths, legacy, bridge=bridge)
    assert _config.names(host_paths) == ['vs19-other']
    assert open(host_paths.config_file('vs19-other')).read() == before
    assert os.path.isfile(os.path.join(legacy['dns'], 'bin', 'busybox'))
