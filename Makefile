# meshnet — see README.md. Targets that build labs need root.
CARGO ?= cargo
LAB_BIN := target/debug/meshnet-lab
DEMO_LAB ?= demo

# The kind cluster and the image (`make up docker install e2e`, the seed's local demo).
KIND ?= kind
KUBECTL ?= kubectl
CLUSTER ?= meshnet
# Fully qualified, so that podman's name matches what the kubelet asks containerd for
# (podman would otherwise store "meshnet/meshnet" as localhost/meshnet/meshnet).
IMAGE ?= docker.io/meshnet/meshnet:latest
# docker when a Docker engine answers, else podman.
CONTAINER_ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE_CONTEXT := target/image-context
# `make grpc=1 install`: the gRPC wire between nodes instead of VXLAN.
MANIFESTS := $(if $(grpc),manifests/overlays/grpc-link,manifests/base)

.PHONY: all build deps demo lab lab-down test fmt clippy fuzz soak \
	up down docker install upgrade uninstall e2e crdgen bench

all: build

deps:
	@scripts/install-deps.sh

build:
	$(CARGO) build --workspace --bins --examples

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
	$(CARGO) test --workspace --no-fail-fast

## up: a local 3-node kind cluster (kind.yaml: one control plane, two workers, kindnet).
up:
	$(KIND) create cluster --name $(CLUSTER) --config kind.yaml

## down: delete it.
down:
	$(KIND) delete cluster --name $(CLUSTER)

## docker: the DaemonSet image (Dockerfile; FROM scratch, so nothing is pulled).
docker:
	$(CARGO) build --release -p meshnet-daemon -p meshnet-cni --bins
	scripts/image-context.sh release $(IMAGE_CONTEXT)
	$(CONTAINER_ENGINE) build -f Dockerfile -t $(IMAGE) $(IMAGE_CONTEXT)

## install: load the image into the kind cluster and apply the manifests (grpc=1: gRPC wire).
install:
	$(CONTAINER_ENGINE) save -o target/meshnet-image.tar $(IMAGE)
	$(KIND) load image-archive target/meshnet-image.tar --name $(CLUSTER)
	$(KUBECTL) apply -k $(MANIFESTS)
	$(KUBECTL) -n meshnet rollout status daemonset/meshnet --timeout=180s

## upgrade: replace a running Go/KNE meshnet (or an older meshnet) in place. Our DaemonSet
## selector and RBAC names are the Go manifests', so `kubectl apply` rolls the old DaemonSet over
## and replaces its wildcard ClusterRole in place. A DaemonSet whose selector still differs (an
## early meshnet-rs install) is deleted with its pods orphaned, re-created, and the orphans that
## the new selector does not adopt are deleted. The Go manifests' ClusterIP Service goes.
upgrade:
	@$(KUBECTL) apply -k $(MANIFESTS) || { \
		echo "upgrade: the DaemonSet's selector differs; replacing the DaemonSet"; \
		$(KUBECTL) -n meshnet delete daemonset meshnet --cascade=orphan && \
		$(KUBECTL) apply -k $(MANIFESTS) && \
		$(KUBECTL) -n meshnet delete pod -l 'app=meshnet,!name' --ignore-not-found; }
	$(KUBECTL) -n meshnet delete service meshnet --ignore-not-found
	$(KUBECTL) -n meshnet rollout status daemonset/meshnet --timeout=300s

## uninstall: remove meshnet — the CRD too, and with it every Topology in the cluster. meshnetd
## keeps the node's chain across a SIGTERM (a rollout), so the DaemonSet goes first (foreground:
## its pods are gone before the cleanup starts), then manifests/uninstall runs `meshnetd
## uninstall` on every node and is removed once every node reports clean.
uninstall:
	$(KUBECTL) -n meshnet delete daemonset meshnet --cascade=foreground --ignore-not-found --timeout=180s
	$(KUBECTL) apply -k manifests/uninstall
	$(KUBECTL) -n meshnet rollout status daemonset/meshnet-cleanup --timeout=180s
	$(KUBECTL) -n meshnet delete daemonset meshnet-cleanup --ignore-not-found
	$(KUBECTL) delete -k $(MANIFESTS) --ignore-not-found

## e2e: tests/3node.yml on the cluster; every link pinged from both ends.
E2E_PINGS := r1:12.12.12.2 r1:13.13.13.3 r2:12.12.12.1 r2:23.23.23.3 r3:13.13.13.1 r3:23.23.23.2
e2e:
	$(KUBECTL) apply -f tests/3node.yml
	$(KUBECTL) wait --for=condition=Ready pod -l test=3node --timeout=300s
	@set -e; for p in $(E2E_PINGS); do \
		pod=$${p%%:*}; ip=$${p#*:}; \
		echo "$$pod -> $$ip"; \
		$(KUBECTL) exec $$pod -- ping -c 1 -W 5 $$ip >/dev/null || { echo "FAIL: $$pod cannot reach $$ip"; exit 1; }; \
	done; echo "e2e: all $(words $(E2E_PINGS)) pings answered"

## crdgen: regenerate manifests/base/topology-crd.yaml from the Rust type (CI fails on a diff).
crdgen:
	$(CARGO) run -q -p meshnet-kube --bin crdgen > manifests/base/topology-crd.yaml.tmp
	mv manifests/base/topology-crd.yaml.tmp manifests/base/topology-crd.yaml

## bench: the side-by-side benchmarks on the lab (root): bench-results/bench.{json,md,svg}.
## BENCH_ARGS="--quick" for a run under 5 minutes; `meshnet-bench --help` for the rest.
bench: deps
	@$(CARGO) metadata --format-version 1 --no-deps | grep -q '"name":"meshnet-bench"' || \
		{ echo "bench: the meshnet-bench package (bench/) does not exist yet"; exit 1; }
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p meshnet-bench -- $(BENCH_ARGS)

## fuzz: run each cargo-fuzz target for FUZZ_SECONDS (needs a nightly toolchain and cargo-fuzz).
FUZZ_SECONDS ?= 60
fuzz:
	cd wire && cargo +nightly fuzz run batch_decode -- -max_total_time=$(FUZZ_SECONDS)
	cd wire && cargo +nightly fuzz run session_ops -- -max_total_time=$(FUZZ_SECONDS)
	cd cni && cargo +nightly fuzz run cni_request -- -max_total_time=$(FUZZ_SECONDS)

## soak: 10 minutes of TCP + small-frame UDP across a 3-node gRPC lab while r5 restarts every 30 s
## and node1's underlay is cut for 4 s every 60 s (the wire's streams die and reconnect), then
## every frame accounted for (stream_lost included), memory bounded, every link verified
## (SOAK_SECONDS to change).
SOAK_SECONDS ?= 600
soak: deps build
	scripts/soak.py --seconds $(SOAK_SECONDS) --flap-every 30 --cut-every 60 --cut-for 4
