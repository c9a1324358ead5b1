# l2-session: `make demo` and `make test` work on a machine with only python3, make and git.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck unit bench docs wheel-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The type checker sees the installed layout (l2_session.domain -> domain/, ...) through a
# tree of directory links, because setuptools' editable finder is invisible to mypy.
.typecheck/l2_session/__init__.py: $(wildcard l2_session/*.py)
	mkdir -p .typecheck/l2_session
	for d in domain infrastructure projections transports tools; do ln -sfn ../../$$d .typecheck/l2_session/$$d; done
	for f in l2_session/*.py l2_session/py.typed; do ln -sfn ../../$$f .typecheck/$$f; done

# Two node processes over QUIC, the whole story (under 30 s); it leaves their ledgers in .demo.
demo: $(STAMP)
	rm -rf .demo
	$(BIN)/l2-session demo --dir .demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) .typecheck/l2_session/__init__.py
	MYPYPATH=.typecheck $(BIN)/mypy -p l2_session

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The API reference, from the docstrings: the public API (l2_session) and, for those who run
# their own loop, the layer beneath. A warning fails the build (CI runs it).
API_MODULES := l2_session l2_session.domain.manager.manager l2_session.domain.session.config \
	l2_session.transports.tcp l2_session.transports.mock l2_session.infrastructure.clock
docs: $(STAMP)
	rm -rf docs/api
	$(BIN)/python -W error -m pdoc --docformat restructuredtext -o docs/api $(API_MODULES)
	@echo "API reference: docs/api/index.html"

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Build the wheel and import it in a fresh venv (CI runs this once).
wheel-check: $(STAMP)
	rm -rf .wheelcheck && mkdir -p .wheelcheck
	$(BIN)/python -m build --wheel --outdir .wheelcheck/dist . >/dev/null
	$(PYTHON) -m venv .wheelcheck/venv
	.wheelcheck/venv/bin/python -m pip install -q .wheelcheck/dist/*.whl
	cd .wheelcheck && venv/bin/python -c "import importlib, pkgutil, l2_session; mods = [m.name for m in pkgutil.walk_packages(l2_session.__path__, 'l2_session.')]; [importlib.import_module(m) for m in mods]; print('wheel imports ok:', len(mods), 'modules')"
	cd .wheelcheck && venv/bin/l2-session --help >/dev/null && echo 'wheel console script ok'

clean:
	rm -rf .venv .typecheck .wheelcheck .demo docs/api build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
