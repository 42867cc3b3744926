# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# Runs on the migration target: its guests' names, xids and addresses, and the free space for trees (stdlib only).
import json
import os
import sys
config_dir, tree_dir = sys.argv[1], sys.argv[2]
guests = {}
try:
    entries = os.listdir(config_dir)
except FileNotFoundError:
    entries = []
for entry in entries:
    if entry.endswith('.json') and not entry.startswith('.'):
        try:
            with open(os.path.join(config_dir, entry)) as handle:
                doc = json.load(handle)
        except (OSError, ValueError):
            continue
        guests[entry[:-5]] = {'xid': doc.get('xid'), 'addresses': (doc.get('network') or {}).get('addresses') or []}
probe = tree_dir
while not os.path.exists(probe):
    probe = os.path.dirname(probe)
st = os.statvfs(probe)
roots = {}
if os.path.isdir(tree_dir):
    roots = {name: True for name in os.listdir(tree_dir)}
print(json.dumps({'guests': guests, 'free_bytes': st.f_bavail * st.f_frsize, 'root_exists': roots}))
