# The two commands of the README: `make run` (set up, then start the dashboard) and `make test`
# (set up, then run the test suite). Both create .venv on first use and reuse it afterwards.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8501
# Host names (besides 127.0.0.1, localhost and HOST) the browser may use to reach the dashboard
ALLOWED_HOSTS ?=

.PHONY: setup browser-deps run test test-fast bench clean

$(BIN)/.installed: requirements.txt
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.headless true --browser.gatherUsageStats false \
	  $(foreach h,$(sort 127.0.0.1 localhost $(HOST) $(ALLOWED_HOSTS)),--server.allowedHosts $(h))

# The real-browser test needs Debian's chromium and chromium-driver; installed when missing and root.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver for the browser test"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver)); \
	else echo "chromium/chromedriver missing and not root: tests/test_browser.py will be skipped"; fi

test: setup browser-deps
	$(BIN)/python -m pytest -q tests

# The quick loop while editing: everything but the tests marked slow (real alignments of the bundled
# models, several processes) and browser (headless Chromium); `make test` runs them all.
test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow and not browser"

bench: setup
	$(BIN)/python bench/bench_stats.py
	$(BIN)/python bench/bench_dashboard.py

clean:
	rm -rf cache .pytest_cache
