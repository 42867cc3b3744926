# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Runs on the host (python3 -c): one read-only look at everything the host role manages, as JSON, so an
# idempotent re-run costs one task instead of one per item. Standard library only.
import hashlib
import json
import os
import stat
import subprocess
import sys

want = json.loads(sys.argv[1])
out = {'systemd': os.path.isdir('/run/systemd/system')}
proc = subprocess.run(['dpkg-query', '-W', '-f=${Package} ${db:Status-Status}\n'] + want['packages'],
                      capture_output=True, text=True, check=False)
installed = {l.split()[0] for l in proc.stdout.splitlines() if l.endswith(' installed')}
out['missing_packages'] = [p for p in want['packages'] if p not in installed]
out['dirs_bad'] = []
for item in want['dirs']:
    try:
        st = os.stat(item['path'])
        ok = stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == int(item['mode'], 8) and st.st_uid == 0
    except OSError:
        ok = False
    if not ok:
        out['dirs_bad'].append(item['path'])
try:
    with open(want['env_file']) as handle:
        out['env_content'] = handle.read()
except OSError:
    out['env_content'] = None
try:
    with open(want['bundle'], 'rb') as handle:
        out['bundle_sha1'] = hashlib.sha1(handle.read()).hexdigest()
except OSError:
    out['bundle_sha1'] = None
out['installed_ok'] = all(os.path.exists(p) for p in want['installed'])
out['links_bad'] = [l['dest'] for l in want['links']
                    if not os.path.islink(l['dest']) or os.readlink(l['dest']) != l['src']]
bridge = {'exists': False, 'up': False, 'addrs': []}
if want.get('bridge'):
    proc = subprocess.run(['ip', '-j', 'addr', 'show', 'dev', want['bridge']], capture_output=True, text=True,
                          check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        info = json.loads(proc.stdout)[0]
        bridge = {'exists': True, 'up': 'UP' in info.get('flags', []),
                  'addrs': ['%s/%s' % (a['local'], a['prefixlen']) for a in info.get('addr_info', [])]}
out['bridge'] = bridge
print(json.dumps(out))
