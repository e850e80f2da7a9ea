# Two entry points: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>/dev/null || true
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	@# headless Chromium renders the HTML report in the tests; install it when we can (root + apt)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -q >/dev/null 2>&1; apt-get install -y -q chromium >/dev/null 2>&1) || \
	  echo "note: chromium not installed; the report test checks the HTML without a browser"; }
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/softlabels compare --dataset digits --methods ce,ls,ols --seeds 3

test: $(STAMP)
	$(PY) -m pytest -q

# the CPU suite (engine, epoch, methods, files; the CUDA part notes its skip), CPU-time clock, a
# few minutes on 2 cores; docs/benchmarks.md holds its figures
bench: $(STAMP)
	$(VENV)/bin/softlabels bench --clock cpu --threads 1 --rounds 3 --steps 5 --epoch-images 1024 --files 192 --json runs/bench.json

clean:
	rm -rf $(VENV) runs .pytest_cache
