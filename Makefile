# cortexd — `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

# Where the default model lives: the state directory the daemon uses.
ifeq ($(ROOT),yes)
STATE_DIR ?= /var/lib/cortex
else
STATE_DIR ?= $(or $(XDG_STATE_HOME),$(HOME)/.local/state)/cortex
endif
MODEL ?= $(STATE_DIR)/models/SmolLM2-135M-Instruct.Q4_1.gguf

# System packages the build and the tests use (Debian names).
APT_PACKAGES := python3-venv build-essential cmake libsystemd-dev pkg-config socat systemd util-linux prometheus prometheus-alertmanager e2fsprogs zsh fish python3-dev lintian dpkg-repack

PREFIX ?= /opt/cortexd
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/cortex
BASHCOMPDIR ?= /usr/local/share/bash-completion/completions
# Where `make deb` writes cortexd_VERSION_ARCH.deb.
DEB_DIR ?= dist

.PHONY: help run test lint format bench model install uninstall system-deps clean deb

help:
	@echo "make run        set up and run the daemon in the foreground"
	@echo "make test       set up and run the test suite"
	@echo "make lint       ruff, ruff format --check, mypy --strict"
	@echo "make bench      run the benchmarks in bench/"
	@echo "make model      fetch the default model into $(dir $(MODEL))"
	@echo "make install    install system-wide (root): package, config, units, groups"
	@echo "make uninstall  remove what make install put in place (config and state kept)"
	@echo "make deb        build $(DEB_DIR)/cortexd_VERSION_ARCH.deb (docs/packaging.md)"

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$(ROOT)" = yes ]; then \
	        echo "installing system packages:$$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    else \
	        echo "missing system packages:$$missing — install them with apt (as root)"; exit 1; \
	    fi; \
	fi

# pip keeps built wheels in its cache (~/.cache/pip), so llama-cpp-python is
# compiled once per machine, not once per virtual environment. The editable
# install uses a plain .pth path entry (compat mode): setuptools' default
# import-hook finder costs every `cortexctl` call 15-30 ms of start-up.
$(STAMP): pyproject.toml constraints.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt \
	    --config-settings editable_mode=compat -e '.[dev]'
	touch $@

model: $(STAMP)
	@scripts/fetch-model.sh "$(MODEL)" "$(BIN)/pip"

run: $(STAMP) model
	$(BIN)/cortexd --model "$(MODEL)"

test: $(STAMP) model
	CORTEX_TEST_MODEL="$(MODEL)" $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cortexd cortexctl tests bench
	$(BIN)/ruff format --check cortexd cortexctl tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format cortexd cortexctl tests bench
	$(BIN)/ruff check --fix cortexd cortexctl tests bench

bench: $(STAMP) model
	CORTEX_TEST_MODEL="$(MODEL)" $(BIN)/python bench/ipc.py
	CORTEX_TEST_MODEL="$(MODEL)" $(BIN)/python bench/inference.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/fleet.py --quick

install: $(STAMP)
	@[ "$(ROOT)" = yes ] || { echo "make install needs root"; exit 1; }
	getent group cortex >/dev/null || groupadd --system cortex
	getent group cortex-admin >/dev/null || groupadd --system cortex-admin
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet --disable-pip-version-check -c constraints.txt .
	ln -sf $(PREFIX)/bin/cortexd $(BINDIR)/cortexd
	ln -sf $(PREFIX)/bin/cortexctl $(BINDIR)/cortexctl
	install -d -m 0755 $(BASHCOMPDIR)
	$(PREFIX)/bin/cortexctl completion bash > $(BASHCOMPDIR)/cortexctl
	install -d -m 0755 $(CONFDIR)
	[ -e $(CONFDIR)/daemon.conf ] || install -m 0644 config/daemon.conf $(CONFDIR)/daemon.conf
	install -m 0640 config/alerts.yaml $(CONFDIR)/alerts.yaml.example  # rules to copy from; none are active until alerts.yaml exists
	install -d -m 0755 $(CONFDIR)/plugins
	install -d -m 0750 /var/lib/cortex /var/lib/cortex/models
	scripts/fetch-model.sh /var/lib/cortex/models/SmolLM2-135M-Instruct.Q4_1.gguf "$(PREFIX)/bin/pip"
	install -m 0644 systemd/cortexd.service systemd/cortexd.socket $(UNITDIR)/
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed. Start it:  systemctl enable --now cortexd.socket cortexd.service"
	@echo "let a user read status:  usermod -aG cortex USER; administer:  usermod -aG cortex-admin USER"

uninstall:
	@[ "$(ROOT)" = yes ] || { echo "make uninstall needs root"; exit 1; }
	if [ -d /run/systemd/system ]; then systemctl disable --now cortexd.service cortexd.socket || true; fi
	rm -f $(UNITDIR)/cortexd.service $(UNITDIR)/cortexd.socket
	rm -f $(BINDIR)/cortexd $(BINDIR)/cortexctl $(BASHCOMPDIR)/cortexctl
	rm -rf $(PREFIX)
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "removed. Kept $(CONFDIR) and /var/lib/cortex; delete them by hand if unwanted."

# The package's own venv is built with Debian's python3 (pip's cache supplies
# the llama-cpp-python wheel); the model is copied from $(MODEL) when it is the
# default one, else fetched and checked the same way.
deb: | system-deps
	DEB_MODEL="$(MODEL)" packaging/deb/build.sh "$(DEB_DIR)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
