# The README's two commands: `make demo` and `make test`. Each makes the virtual
# environment on first use (CPU torch first, so pip never pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(BIN)/brainalign demo

test: install
	MPLBACKEND=Agg $(BIN)/python -m pytest $(PYTEST_ARGS)

# the quick variants of each benchmark; benchmarks/README.md gives the full commands
bench: install
	$(BIN)/python benchmarks/bench_features.py --threads 1
	$(BIN)/python benchmarks/bench_encoding.py --n 3000 --p 1000 --t 5000
	$(BIN)/python benchmarks/bench_plotting.py
	$(BIN)/python benchmarks/bench_dynamics.py
	$(BIN)/python benchmarks/bench_demo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache brainalign-demo
