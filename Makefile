# WIBOT backend. `make run` runs the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: prerequisites install migrate schema openapi run test lint fmt bench bench-passthrough soak security faults fuzz mutation clean

# nginx lives in /usr/sbin on Debian, which is not on every user's PATH.
export PATH := $(PATH):/usr/sbin:/sbin

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m devtools.portable_pgvector
	touch $@

# Applies pending db/migrations to DATABASE_URL (or POSTGRES_*, .env) and prints what it applied.
migrate: install
	$(PY) -m shared.migrate

# Regenerates db/schema.sql (the readable whole of the schema) from a freshly migrated throwaway database.
schema: install
	$(PY) -m devtools.schema_dump

# What the machine lacks (nginx, venv, PostgreSQL): installed as root, else named in one line, before anything.
prerequisites:
	@$(PYTHON) -m devtools.prerequisites

# Regenerates docs/openapi.json (every service's routes and contracts), which the auth service serves.
openapi: install
	$(PY) -m devtools.openapi_dump

run: prerequisites install
	$(PY) -m devtools.stack run

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf .run $(VENV) *.egg-info

# Benchmark through nginx (needs wrk: apt-get install wrk). Writes bench/out/results.json and bench/RESULTS.md.
bench: install
	$(PY) -m bench.run --out bench/out --markdown bench/RESULTS.md
	cp bench/out/results.json bench/results.json
	$(PY) -m bench.attachments
	$(PY) -m bench.supervision
	$(PY) -m bench.streaming
	$(PY) -m bench.knowledge
	$(PY) -m bench.json_codec --out bench/json_codec.json
	$(PY) -m bench.attacks

# Memory under a long chat load (10 minutes by default; not part of make bench). Writes bench/soak.json.
soak: install
	$(PY) -m bench.soak

# Our chat against LiteLLM's proxy as a passthrough to the same fake model (LiteLLM in a throwaway venv).
bench-passthrough: install
	$(PY) -m bench.passthrough

# Security, fault and fuzz suites; prints the figures (tokens tried/accepted, cross-user, faults, fuzz), then the
# attack bench against its target (other users' p99 <= 2x idle during each attack; exit 1 when missed).
security: install
	$(PY) -m pytest -q tests/test_security.py tests/test_bad_input.py tests/test_faults.py tests/test_db_restart.py \
		tests/test_chat_failures.py tests/test_fuzz.py tests/test_rate_limits.py tests/test_attacks.py \
		tests/test_budget_first.py tests/test_extraction_pool.py tests/test_retrieval_isolation.py \
		tests/test_server_process.py tests/test_admission.py tests/test_fault_matrix.py tests/test_directory_faults.py \
		tests/test_admin_and_sessions.py::test_a_logged_out_token_stays_out_whatever_its_spelling \
		tests/test_gateway.py::test_200_slow_large_uploads_do_not_grow_the_gateways_memory \
		tests/test_gateway.py::test_connections_beyond_the_per_ip_limit_get_a_429_envelope \
		tests/test_gateway.py::test_nginx_own_errors_answer_the_json_envelope \
		tests/test_gateway.py::test_what_aiohttp_would_answer_in_plain_text_is_answered_in_the_envelope \
		tests/test_gateway.py::test_one_clients_slow_uploads_leave_its_address_to_the_others \
		tests/test_gateway.py::test_the_default_per_address_limit_is_not_held_by_100_slow_uploads
	$(PY) -m bench.attacks --target 2 --out $(or $(TMPDIR),/tmp)/wibot-security-attacks.json

# Each dependency's faults against the stack as production runs it (nginx, the real launcher, uvloop): what other
# users saw (statuses, p99 during the fault against idle) goes to bench/faults.json.
faults: install
	WIBOT_FAULT_FIGURES=$(CURDIR)/bench/faults.json $(PY) -m pytest -q tests/test_fault_matrix.py \
		tests/test_directory_faults.py

# Mutation testing with cosmic-ray (slow: minutes per module); writes mutation/results.json.
mutation: install
	$(PY) -m mutation.run

# Schemathesis against our OpenAPI document through nginx: FUZZ_EXAMPLES cases per operation.
fuzz: install
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-800} $(PY) -m pytest -q tests/test_fuzz.py
