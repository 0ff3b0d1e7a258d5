# The README's two commands: `make run` and `make test`. Both create .venv and install
# everything into it from this repository's own files, so a clean clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov gets its own environment: its pins (python-hcl2, boto3, ...) clash with the app's.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# Zappa too: it packages the API for AWS Lambda (deploy/package.py), and its pins are its own.
ZAPPA_VENV := .venv-zappa
ZAPPA_STAMP := $(ZAPPA_VENV)/.installed

.PHONY: run test lint format clean lambda-packages

run: $(STAMP)
	$(BIN)/python benchmarks/aggregate.py

test: $(STAMP) $(CHECKOV_STAMP) $(ZAPPA_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	FMA_TEST_DATABASE=sqlite $(BIN)/python -m pytest
	# the Django packages and the aggregator again, on PostgreSQL (127.0.0.1:5432; FMA_TEST_DATABASE_URL to change)
	FMA_TEST_DATABASE=postgresql $(BIN)/python -m pytest tests/fma_django tests/api_service tests/aggregator

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(STAMP): requirements.txt fma_core/pyproject.toml connectors/django/pyproject.toml api_service/pyproject.toml aggregator/pyproject.toml clients/python_client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(CHECKOV_STAMP): terraform_deploy/requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r terraform_deploy/requirements-checkov.txt
	touch $@

# The two zips terraform_deploy/ deploys: api_service/dist/ and aggregator/dist/ (deploy/package.py).
lambda-packages: $(STAMP) $(ZAPPA_STAMP)
	$(BIN)/python deploy/package.py

$(ZAPPA_STAMP): deploy/requirements-zappa.txt
	test -x $(ZAPPA_VENV)/bin/python || $(PYTHON) -m venv $(ZAPPA_VENV)
	$(ZAPPA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ZAPPA_VENV)/bin/python -m pip install --quiet -r deploy/requirements-zappa.txt
	touch $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(ZAPPA_VENV) .pytest_cache .ruff_cache build .cache/lambda-wheels \
		api_service/dist aggregator/dist
