# meshnet — see README.md. Targets that build labs need root.
CARGO ?= cargo
LAB_BIN := target/debug/meshnet-lab
DEMO_LAB ?= demo

.PHONY: all build deps demo lab lab-down test fmt clippy

all: build

deps:
	@scripts/install-deps.sh

build:
	$(CARGO) build --workspace --bins

## demo: build, bring up tests/3node.yml in the lab, verify every link, print the link table.
demo: deps build
	@$(LAB_BIN) --lab $(DEMO_LAB) down >/dev/null 2>&1 || true
	$(LAB_BIN) --lab $(DEMO_LAB) up tests/3node.yml
	$(LAB_BIN) --lab $(DEMO_LAB) status
	$(LAB_BIN) --lab $(DEMO_LAB) verify
	@echo
	@echo "The lab is still up: try '$(LAB_BIN) --lab $(DEMO_LAB) exec r1 -- ping -c 3 12.12.12.2'."
	@echo "Remove it with '$(LAB_BIN) --lab $(DEMO_LAB) down'."

## lab: bring up FILE (default tests/3node.yml) with NODES nodes and LINK (vxlan|grpc).
FILE ?= tests/3node.yml
NODES ?= 1
LINK ?= vxlan
lab: deps build
	$(LAB_BIN) --lab lab up $(FILE) --nodes $(NODES) --link $(LINK)
	$(LAB_BIN) --lab lab status

lab-down:
	$(LAB_BIN) --lab lab down

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: everything CI runs — format, lints, then every test (root: namespaces are real).
test: deps fmt clippy build
	$(CARGO) test --workspace
