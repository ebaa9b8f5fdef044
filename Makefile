# make test : create .venv, install the package with its test extras, run every test (slow ones too)
# make demo : create .venv, install the package alone (no test extras), run the offline demo pipeline
# Nothing is compiled: every dependency comes as a wheel (make test-deepspeed alone builds DeepSpeed, which has none).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install test test-fast test-deepspeed test-oldest test-oldest-fast demo clean

$(VENV)/.installed: pyproject.toml Makefile
	@# pip itself says only that no TRL fits an older Python
	@$(PYTHON) -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "gsm8k-tr needs Python 3.11 or newer; \
	$(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 (or newer) $(MAKECMDGOALS)")'
	$(PYTHON) -m venv $(VENV)
	# torch first, so the package's range is already met: without a GPU, a local
	# CPU wheel if there is one, else PyTorch's CPU index; PyPI's build (CUDA's, on Linux) only where neither has it.
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		$(PIP) install --quiet --no-deps --no-index "torch==$(TORCH_VERSION)" 2>/dev/null \
		|| $(PIP) install --quiet --retries 1 --no-deps "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX) \
			2>/dev/null \
		|| echo "torch $(TORCH_VERSION): neither a local wheel nor PyTorch's CPU index here; PyPI's build instead"; \
		$(PIP) install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install --quiet --only-binary :all: -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet --only-binary :all: -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Two workers: on 2 cores the tests' process starts and imports overlap (3.1 against 4.0 minutes, measured).
# worksteal: with xdist's default, tests already handed to one worker wait for it while the other sits idle (seen for
# minutes at the end of a 28-minute run); an idle worker takes them instead.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist worksteal

FAST_MARKS ?= not slow
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist worksteal -m "$(FAST_MARKS)"

# DeepSpeed's launches on CPU processes (tests/train/test_deepspeed.py; they skip without it). DeepSpeed ships no wheel,
# so the test extra leaves it out. Here it is built against .venv's torch (build isolation would fetch another torch)
# into build/deepspeed, beside the environment: with its dependencies that .venv lacks (the rest, pydantic, psutil and
# numpy among them, come with transformers and accelerate). Its CPU accelerator compiles one small op on first use
# (a C++ compiler; ninja comes with it).
DEEPSPEED_VERSION ?= 0.19.8
test-deepspeed: $(VENV)/.installed-test
	$(PIP) install --quiet setuptools  # the build's, without isolation (a venv of Python 3.12 or newer has none)
	$(PIP) install --quiet --upgrade --no-deps --no-build-isolation --target build/deepspeed \
		"deepspeed==$(DEEPSPEED_VERSION)" einops hjson msgpack ninja py-cpuinfo
	PATH=$(CURDIR)/build/deepspeed/bin:$$PATH PYTHONPATH=$(CURDIR)/build/deepspeed \
		$(PY) -m pytest -q tests/train/test_deepspeed.py

# The suite on the oldest releases pyproject.toml admits (constraints/oldest.txt), in a venv of its own; its fast
# tests (test-oldest-fast) are where the library APIs that changed between those releases and ours are exercised.
TORCH_OLDEST = $(shell sed -n 's/^torch==//p' constraints/oldest.txt)

test-oldest:
	PIP_CONSTRAINT=$(CURDIR)/constraints/oldest.txt $(MAKE) test VENV=.venv-oldest TORCH_VERSION=$(TORCH_OLDEST)

# The fast tests on the oldest releases of every dependency but torch, which stays make test's TORCH_VERSION; run by
# hand when a floor or the code that meets the libraries changes (.ci/run says why CI does not).
# torch 2.8 comes as a CPU wheel only from PyTorch's index; elsewhere it is PyPI's CUDA build, about 3 GB with its
# nvidia wheels, more than a small disk holds beside .venv. make test-oldest checks torch's floor as well.
# The tests of the scripts in benchmarks/ are left out: the floors are the package's promise, and those scripts run
# from make's .venv (the newest releases) or a GPU machine's; make test runs them.
test-oldest-fast:
	mkdir -p build && grep -v '^torch==' constraints/oldest.txt > build/oldest-but-torch.txt
	PIP_CONSTRAINT=$(CURDIR)/build/oldest-but-torch.txt $(MAKE) test-fast VENV=.venv-oldest-libs \
		FAST_MARKS="not slow and not benchmark"

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/gsm8k-tr pipeline --config recipes/demo.yaml --overwrite

clean:
	rm -rf $(VENV) .venv-oldest .venv-oldest-libs runs .pytest_cache
