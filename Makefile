# lbctl's tasks. `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
CARGO ?= cargo
LBCTL := target/debug/lbctl
QUICKSTART := examples/quickstart.yaml

.PHONY: build test lint quickstart quickstart-destroy schema bench

build:
	$(CARGO) build --workspace

# Unit tests of every crate, then the end-to-end suite (tests/), which drives
# the real binary against real processes on loopback.
# The last line adds up every test binary's result.
test: build
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$i == "passed;") p += $$(i-1); if ($$i == "failed;") f += $$(i-1) } } \
	  END { printf "summary: %d passed, %d failed\n", p, f }' target/test.log

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Apply the quickstart stack, print its URL and a few responses.
quickstart: build
	$(LBCTL) apply -f $(QUICKSTART) --auto-approve
	@echo
	@for path in / / /images/cat.png; do \
	  echo "\$$ curl http://public.quickstart.elb.localhost:8080$$path"; \
	  curl -s http://public.quickstart.elb.localhost:8080$$path; \
	done
	@echo "\$$ curl -H 'Host: image.example.com' http://public.quickstart.elb.localhost:8080/"
	@curl -s -H 'Host: image.example.com' http://public.quickstart.elb.localhost:8080/
	@echo
	@echo "Stop it with: make quickstart-destroy"

quickstart-destroy: build
	$(LBCTL) destroy -f $(QUICKSTART) --auto-approve

# Regenerate the JSON Schema from the spec types.
schema: build
	$(LBCTL) schema > schemas/lbctl.schema.json

# lbctl's ALB beside nginx and HAProxy, then its NLB beside HAProxy, on this
# machine (installs them with apt when missing); prints figures and ratios.
# BENCH_PART=l7 or l4 runs one part. Not a test.
bench:
	python3 bench/bench.py
