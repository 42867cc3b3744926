# Copyright: (c) 2026, vserver.core contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: vserver
short_description: Run tasks inside a vserver.core guest, on this host or on a host reached over ssh
description:
  - Runs every command inside a running guest through the guest's host's C(vserver NAME exec), the collection's one
    entry path (the guest's namespaces, cgroups, bounding set, syscall filter and credentials, nothing of the
    admin's process visible inside). The guest needs no sshd, no agent and no port of its own.
  - The guest's host is the controller itself (no ssh; the default when O(vserver_host) and O(ssh_host) are empty or
    C(localhost)) or a host reached with OpenSSH (one connection per host kept open with ControlPersist), where the
    C(vserver) command runs as root (the host role installs it, see C(host_cli_bindir)).
  - Files are copied and fetched by streaming them through a process inside the guest (C(cat) on its stdin or
    stdout); paths resolve inside the guest, with its credentials, so a symlink the guest planted leads nowhere
    outside it. Nothing is written into or read from the guest's tree by the host.
  - Modules need Python in the guest (C(/usr/bin/python3) unless C(ansible_python_interpreter) says otherwise); a guest
    without it (a busybox guest) takes the C(raw) module, and a module run there fails saying so.
  - With O(remote_user) other than root, commands run as that user through the guest's C(runuser) (util-linux).
    C(become) works with the guest's su or sudo; su from root asks no password; a become password goes on stdin
    (sudo's C(-S)), never through a terminal.
version_added: 0.1.0
author:
  - vserver.core contributors (@vserver-core)
extends_documentation_fragment:
  - connection_pipelining
notes:
  - Guests, their hosts and these variables can come from the P(vserver.core.vserver#inventory) inventory plugin
    (C(plugin=vserver.core.vserver) in a C(*.vserver.yml) file), which sets all of them.
  - Errors name the guest and its host - an unknown guest, a stopped or frozen one, a host unreachable over ssh,
    no C(vserver) command on the host, no Python in the guest.
options:
  remote_addr:
    description: The guest's name on its host.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_vserver_guest
  remote_user:
    description:
      - The user inside the guest who runs the commands. Root (the default) runs them as the guest's own root;
        another user through C(runuser -u USER) inside the guest.
    type: str
    vars:
      - name: ansible_user
      - name: ansible_vserver_user
    env:
      - name: ANSIBLE_REMOTE_USER
    ini:
      - section: defaults
        key: remote_user
    keyword:
      - name: remote_user
  vserver_host:
    description:
      - The inventory name of the guest's host, used in messages and as the ssh address when O(ssh_host) is not set.
        Empty or C(localhost) - the guest runs on the controller.
    type: str
    default: ''
    vars:
      - name: ansible_vserver_host
    env:
      - name: ANSIBLE_VSERVER_HOST
  ssh_host:
    description: The address ssh connects to for the guest's host (default O(vserver_host)); C(localhost) means no ssh.
    type: str
    vars:
      - name: ansible_vserver_ssh_host
  ssh_port:
    description: The ssh port of the guest's host.
    type: int
    vars:
      - name: ansible_vserver_ssh_port
    env:
      - name: ANSIBLE_VSERVER_SSH_PORT
    ini:
      - section: vserver_connection
        key: ssh_port
  ssh_user:
    description: The user ssh logs in as on the guest's host; it must be root there (the vserver command needs it).
    type: str
    vars:
      - name: ansible_vserver_ssh_user
    env:
      - name: ANSIBLE_VSERVER_SSH_USER
    ini:
      - section: vserver_connection
        key: ssh_user
  ssh_private_key_file:
    description: The private key ssh uses for the guest's host.
    type: path
    vars:
      - name: ansible_vserver_ssh_private_key_file
    env:
      - name: ANSIBLE_VSERVER_SSH_PRIVATE_KEY_FILE
  ssh_common_args:
    description: More ssh arguments (a shell-quoted string), for example C(-o StrictHostKeyChecking=accept-new).
    type: str
    default: ''
    vars:
      - name: ansible_vserver_ssh_common_args
    env:
      - name: ANSIBLE_VSERVER_SSH_COMMON_ARGS
    ini:
      - section: vserver_connection
        key: ssh_common_args
  ssh_extra_args:
    description: Arguments appended after O(ssh_common_args).
    type: str
    default: ''
    vars:
      - name: ansible_vserver_ssh_extra_args
    env:
      - name: ANSIBLE_VSERVER_SSH_EXTRA_ARGS
  ssh_executable:
    description: The OpenSSH client.
    type: str
    default: ssh
    env:
      - name: ANSIBLE_VSERVER_SSH_EXECUTABLE
    ini:
      - section: vserver_connection
        key: ssh_executable
  control_path_dir:
    description:
      - Where ssh keeps its master connections (ControlPath C(vs-%C) in it). Empty - no master connection (one ssh
        handshake per command).
    type: str
    default: ~/.ansible/cp
    vars:
      - name: ansible_vserver_control_path_dir
    env:
      - name: ANSIBLE_VSERVER_CONTROL_PATH_DIR
    ini:
      - section: vserver_connection
        key: control_path_dir
  control_persist:
    description: How long an idle master connection stays open (ssh's ControlPersist).
    type: str
    default: 60s
    vars:
      - name: ansible_vserver_control_persist
    ini:
      - section: vserver_connection
        key: control_persist
  vserver_command:
    description:
      - The vserver command on the guest's host, a shell-style string (words split as a shell does).
    type: str
    default: vserver
    vars:
      - name: ansible_vserver_command
    env:
      - name: ANSIBLE_VSERVER_COMMAND
    ini:
      - section: vserver_connection
        key: vserver_command
  host_roots:
    description:
      - The host roots of the guest's host, given to the vserver command as its options (keys C(config_dir),
        C(run_dir), C(tree_dir), C(log_dir), C(cgroup_parent)). Empty - the host's own (C(/etc/default/vserver),
        written by the host role).
    type: dict
    default: {}
    vars:
      - name: ansible_vserver_host_roots
  timeout:
    description: Seconds to wait for ssh to connect, and for become to succeed.
    type: int
    default: 10
    vars:
      - name: ansible_timeout
      - name: ansible_vserver_timeout
    env:
      - name: ANSIBLE_TIMEOUT
    ini:
      - section: defaults
        key: timeout
    cli:
      - name: timeout
"""

EXAMPLES = r"""
# inventory (hosts.yml): guests of two hosts, the hosts written once
# all:
#   children:
#     vserver_hosts:
#       hosts:
#         host1: {ansible_host: 192.0.2.10}
#     guests:
#       vars:
#         ansible_connection: vserver.core.vserver
#         ansible_python_interpreter: /usr/bin/python3
#       hosts:
#         web:  {ansible_vserver_host: host1, ansible_vserver_ssh_host: 192.0.2.10, ansible_vserver_ssh_user: root}
#         mail: {ansible_vserver_host: localhost}
- name: Configure the guests from inside
  hosts: guests
  tasks:
    - name: A package inside the guest
      ansible.builtin.apt:
        name: nginx

- name: A busybox guest has no Python - raw works
  hosts: busybox_guests
  gather_facts: false
  tasks:
    - name: Look around
      ansible.builtin.raw: uname -a; cat /etc/hostname
      changed_when: false
"""

import os
import re
import selectors
import subprocess
import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_collections.vserver.core.plugins.plugin_utils import _vserver_cmd as V

display = Display()

NO_PYTHON = re.compile(rb'python[0-9.]*: (not found|No such file or directory|command not found)')


class Connection(ConnectionBase):
    """Commands and files of a guest through `vserver NAME exec` on its host."""

    transport = 'vserver.core.vserver'
    has_pipelining = True
    default_user = 'root'

    def _connect(self):
        super()._connect()
        self._connected = True
        return self

    # where and what

    def _guest(self):
        return self.get_option('remote_addr')

    def _ssh_host(self):
        return self.get_option('ssh_host') or self.get_option('vserver_host') or ''

    def _where(self):
        guest = self._guest()
        if V.is_local(self._ssh_host()):
            return 'guest %s on this host' % guest
        return 'guest %s on host %s' % (guest, self.get_option('vserver_host') or self._ssh_host())

    def _argv(self, guest_argv):
        """The controller's command line that runs ``guest_argv`` inside the guest."""
        user = self.get_option('remote_user')
        if user and user != 'root':
            guest_argv = ['runuser', '-u', user, '--'] + guest_argv
        try:
            argv = V.vserver_argv(self.get_option('vserver_command'), self.get_option('host_roots'),
                                  [self._guest(), 'exec'] + guest_argv)
        except ValueError as exc:
            raise AnsibleError('%s: %s' % (self._where(), exc))
        host = self._ssh_host()
        if V.is_local(host):
            return argv
        return V.ssh_argv({
            'host': host, 'port': self.get_option('ssh_port'), 'user': self.get_option('ssh_user'),
            'private_key_file': self.get_option('ssh_private_key_file'),
            'common_args': self.get_option('ssh_common_args'), 'extra_args': self.get_option('ssh_extra_args'),
            'executable': self.get_option('ssh_executable'), 'control_path_dir': self.get_option('control_path_dir'),
            'control_persist': self.get_option('control_persist'), 'connect_timeout': self.get_option('timeout')},
            argv)

    def _popen(self, guest_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE):
        argv = self._argv(guest_argv)
        display.vvv('VSERVER EXEC %s' % argv, host=self._guest())
        try:
            return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        except OSError as exc:
            raise AnsibleConnectionFailure('%s: cannot run %s: %s' % (self._where(), argv[0], exc))

    def _check_entry(self, returncode, stderr):
        """Raise when the command never ran in the guest: ssh failed, no vserver command, the guest refused."""
        if not V.is_local(self._ssh_host()) and V.ssh_unreachable(returncode, stderr):
            raise AnsibleConnectionFailure('%s: host unreachable over ssh: %s' % (
                self._where(), to_text(stderr, errors='surrogate_or_replace').strip()))
        text = to_text(stderr, errors='surrogate_or_replace')
        words = V.vserver_argv(self.get_option('vserver_command'), None, [])
        missing = re.compile(r'(%s).*(not found|No such file or directory)' % '|'.join(
            re.escape(word) for word in words if not word.startswith('-')))
        if returncode in (2, 127) and 'in the guest' not in text and any(
                missing.search(line) for line in text.splitlines()[:3]):
            raise AnsibleConnectionFailure('%s: no vserver command (%s) on the host: %s' % (
                self._where(), self.get_option('vserver_command'), text.strip()))
        refused = V.entry_refused(returncode, stderr)
        if refused:
            raise AnsibleConnectionFailure('%s: cannot enter it: %s' % (self._where(), refused))

    # the connection's interface

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = self._popen(['/bin/sh', '-c', cmd])
        become_out, become_err = self._become_success(proc, sudoable)
        stdout, stderr = proc.communicate(in_data)
        stdout, stderr = become_out + stdout, become_err + stderr
        self._check_entry(proc.returncode, stderr)
        if proc.returncode == 127 and NO_PYTHON.search(stderr) and (in_data is not None or b'AnsiballZ_' in to_bytes(cmd)):
            raise AnsibleError('%s has no Python (%s): use the raw module there, or install python3 in it' % (
                self._where(), to_text(stderr, errors='surrogate_or_replace').strip()))
        return proc.returncode, stdout, stderr

    def _become_success(self, proc, sudoable):
        """Wait for become's success marker, answering a password prompt once (on stdin); returns what was read."""
        if not (sudoable and self.become and getattr(self.become, '_id', None)):
            return b'', b''
        captured = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        sent = False
        deadline = time.monotonic() + max(self.get_option('timeout'), 1)
        with selectors.DefaultSelector() as selector:
            for stream in captured:
                os.set_blocking(stream.fileno(), False)
                selector.register(stream, selectors.EVENT_READ)
            while not self.become.check_success(bytes(captured[proc.stdout])):
                if self.become.expect_prompt() and not sent and any(
                        self.become.check_password_prompt(bytes(buf)) for buf in captured.values()):
                    proc.stdin.write(to_bytes(self.become.get_option('become_pass') or '') + b'\n')
                    proc.stdin.flush()
                    sent = True
                events = selector.select(max(deadline - time.monotonic(), 0)) if selector.get_map() else []
                if not events:
                    proc.kill()
                    proc.wait()
                    self._check_entry(proc.returncode, bytes(captured[proc.stderr]))
                    raise AnsibleError('%s: become did not succeed (%s): %s' % (
                        self._where(), 'timed out' if selector.get_map() else 'it ended',
                        to_text(bytes(captured[proc.stdout] + captured[proc.stderr]), errors='surrogate_or_replace')))
                for key, dummy in events:
                    chunk = key.fileobj.read()
                    if chunk:
                        captured[key.fileobj] += chunk
                    else:
                        selector.unregister(key.fileobj)
            for stream in captured:
                os.set_blocking(stream.fileno(), True)
        return bytes(captured[proc.stdout]), bytes(captured[proc.stderr])

    def put_file(self, in_path, out_path):
        """Stream ``in_path`` into ``out_path`` inside the guest (``cat`` there writes it, as the guest's user)."""
        super().put_file(in_path, out_path)
        display.vvv('PUT %s TO %s' % (in_path, out_path), host=self._guest())
        try:
            source = open(to_bytes(in_path, errors='surrogate_or_strict'), 'rb')
        except OSError as exc:
            raise AnsibleFileNotFound('file or module does not exist: %s (%s)' % (in_path, exc))
        with source:
            proc = self._popen(['/bin/sh', '-c', 'cat > "$1"', 'sh', out_path], stdin=source,
                               stdout=subprocess.DEVNULL)
            dummy, stderr = proc.communicate()
        self._check_entry(proc.returncode, stderr)
        if proc.returncode != 0:
            raise AnsibleError('%s: failed to write %s inside it (status %d): %s' % (
                self._where(), out_path, proc.returncode, to_text(stderr, errors='surrogate_or_replace').strip()))

    def fetch_file(self, in_path, out_path):
        """Stream ``in_path`` of the guest (read by ``cat`` there, as the guest's user) into ``out_path``."""
        super().fetch_file(in_path, out_path)
        display.vvv('FETCH %s TO %s' % (in_path, out_path), host=self._guest())
        b_out = to_bytes(out_path, errors='surrogate_or_strict')
        with open(b_out, 'wb') as dest:
            proc = self._popen(['/bin/sh', '-c', 'exec cat < "$1"', 'sh', in_path], stdin=subprocess.DEVNULL,
                               stdout=dest)
            dummy, stderr = proc.communicate()
        if proc.returncode != 0:
            os.unlink(b_out)
            self._check_entry(proc.returncode, stderr)
            raise AnsibleError('%s: failed to read %s inside it (status %d): %s' % (
                self._where(), in_path, proc.returncode, to_text(stderr, errors='surrogate_or_replace').strip()))

    def reset(self):
        """Close ssh's master connection to the guest's host (the next command opens a new one)."""
        if V.is_local(self._ssh_host()) or not self.get_option('control_path_dir'):
            return
        argv = self._argv(['true'])
        cut = argv.index('--')
        subprocess.run(argv[:cut - 1] + ['-O', 'exit', argv[cut - 1]], capture_output=True, check=False, timeout=30)

    def close(self):
        self._connected = False
