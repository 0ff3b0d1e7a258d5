# The README's two commands: `make run` and `make test`. Both create .venv and install
# everything into it from this repository's own files, so a clean clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov gets its own environment: its pins (python-hcl2, boto3, ...) clash with the app's.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# The dashboard's browser tests drive Debian's Chromium (Playwright never downloads a browser here).
CHROMIUM := /usr/bin/chromium
# Zappa too: it packages the API for AWS Lambda (deploy/package.py), and its pins are its own.
ZAPPA_VENV := .venv-zappa
ZAPPA_STAMP := $(ZAPPA_VENV)/.installed
# And MLflow: `fma export --mlflow` is tested against a real tracking server (the full mlflow package,
# pandas and all) with fma-client's mlflow extra, none of which the app's .venv should carry.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
# The dashboard's chart library (uPlot) comes from the npm registry, pinned by api_service/package-lock.json,
# and is served from the dashboard's static folder (ignored by git); axe-core stays in node_modules for the tests.
VENDOR := api_service/src/fma_service/dashboard/static/dashboard/vendor
VENDOR_STAMP := $(VENDOR)/.installed

.PHONY: run test test-long test-moto bench fuzz format clean lambda-packages

# federated training end to end on the embedded default; options: make run ARGS="--aggregator median --bad-clients 2"
run: $(STAMP) $(VENDOR_STAMP)
	$(BIN)/python examples/quickstart/run.py $(ARGS)

# the aggregation benchmark (the README's performance table)
bench: $(STAMP)
	$(BIN)/python benchmarks/aggregate.py

test: $(STAMP) $(VENDOR_STAMP) $(CHECKOV_STAMP) $(ZAPPA_STAMP) $(MLFLOW_STAMP) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# Two passes at once (most of a test's time is spent waiting on servers, workers and the disk, and
	# the tests share nothing: each run has its own Celery queue, cache prefix, databases and ports):
	# every test on SQLite, and the Django packages, the aggregator and the dashboard's Django tests
	# again on PostgreSQL (127.0.0.1:5432; FMA_TEST_DATABASE_URL to change), whose output is shown when
	# both are done. The slow-client, deploy-check, service, runserver, observability and readiness tests
	# run servers and commands on databases of their own (no FMA_ variable reaches them), so they run once.
	# The tests that touch no test database (fma-core's, the benchmarks', the examples', which run
	# services of their own, and Terraform's) run once, in the PostgreSQL pass, the shorter one, so
	# that both passes end at about the same time.
	FMA_TEST_DATABASE=postgresql $(BIN)/python -m pytest tests/fma_django tests/api_service tests/aggregator \
		tests/dashboard/test_metrics.py tests/dashboard/test_pages.py \
		tests/fma_core tests/benchmarks tests/examples tests/terraform \
		--ignore=tests/api_service/test_slow_clients.py --ignore=tests/api_service/test_production_settings.py \
		--ignore=tests/api_service/test_service.py --ignore=tests/api_service/test_observability.py \
		--ignore=tests/api_service/test_readiness.py --ignore=tests/api_service/test_runserver.py \
		--durations=15 > .pytest-postgresql.log 2>&1 & postgresql=$$!; \
	FMA_TEST_DATABASE=sqlite $(BIN)/python -m pytest --ignore=tests/fma_core --ignore=tests/benchmarks \
		--ignore=tests/examples --ignore=tests/terraform --durations=25; sqlite=$$?; \
	wait $$postgresql; pass=$$?; echo "== the PostgreSQL pass"; cat .pytest-postgresql.log; \
	test $$sqlite -eq 0 -a $$pass -eq 0

# the tests `make test` runs short (marked `long`), at length: the round contract's long profile on
# every metadata store (here, at a load average of about 3: 2.5 min in memory, 12.5 min on SQLite,
# 9 min on PostgreSQL)
test-long: $(STAMP)
	FMA_TEST_DATABASE=sqlite $(BIN)/python -m pytest -m long tests/fma_core tests/fma_django
	FMA_TEST_DATABASE=postgresql $(BIN)/python -m pytest -m long tests/fma_django

# the S3 tests (and the S3 benchmark's test) on moto's S3 server instead of SeaweedFS's, the default
test-moto: $(STAMP)
	FMA_TEST_DATABASE=sqlite $(BIN)/python -m pytest -m moto_s3 tests/fma_s3 tests/benchmarks/test_s3_transfer_benchmark.py

# a longer fuzzing run than the suite's (tests/fuzz): random seeds, FUZZ_EXAMPLES per operation and
# caller; the counts and every distinct failure go to fuzz-report-{developer,client}.{txt,json}
FUZZ_EXAMPLES ?= 60
fuzz: $(STAMP)
	FMA_TEST_DATABASE=sqlite FMA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FMA_FUZZ_SEED=random FMA_FUZZ_REPORT=fuzz-report \
		$(BIN)/python -m pytest tests/fuzz -p no:cacheprovider; status=$$?; cat fuzz-report-*.txt; exit $$status

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(STAMP): requirements.txt fma_core/pyproject.toml connectors/django/pyproject.toml connectors/s3/pyproject.toml api_service/pyproject.toml aggregator/pyproject.toml clients/python_client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENDOR_STAMP): api_service/package.json api_service/package-lock.json
	cd api_service && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp api_service/node_modules/uplot/dist/uPlot.iife.min.js api_service/node_modules/uplot/dist/uPlot.min.css \
		api_service/node_modules/uplot/LICENSE $(VENDOR)/
	touch $@

$(CHECKOV_STAMP): terraform_deploy/requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r terraform_deploy/requirements-checkov.txt
	touch $@

$(MLFLOW_STAMP): clients/python_client/requirements-mlflow.txt clients/python_client/pyproject.toml
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/python -m pip install --quiet -r clients/python_client/requirements-mlflow.txt
	touch $@

$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The two zips terraform_deploy/ deploys: api_service/dist/ and aggregator/dist/ (deploy/package.py).
lambda-packages: $(STAMP) $(VENDOR_STAMP) $(ZAPPA_STAMP)
	$(BIN)/python deploy/package.py

$(ZAPPA_STAMP): deploy/requirements-zappa.txt
	test -x $(ZAPPA_VENV)/bin/python || $(PYTHON) -m venv $(ZAPPA_VENV)
	$(ZAPPA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ZAPPA_VENV)/bin/python -m pip install --quiet -r deploy/requirements-zappa.txt
	touch $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(ZAPPA_VENV) $(MLFLOW_VENV) $(VENDOR) api_service/node_modules .pytest_cache .ruff_cache build .cache/lambda-wheels \
		api_service/dist aggregator/dist
