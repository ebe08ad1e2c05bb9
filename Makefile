# Two commands: `make dev` runs everything, `make test` runs the suite.
# PostgreSQL and Redis: $DATABASE_URL / $REDIS_URL when set, otherwise private embedded servers
# (see codingplans/devenv.py) with data under .local/ (git-ignored). Stripe: the embedded
# localstripe unless STRIPE_API_BASE or STRIPE_SECRET_KEY is set (docs/payments.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEVENV := $(PY) -m codingplans.devenv --
PORT ?= 8000
STANDIN_PORT ?= 8090
BYTEPLUS_STANDIN_PORT ?= 8091
PYTEST_ARGS ?=

.PHONY: install dev test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dev: install
	DEBUG=1 PORT=$(PORT) STANDIN_PORT=$(STANDIN_PORT) BYTEPLUS_STANDIN_PORT=$(BYTEPLUS_STANDIN_PORT) \
	MINIMAX_API_BASE_URL=$${MINIMAX_API_BASE_URL:-http://127.0.0.1:$(STANDIN_PORT)} \
	BYTEPLUS_API_BASE_URL=$${BYTEPLUS_API_BASE_URL:-http://127.0.0.1:$(BYTEPLUS_STANDIN_PORT)/api/coding/v3} \
	CODING_PLANS_PURCHASE_ENABLED=$${CODING_PLANS_PURCHASE_ENABLED:-true} \
	CODING_PLANS_LOCAL_WEBHOOK_URL=http://127.0.0.1:$(PORT)/api/v1/payments/stripe/webhook \
	$(DEVENV) sh -c '$(PY) manage.py migrate --noinput && $(PY) manage.py seed_demo --with-inventory && \
	  echo "Coding Plans: http://127.0.0.1:$(PORT)/  (admin: /admin/)" && \
	  exec $(VENV)/bin/honcho start -f Procfile'

test: install
	sh scripts/ensure-chromium
	DEBUG=1 $(DEVENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	DEBUG=1 $(DEVENV) $(PY) -m bench

clean:
	rm -rf $(VENV) .local
