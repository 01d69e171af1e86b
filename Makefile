# lbctl's tasks. `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
CARGO ?= cargo
LBCTL := target/debug/lbctl
QUICKSTART := examples/quickstart.yaml
# The tests' Python packages (tests/requirements.txt), in a virtual
# environment of the project's own: nothing is installed outside it.
VENV := target/venv
# The release before state format 2, built from git: the upgrade test
# applies a stack with it, then plans and applies it with this one.
PREVIOUS_COMMIT := cb837a5
PREVIOUS := target/previous-release

.PHONY: build test lint quickstart quickstart-destroy schema bench man

build:
	$(CARGO) build --workspace

# Unit tests of every crate, then the end-to-end suite (tests/), which drives
# the real binary against real processes on loopback, with the virtual
# environment's bin/ first on PATH (its python3 has the tests' packages).
# Tests that count something (property cases, requests under load, chaos
# kills) print it; those lines are repeated at the end, and the last line
# adds up every test binary's result.
test: build $(VENV)/installed $(PREVIOUS)/lbctl
	@set -o pipefail; PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CARGO) test --workspace --no-fail-fast -- --show-output 2>&1 \
	  | tee target/test.log
	@echo; echo "counts:"; grep -hE '^(chaos \(|hitless:|scale-in |weighted forward |(PROXY v2|head guard|router|parser) propert)' target/test.log \
	  | sed 's/^/  /' || true
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$i == "passed;") p += $$(i-1); if ($$i == "failed;") f += $$(i-1) } } \
	  END { printf "summary: %d passed, %d failed\n", p, f }' target/test.log

# The virtual environment, made again whenever tests/requirements.txt changes.
$(VENV)/installed: tests/requirements.txt
	@test -x $(VENV)/bin/python3 || python3 -m venv $(VENV) || { \
	  echo "python3 -m venv failed: on Debian or Ubuntu, install python3-venv"; exit 1; }
	PIP_CACHE_DIR="$(CURDIR)/target/pip-cache" $(VENV)/bin/python3 -m pip install --quiet \
	  --disable-pip-version-check -r tests/requirements.txt
	@touch $@

$(PREVIOUS)/lbctl:
	rm -rf $(PREVIOUS)/src && mkdir -p $(PREVIOUS)/src
	@git cat-file -e $(PREVIOUS_COMMIT)^{commit} 2>/dev/null || git fetch --quiet --unshallow
	git archive $(PREVIOUS_COMMIT) | tar -x -C $(PREVIOUS)/src
	CARGO_PROFILE_DEV_DEBUG=0 $(CARGO) build --quiet --manifest-path $(PREVIOUS)/src/Cargo.toml --target-dir $(PREVIOUS)/target -p lbctl
	cp $(PREVIOUS)/target/debug/lbctl $@

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

# The manual pages, from the command line's definitions: target/man/lbctl.1
# and a page per command (lbctl-apply.1, ...).
man: build
	$(LBCTL) man --dir target/man

# Regenerate the JSON Schema from the spec types.
schema: build
	$(LBCTL) schema > schemas/lbctl.schema.json

# lbctl's ALB beside nginx and HAProxy, then its NLB beside HAProxy, on this
# machine (installs them with apt when missing); prints figures and ratios.
# BENCH_PART=l7 or l4 runs one part. Not a test.
bench:
	python3 bench/bench.py
