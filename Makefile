# vserver.core — `make demo` and `make test` set themselves up on a fresh Debian 12 host (as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

TOP        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
BUILD      := $(TOP)/.build
VENV       := $(TOP)/.venv
PY         := $(VENV)/bin/python
SYSPY      := /usr/bin/python3
COLLECTIONS := $(BUILD)/collections
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_PYTHON_INTERPRETER := $(SYSPY)
export ANSIBLE_NOCOLOR := 1
export PATH := $(VENV)/bin:$(PATH)

# Debian packages. `make demo` installs only what the demo needs: the runtime's tools (busybox-static for the guest
# template, util-linux's nsenter/mount/losetup, iproute2's ip) and python3-venv for the controller's venv.
DEMO_APT_PACKAGES := python3-venv busybox-static util-linux iproute2
# `make setup` / `make test` add the rest of the runtime's optional tools (rsync for migration, filesystem tools for
# disk limits), the benchmarks' peer tools (jdupes, lxc, iperf3, systemd-container) and the test tooling (strace,
# debootstrap/mmdebstrap, openssh, qemu, gcc ...; resource-agents' ocf-tester and its xmllint for the Pacemaker agent).
# tests/unit/test_makefile.py keeps the demo's list to the demo.
TEST_APT_PACKAGES := rsync e2fsprogs attr xfsprogs btrfs-progs nftables strace \
	iperf3 jdupes lxc systemd-container debootstrap mmdebstrap openssh-server openssh-client \
	qemu-system-x86 cpio gcc libc6-dev python-is-python3 lxcfs \
	resource-agents libxml2-utils
APT_PACKAGES := $(DEMO_APT_PACKAGES) $(TEST_APT_PACKAGES)
# The demo's venv holds only ansible-core (its pin in requirements-dev.txt); `make setup` adds the test tooling.
DEMO_PIP := $(shell grep -E '^ansible-core[=<>~]' $(TOP)/requirements-dev.txt)

.PHONY: demo-clean help setup setup-demo apt apt-demo venv venv-demo collection demo test unit integration sanity \
	clean-test-leftovers install-cli

help:
	@echo "make demo   deploy three busybox guests on this host and print the status table"
	@echo "make test   run every test (unit, integration, sanity, lint, import-check, docs-lint, ansible-core versions,"
	@echo "            molecule, cgroup v2 VM); what .ci/run calls"
	@echo "make checks the static checks alone (sanity, lint, import-check, docs-lint)"
	@echo "make lint   ansible-lint (production profile) and the role READMEs' check"
	@echo "make import-check   galaxy-importer on the built collection artifact"
	@echo "make docs   the antsibull-docs site (modules, roles, docs/*.md guides) in .build/docs/build/html, offline"

# apt_install(PACKAGES): install those not installed yet
define apt_install
	@mkdir -p $(BUILD)
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@
endef

$(BUILD)/.apt-demo-stamp: Makefile
	$(call apt_install,$(DEMO_APT_PACKAGES))

$(BUILD)/.apt-stamp: Makefile
	$(call apt_install,$(APT_PACKAGES))

$(VENV)/.demo-stamp: requirements-dev.txt
	[ -x $(PY) ] || $(SYSPY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check '$(DEMO_PIP)'
	@touch $@

$(VENV)/.stamp: requirements-dev.txt
	[ -x $(PY) ] || $(SYSPY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(COLLECTIONS)/ansible_collections/vserver/core:
	@mkdir -p $(COLLECTIONS)/ansible_collections/vserver
	ln -sfn $(TOP) $@

apt-demo: $(BUILD)/.apt-demo-stamp
apt: $(BUILD)/.apt-stamp
venv-demo: $(VENV)/.demo-stamp
venv: $(VENV)/.stamp
collection: $(COLLECTIONS)/ansible_collections/vserver/core
setup-demo: apt-demo venv-demo collection
setup: apt venv collection

install-cli: setup-demo
	$(VENV)/bin/ansible-playbook -i localhost, -c local playbooks/install_cli.yml

demo: setup-demo
	$(VENV)/bin/ansible-playbook -i localhost, -c local playbooks/demo.yml
	@echo "second run (must change nothing):"
	@$(VENV)/bin/ansible-playbook -i localhost, -c local playbooks/demo.yml > $(BUILD)/demo-rerun.log; \
	  sed -n '/PLAY RECAP/,$$p' $(BUILD)/demo-rerun.log; grep -q '^localhost .* changed=0 ' $(BUILD)/demo-rerun.log && \
	  ! grep -qE ' changed=[1-9]' $(BUILD)/demo-rerun.log
	/usr/local/bin/vserver stat

demo-clean: setup-demo
	$(VENV)/bin/ansible-playbook -i localhost, -c local playbooks/demo.yml -e demo_state=absent

# Every test runs under tests/reaper.py: a child subreaper that reaps the guests' init processes once
# they exit (some VM/container PID 1s, like this CI machine's, never reap orphans).
REAPER := $(PY) $(TOP)/tests/reaper.py --

unit: setup
	$(REAPER) $(PY) -m pytest -q tests/unit

integration: setup
	$(REAPER) $(PY) -m pytest -q tests/integration

# `make test` (what .ci/run calls) runs two lanes side by side on the 2 cores. Lane 1: the pytest run (on average
# about one core busy: guests start, sleep and wait on the kernel). Lane 2, one after the other: lint, docs-lint,
# sanity, import-check, the two other ansible-core versions (their guests have private paths and random vstest-*
# cgroup parents, like every pytest test), then the molecule scenarios (names of their own: /var/tmp/vstest-molecule,
# cgroup parents vstest-molecule and vstest-fleet1..3, bridges vstmolbr0 and vstfleetbr, netns vst-fleet1..3 on
# 198.18.10/20/30.0/24, which no pytest test uses).
# make -j2 runs at most two of these at once; each one's output is printed whole when it ends (--output-sync).
# Nothing in either lane writes into the work tree: tests/integration/test_packaging.py builds the artifact from it,
# and `ansible-galaxy collection build` lists every file below it (.build/ too) before applying galaxy.yml's
# manifest, so a file deleted meanwhile fails the build. So sanity's copy, import-check's artifact and the
# importer's files live in $(OUT), outside the tree, and PYTHONDONTWRITEBYTECODE=1 keeps both lanes' Python
# (pytest's rewritten test modules included) from writing __pycache__ files into it. Then the leak check (after both
# lanes: each lane's guests would be the other's leaks) and the cgroup v2 VM (qemu needs both cores: its TCG run is
# near its timeouts already).
PYTEST_PATHS ?= tests/unit tests/integration
LANE2  := lint docs-lint sanity import-check test-ansible-versions molecule-default molecule-fleet
.PHONY: test-pytest checks
test: setup
	PYTHONDONTWRITEBYTECODE=1 $(MAKE) -j2 --output-sync=target --no-print-directory test-pytest $(LANE2)
	$(REAPER) $(PY) tests/leakcheck.py
	$(MAKE) --no-print-directory test-v2

# --durations: the slowest tests, at the end of the output (where the time of the lane goes)
test-pytest: setup
	$(REAPER) $(PY) -m pytest -q --durations=25 $(PYTEST_PATHS)

# the static checks alone, two at a time
checks: setup
	$(MAKE) -j2 --output-sync=target --no-print-directory sanity lint docs-lint import-check

# Release hygiene: ansible-test sanity (no ignore entries) and changelog lint.
# ansible-test wants the collection under .../ansible_collections/vserver/core and lists files through git,
# so sanity runs on a git-indexed copy of the work tree (what .gitignore excludes is left out). Its --venv
# bootstrap fetches a get-pip script from a host that may be unreachable: tests/tools/get_pip_standin.py
# puts an offline stand-in into ansible-test's cache first.
# $(OUT): what the checks write, outside the work tree (see `make test`), one directory per checkout
OUT           := /var/tmp/vserver-checks/$(shell printf %s '$(TOP)' | md5sum | cut -c1-12)
SANITY_ROOT   := $(OUT)/sanity/ansible_collections/vserver/core
SANITY_PYTHON ?= 3.11
DIST          := $(BUILD)/dist

.PHONY: changelog-lint build lint role-readmes import-check

changelog-lint: venv
	$(VENV)/bin/antsibull-changelog lint
	$(VENV)/bin/antsibull-changelog lint-changelog-yaml --strict changelogs/changelog.yaml

sanity: setup changelog-lint
	$(PY) tests/tools/get_pip_standin.py --install
	@mkdir -p $(SANITY_ROOT)
	rsync -a --delete --exclude=/.git --filter=':- .gitignore' $(TOP)/ $(SANITY_ROOT)/
	cd $(SANITY_ROOT) && { [ -d .git ] || git init -q; } && git add -A
	cd $(SANITY_ROOT) && env -u ANSIBLE_COLLECTIONS_PATH $(VENV)/bin/ansible-test sanity --venv --python $(SANITY_PYTHON) --color no

# The artifact holds what galaxy.yml's `manifest:` lists (tests/integration/test_packaging.py checks it).
build: venv
	@mkdir -p $(DIST)
	rm -f $(DIST)/vserver-core-*.tar.gz
	$(VENV)/bin/ansible-galaxy collection build --force --output-path $(DIST) $(TOP)

# pyflakes on the Python (unused imports, undefined names); ansible-lint, production profile, offline (.ansible-lint),
# on roles/, playbooks/, molecule/, changelogs/ ...; and every roles/*/README.md in step with its
# meta/argument_specs.yml (`make role-readmes` rewrites them).
PYFLAKES_PATHS := plugins tests roles bin/vserver bench/start bench/net bench/unify bench/converge bench/failover bench/metrics bench/boot bench/connection/run
lint: setup
	$(VENV)/bin/pyflakes $(PYFLAKES_PATHS)
	$(PY) tests/tools/role_readme.py --check
	cd $(TOP) && $(VENV)/bin/ansible-lint --nocolor --offline

role-readmes: venv
	$(PY) tests/tools/role_readme.py

# galaxy-importer (what Galaxy/Automation Hub run on upload) on the built artifact, offline
# (tests/tools/galaxy-importer.cfg: no ansible-test container; ansible-lint --offline on the artifact, ansible-doc,
# metadata, README and changelog checks). Any WARNING or ERROR line fails the target; the log and
# importer_result.json are in $(OUT)/importer/ (the artifact it checks: $(OUT)/dist).
IMPORTER := $(OUT)/importer
import-check: venv
	@rm -rf $(IMPORTER) && mkdir -p $(IMPORTER)
	$(MAKE) --no-print-directory build DIST=$(OUT)/dist
	cd $(IMPORTER) && GALAXY_IMPORTER_CONFIG=$(TOP)/tests/tools/galaxy-importer.cfg \
	  GALAXY_IMPORTER_TMP_ROOT_DIR=$(IMPORTER) GALAXY_IMPORTER_ANSIBLE_LOCAL_TMP=$(IMPORTER)/ansible-tmp \
	  $(PY) -m galaxy_importer.main $(OUT)/dist/vserver-core-*.tar.gz > importer.log 2>&1; \
	  rc=$$?; grep -v '^Loading ' importer.log; \
	  if [ $$rc -ne 0 ] || grep -qE '^(WARNING|ERROR):' importer.log; then \
	    echo "import-check: galaxy-importer failed or warned (full log: $(IMPORTER)/importer.log)"; exit 1; fi
	@echo "import-check: galaxy-importer passed"

# Docs site, offline: docs/docsite/rst/*.rst (the docs/*.md guides as antsibull-docs extra docs, generated by
# `make docsite-rst`) must be current; antsibull-docs lint-collection-docs checks the plugin and role docs, the
# extra docs and docs/docsite/*.yml (`make docs-lint`, ~25 s, also in `make test`); then `antsibull-docs sphinx-init`
# writes a Sphinx project into .build/docs, tests/tools/docs_conf_offline.py replaces intersphinx (no network),
# and its build.sh generates the RST and runs sphinx-build -W. The site: .build/docs/build/html/index.html.
DOCS := $(BUILD)/docs
.PHONY: docs docs-lint docsite-rst

docsite-rst: venv
	$(PY) tests/tools/docsite_rst.py

docs-lint: setup
	$(PY) tests/tools/docsite_rst.py --check
	$(VENV)/bin/antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs \
	  $(COLLECTIONS)/ansible_collections/vserver/core

docs: docs-lint
	rm -rf $(DOCS) && mkdir -m 755 $(DOCS)
	$(VENV)/bin/antsibull-docs sphinx-init --use-current --fail-on-error --dest-dir $(DOCS) --project vserver.core \
	  --copyright '2026, vserver.core contributors' --title vserver.core vserver.core > /dev/null
	cat tests/tools/docs_conf_offline.py >> $(DOCS)/conf.py
	bash $(DOCS)/build.sh > $(DOCS)/build.log 2>&1 || { tail -n 40 $(DOCS)/build.log; exit 1; }
	@echo "docs: $(DOCS)/build/html/index.html (log: $(DOCS)/build.log)"

# Molecule: `default` converges the roles on this machine (connection local, private paths under
# /var/tmp/vstest-molecule), `fleet` makes three hosts (netns + sshd + private mounts) and rolls site.yml out over
# ssh, then migrates a guest. Both run under the reaper (PID 1 here never reaps orphans), then the leak check.
.PHONY: molecule molecule-default molecule-fleet
molecule: molecule-default molecule-fleet
	$(REAPER) $(PY) tests/leakcheck.py

molecule-default molecule-fleet: setup
	cd $(TOP) && NO_COLOR=1 $(REAPER) $(VENV)/bin/molecule test -s $(@:molecule-%=%)

# cgroup v2: tests/unit and the `cgroup`-marked integration tests inside a qemu VM (TCG) booting Debian's kernel
# with cgroup v1 disabled. VM parts (kernel, root image, initramfs) are cached in /var/cache/vserver-v2vm;
# results and the console log land in .build/v2vm/. How it works: docs/testing.md.
V2VM_MAKE_TIMEOUT ?= 720
.PHONY: test-v2
test-v2: setup
	timeout -k 20 $(V2VM_MAKE_TIMEOUT) $(TOP)/tests/vm/run

# High availability (docs/ha.md): a three-node Pacemaker/Corosync cluster of systemd containers on this machine
# (tests/ha/cluster.py; the node tree is built by tests/ha/build into /var/cache/vserver-ha), the cluster role
# defining a guest on a shared loop device, the node running it killed. Not in `make test`: about 1.5 min with a
# warm tree cache (3-4 min more to build it). bench-failover: the failover time, median of 5, against IPaddr2.
.PHONY: test-ha bench-failover
test-ha: setup
	$(REAPER) $(PY) -m pytest -q -s -p no:cacheprovider --durations=5 tests/ha

bench-failover: setup
	$(REAPER) $(PY) $(TOP)/bench/failover

# The oldest and the newest ansible-core the collection supports (meta/runtime.yml's requires_ansible is the oldest),
# each in its own venv under .build/, run a representative subset of the playbook-driven integration tests (the
# integration helpers take ansible-playbook from VSERVER_ANSIBLE_BIN; pytest and the fixtures stay in .venv), kept to
# under 4 minutes for both, venvs built: site.yml with the host and guest roles over two hosts, one failing (the
# modules through the roles, the guest role's filter plugin, the roles' interpreter, the installed command); the
# guests module and the guest role with a root password hash under -vvv (no_log). The base venv's ansible-core
# (between the two) runs every test. The newest ansible-core needs Python 3.12+ on the controller: the first
# python3.12+ found (Debian's, else pyenv's). The two venvs hold nothing but a pinned ansible-core (no code of this
# repository), so they live outside the clone, in ANSIBLE_VENV_CACHE (/var/cache/vserver-ansible), shared by every
# clone on the machine and built once (~1 min each on a loaded machine); a venv is named by its ansible-core and
# Python versions: changing a pin builds a new one. A flock serialises concurrent builds.
ANSIBLE_OLDEST      ?= 2.16.19
ANSIBLE_NEWEST      ?= 2.21.5
ANSIBLE_NEWEST_PY   ?= $(firstword $(wildcard /usr/bin/python3.1[2-9] $(HOME)/.pyenv/versions/3.1[2-9].*/bin/python))
ANSIBLE_VERSION_TESTS ?= tests/integration/test_site_playbook.py::test_a_failed_host_stops_the_rollout \
	tests/integration/test_secrets.py
.PHONY: test-ansible-versions
ANSIBLE_VENV_CACHE  ?= /var/cache/vserver-ansible
pyver = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ANSIBLE_OLDEST_VENV := $(ANSIBLE_VENV_CACHE)/ansible-$(ANSIBLE_OLDEST)-py$(call pyver,$(SYSPY))
ANSIBLE_NEWEST_VENV := $(ANSIBLE_VENV_CACHE)/ansible-$(ANSIBLE_NEWEST)-py$(call pyver,$(ANSIBLE_NEWEST_PY))
# ansible_venv(PYTHON, VERSION): build the venv $(@D) under the cache's lock unless another build finished it meanwhile
define ansible_venv
	@mkdir -p $(ANSIBLE_VENV_CACHE)
	flock $(ANSIBLE_VENV_CACHE)/.lock sh -c '[ -f $@ ] || { rm -rf $(@D) && $(1) -m venv $(@D) && \
	  $(@D)/bin/pip install -q --disable-pip-version-check ansible-core==$(2) && touch $@; }'
endef
$(ANSIBLE_OLDEST_VENV)/.stamp:
	$(call ansible_venv,$(SYSPY),$(ANSIBLE_OLDEST))
$(ANSIBLE_NEWEST_VENV)/.stamp:
	@[ -n "$(ANSIBLE_NEWEST_PY)" ] || { echo "ansible-core $(ANSIBLE_NEWEST) needs python3.12+ (set ANSIBLE_NEWEST_PY)"; exit 1; }
	$(call ansible_venv,$(ANSIBLE_NEWEST_PY),$(ANSIBLE_NEWEST))
test-ansible-versions: setup $(ANSIBLE_OLDEST_VENV)/.stamp $(ANSIBLE_NEWEST_VENV)/.stamp
	set -e; for v in $(ANSIBLE_OLDEST_VENV) $(ANSIBLE_NEWEST_VENV); do \
	  $$v/bin/ansible-playbook --version | sed -n 1p; \
	  VSERVER_ANSIBLE_BIN=$$v/bin $(REAPER) $(PY) -m pytest -q $(ANSIBLE_VERSION_TESTS); \
	done
