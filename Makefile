# SPA service — the two commands of the README are `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test lint demo zoo bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required)" >&2; exit 2; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull the CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# The dashboard tests drive Debian's chromium and chromedriver: installed when missing where
# apt-get can (root, as on CI); elsewhere the tests say what to install.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver for the dashboard tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; \
	  else echo "warning: no chromium / chromedriver: the dashboard tests will fail (apt-get install chromium chromium-driver)" >&2; fi; \
	fi

test: $(STAMP) browser
	$(BIN)/ruff check .
	@# pytest exits 5 when it collects nothing: that must never pass
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: no tests were collected" >&2; exit 1; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/python -m bench.demo

zoo: $(STAMP)
	$(BIN)/python -m tests.zoo.write_table

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
