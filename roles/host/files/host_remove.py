# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Runs on the host (python3 -c) for host_state=absent: the parts of the removal no builtin module does, one phase per
# call, as JSON {"changed", "actions", "kept", ...}. "probe" only reads. With "check": true nothing is changed and
# the result says what a real run would do. Standard library only.
#   probe       the configured guests, the guests' enabled boot units, the running vserver-supervise, the units
#   supervisor  stop the vserver-supervise that --daemon started (its pid file in RUN_DIR), by pid, never by name
#   bridge      delete the guest bridge, only while no link is attached to it
#   cgroup      remove the guests' cgroup parent in every mounted hierarchy, each level only when empty
#   dirs        remove the state directories (and the command's prefix) that hold nothing but bookkeeping
import errno
import json
import os
import signal
import subprocess
import sys
import time

# files the runtime keeps for itself; a directory holding only these (and empty autostart/) counts as empty
BOOKKEEPING = {'.lock', '.unify-index', '.unify-index-journal', '.unify-index-wal', '.unify-index-shm',
               '.supervise.pid', 'supervise.log', 'autostart', '.cap.lock', '.watch.lock'}
UNITS = '/etc/systemd/system'

req = json.loads(sys.argv[1])
check = bool(req.get('check'))
out = {'changed': False, 'actions': [], 'kept': []}


def act(what, func, *args):
    out['changed'] = True
    out['actions'].append(what)
    if not check:
        func(*args)


def guests():
    try:
        return sorted(n[:-5] for n in os.listdir(req['config_dir']) if n.endswith('.json') and not n.startswith('.'))
    except OSError:
        return []


def supervisor_pid():
    """The pid in RUN_DIR/.supervise.pid while that process is vserver-supervise (a stale file names no one)."""
    try:
        with open(os.path.join(req['run_dir'], '.supervise.pid')) as handle:
            pid = int(handle.read().strip() or 0)
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            argv = handle.read().split(b'\0')
    except (OSError, ValueError):
        return None
    ours = any(a.endswith(b'vserver-supervise') for a in argv) and b'--daemon' in argv
    return pid if ours and alive(pid) else None


def alive(pid):
    """Running (a zombie has exited: on hosts whose PID 1 never reaps, it stays one)."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def stop_supervisor(pid):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        raise SystemExit('vserver-supervise (pid %d) did not exit within 60 s of SIGTERM' % pid)
    try:
        os.unlink(os.path.join(req['run_dir'], '.supervise.pid'))
    except FileNotFoundError:
        pass


def ip_json(*args):
    proc = subprocess.run(['ip', '-j'] + list(args), capture_output=True, text=True, check=False, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []


def bridge():
    name = req['bridge']
    info = ip_json('-d', 'link', 'show', 'dev', name) if name else []
    if not info:
        return
    if info[0].get('linkinfo', {}).get('info_kind') != 'bridge':
        out['kept'].append('%s is not a bridge: left alone' % name)
        return
    ports = [link['ifname'] for link in ip_json('link', 'show', 'master', name)]
    if ports:
        out['kept'].append('bridge %s kept: links attached (%s)' % (name, ', '.join(ports)))
        return
    act('delete bridge %s' % name, run, ['ip', 'link', 'del', 'dev', name])


def run(argv):
    subprocess.run(argv, check=True, timeout=60)


def cgroup_roots():
    roots = []
    with open('/proc/self/mountinfo') as handle:
        for line in handle:
            fields = line.split()
            fstype = fields[fields.index('-') + 1]
            if fstype in ('cgroup', 'cgroup2') and fields[4] not in roots:
                roots.append(fields[4])
    return roots


def cgroup():
    parts = req['cgroup_parent'].split('/')
    for root in cgroup_roots():
        for depth in range(len(parts), 0, -1):
            path = os.path.join(root, *parts[:depth])
            if not os.path.isdir(path):
                continue
            if any(e.is_dir(follow_symlinks=False) for e in os.scandir(path)):
                out['kept'].append('cgroup %s kept: it has child cgroups' % path)
                break
            act('remove cgroup %s' % path, rmdir_cgroup, path)


def rmdir_cgroup(path):
    for dummy in range(50):  # a just-removed child can keep the parent busy for a moment
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    os.rmdir(path)


def only_bookkeeping(path):
    for entry in os.scandir(path):
        if entry.name not in BOOKKEEPING:
            return False
        if entry.is_dir(follow_symlinks=False) and (entry.name != 'autostart' or os.listdir(entry.path)):
            return False
    return True


def remove_dir(path):
    autostart = os.path.join(path, 'autostart')
    if os.path.isdir(autostart) and not os.path.islink(autostart):
        os.rmdir(autostart)
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def dirs():
    for path in req['dirs']:
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        if os.path.ismount(path):
            out['kept'].append('%s kept: it is a mount point' % path)
        elif only_bookkeeping(path):
            act('remove directory %s' % path, remove_dir, path)
        else:
            out['kept'].append('%s kept: it holds %s' % (path, ', '.join(sorted(os.listdir(path))[:5])))
    # the command's prefix, innermost first: only when empty (in check mode: once what the run removes is gone)
    gone = set(req.get('removed', [])) if check else set()
    for path in req.get('empty_dirs', []):
        if os.path.isdir(path) and not os.path.islink(path) and \
                all(os.path.join(path, name) in gone for name in os.listdir(path)):
            act('remove directory %s' % path, os.rmdir, path)
            gone.add(path)


def probe():
    out['guests'] = guests()
    try:  # runtime state of guests (also one whose config is gone)
        out['running'] = sorted(n for n in os.listdir(req['run_dir']) if not n.startswith('.'))
    except OSError:
        out['running'] = []
    out['systemd'] = os.path.isdir('/run/systemd/system')
    out['links_ours'] = [link['dest'] for link in req.get('links', [])
                         if os.path.islink(link['dest']) and os.readlink(link['dest']) == link['src']]
    out['supervisor'] = supervisor_pid()
    try:
        wants = [os.path.join(UNITS, d) for d in os.listdir(UNITS) if d.endswith('.wants')]
        out['guest_units'] = sorted({n for d in wants for n in os.listdir(d)
                                     if n.startswith('vserver@') and n != 'vserver@.service'})
    except OSError:
        out['guest_units'] = []


phase = req['phase']
if phase == 'probe':
    probe()
elif phase == 'supervisor':
    pid = supervisor_pid()
    if pid:
        act('stop vserver-supervise (pid %d)' % pid, stop_supervisor, pid)
else:
    {'bridge': bridge, 'cgroup': cgroup, 'dirs': dirs}[phase]()
print(json.dumps(out))
