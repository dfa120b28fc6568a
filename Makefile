# The two commands of the README: `make demo` and `make test`. Each creates
# .venv when missing and installs the project into it first, so either one
# works as the only command after `git clone`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-tools lint bench bench-torch proto clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check --no-cache .
	$(PY) -m mypy datakit trainer cli

# System programs some tests need: Graphviz's dot (`trainer draw`) and Chromium (the board's
# browser test). Installed with apt-get when missing and running as root on a Debian-like machine
# (as CI does; about 2 minutes the first time); otherwise nothing is installed and those tests
# skip, saying why. DATAKIT_NO_APT=1 turns the install off.
test-tools:
	@if [ -z "$$DATAKIT_NO_APT" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	    && { ! command -v dot >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; }; then \
	  echo "make: installing graphviz and chromium with apt-get for the draw and board tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz chromium >/dev/null; } \
	    || echo "make: apt-get could not install them: those tests will skip"; \
	fi

# Lint first (ruff, and mypy on datakit/ trainer/ cli/, configured in pyproject.toml), then the tests; -rs prints why each skip skipped.
# The tests run in TEST_WORKERS processes (pytest-xdist; a test spends much of its time waiting on
# the subprocesses and servers it starts, so two share 2 cores well); TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 2
test: $(STAMP) test-tools
	$(PY) -m ruff check --no-cache .
	$(PY) -m mypy datakit trainer cli
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -rs -p no:cacheprovider -n $(TEST_WORKERS)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m scripts.demo

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m benchmarks.run_all

# DataLoader over a datakit LMDB vs torchvision's ImageFolder: torchvision needs its own torch, so its own venv.
bench-torch:
	test -x .venv-tv/bin/python || $(PYTHON) -m venv .venv-tv
	.venv-tv/bin/python -m pip install -q -e '.[bench-torchvision]'
	.venv-tv/bin/python -m benchmarks.bench_torch_loader

# Regenerate datakit/formats/caffe_pb2.py from caffe.proto.
proto: $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m grpc_tools.protoc -Idatakit/formats --python_out=datakit/formats datakit/formats/caffe.proto

clean:
	rm -rf $(VENV) .venv-tv demo-out bench-out .pytest_cache
