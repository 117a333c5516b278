# Two entry points (see README): `make book` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
CHAPTERS := $(wildcard chapters/*.ipynb)
PYTEST_WORKERS ?= 2

.PHONY: setup data-deps browser-deps book execute html test test-unit test-notebooks test-browser clean

## setup: .venv with the package and its book and test extras, plus the Fashion-MNIST Debian package
setup: $(VENV)/.installed data-deps

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,experiments,test]'
# k-diffusion for tests/test_k_samplers.py only: --no-deps, as its own list pulls in clean-fid, CLIP, wandb and
# torchvision, which its sampling and external modules do not use (their imports are in the test extra)
	$(BIN)/python -m pip install --quiet --no-deps 'k-diffusion==0.1.1.post1'
	@touch $@

data-deps:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing the Debian package dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	  echo "warning: could not install dataset-fashion-mnist; the package falls back to the official download (checksummed)"; \
	else \
	  echo "note: $(FMNIST_DIR) missing and not root; run 'sudo apt-get install dataset-fashion-mnist' or let the"; \
	  echo "      package fall back to the official download (checksummed) when it needs the data"; \
	fi

## browser-deps: headless Chromium and its driver (Debian) for tests/test_browser.py; installed when root
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing the Debian packages chromium and chromium-driver (for the browser test)"; \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "warning: could not install chromium/chromium-driver; tests/test_browser.py will be skipped"; \
	else \
	  echo "note: chromium or chromedriver missing and not root; run 'sudo apt-get install chromium chromium-driver'"; \
	  echo "      or tests/test_browser.py is skipped"; \
	fi

## book: execute every chapter with papermill (outputs kept in the notebooks), then build the HTML book
book: setup execute html

execute:
	@for nb in $(CHAPTERS); do \
	  echo "papermill $$nb"; \
	  $(BIN)/papermill --cwd chapters --kernel python3 --log-level WARNING "$$nb" "$$nb" || exit 1; \
	done

## html: render the book from the committed notebook outputs (no execution) into _build/html
html:
	$(BIN)/jupyter-book build . -W --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

## test: unit tests, the browser test of the built book, then every chapter re-executed by nbval
# (one OpenMP/BLAS thread per process: the two pytest workers and the chapters' own worker processes share the
# cores, and oversubscribed OpenMP threads slow every one of them; the outputs are the same)
test: setup browser-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -p no:cacheprovider tests chapters --nbval-lax --durations=15

test-unit: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider tests

test-browser: setup browser-deps
	$(BIN)/python -m pytest -p no:cacheprovider tests/test_browser.py

test-notebooks: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -p no:cacheprovider chapters --nbval-lax

clean:
	rm -rf _build .pytest_cache
