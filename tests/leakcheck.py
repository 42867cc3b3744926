"""End-of-suite leak check: no test cgroup, netns, mount, veth or guest process may be left behind."""
import os
import subprocess
import sys

PREFIXES = ('vstest-',)
problems = []
for root, dirs, _ in os.walk('/sys/fs/cgroup'):
    depth = root.count('/') - '/sys/fs/cgroup'.count('/')
    if depth > 2:
        dirs[:] = []
        continue
    for d in dirs:
        if d.startswith(PREFIXES):
            problems.append('cgroup %s' % os.path.join(root, d))
with open('/proc/self/mountinfo') as handle:
    for line in handle:
        mountpoint = line.split()[4]
        if '/pytest-of-' in mountpoint or 'vstest' in mountpoint:
            problems.append('mount %s' % mountpoint)
netns = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True, check=False).stdout.split()
problems += ['netns %s' % n for n in netns if n.startswith(('vst', 'vs-t'))]
links = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True, check=False).stdout
problems += ['link %s' % l.split(':')[1].strip() for l in links.splitlines() if ': vst' in l]
if problems:
    print('LEAKS:\n  ' + '\n  '.join(problems))
    sys.exit(1)
print('leak check: clean')
