"""Offline stand-in for the get-pip.py script that ``ansible-test --venv`` bootstraps pip with.

ansible-test (2.19) creates each of its virtual environments ``--without-pip`` and then runs
``python get-pip.py --disable-pip-version-check pip==X.Y --no-setuptools --no-wheel``, taking the
script from ``~/.ansible/test/cache/get_pip_X_Y.py`` when that file exists and downloading it from
a CI file host otherwise. That host is not reachable from every machine, so this file stands in
for the downloaded script:

* run as a script (by ansible-test): ``python -m ensurepip`` into the running interpreter, then
  ``python -m pip install`` of the arguments it was given (the pinned pip), with
  ``PIP_CONFIG_FILE`` removed from the environment: ensurepip points it at /dev/null, and the
  index settings of this machine live in pip's configuration;
* ``get_pip_standin.py --install``: copy itself to the cache file name the installed
  ansible-test looks for (the pip version is read from ansible-test's own source).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

# get-pip.py options that have no pip-install counterpart.
_GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')


def _clean_env():
    env = dict(os.environ)
    env.pop('PIP_CONFIG_FILE', None)
    return env


def bootstrap(args):
    """Install pip into sys.executable's environment, then install ``args`` with it."""
    env = _clean_env()
    subprocess.run([sys.executable, '-m', 'ensurepip', '--default-pip'], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    pip_args = [a for a in args if a not in _GET_PIP_ONLY]
    packages = [a for a in pip_args if not a.startswith('-')]
    if packages:
        res = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet'] + pip_args, env=env, check=False)
        if res.returncode != 0:
            # no index reachable: carry on with the pip ensurepip bundles rather than fail the whole run
            sys.stderr.write('get_pip_standin: could not install %s; keeping the pip from ensurepip\n'
                             % ' '.join(packages))
    return 0


def cache_path():
    """Return the cache file ansible-test's pip bootstrap looks for."""
    import ansible_test  # pylint: disable=import-outside-toplevel

    source = os.path.join(os.path.dirname(ansible_test.__file__), '_internal', 'python_requirements.py')
    with open(source, encoding='utf-8') as f:
        match = re.search(r"default_packages\s*=\s*dict\(\s*pip='([0-9.]+)'", f.read())
    if not match:
        raise SystemExit('get_pip_standin: cannot find the pip version ansible-test pins in %s' % source)
    version = match.group(1)
    return os.path.expanduser('~/.ansible/test/cache/get_pip_%s.py' % version.replace('.', '_'))


def install():
    """Copy this script to ansible-test's cache unless an identical copy is there."""
    target = cache_path()
    with open(__file__, 'rb') as f:
        mine = f.read()
    if os.path.exists(target):
        with open(target, 'rb') as f:
            if f.read() == mine:
                return 0
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + '.tmp'
    shutil.copyfile(__file__, tmp)
    os.replace(tmp, target)
    print('get_pip_standin: installed %s' % target)
    return 0


if __name__ == '__main__':
    if sys.argv[1:] == ['--install']:
        sys.exit(install())
    sys.exit(bootstrap(sys.argv[1:]))
