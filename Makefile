# `make run`: set up and run the service on its embedded defaults (SQLite, outbox:// mail).
# `make test`: set up and run the test suite (SQLite; PostgreSQL too when TEST_DATABASE_URL is set).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
FLASK := $(BIN)/flask --app wsgi
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: install run test lint bench i18n clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The web app and the scheduler as two processes; Ctrl-C stops both.
run: install
	$(FLASK) db upgrade
	$(FLASK) scheduler & scheduler=$$!; \
	trap 'kill $$scheduler 2>/dev/null' EXIT INT TERM; \
	$(FLASK) run --host $(HOST) --port $(PORT)

# ruff, and bandit's security checks (a justified exception is marked `# nosec BXXX # why`).
lint: install
	$(BIN)/ruff check .
	$(BIN)/bandit -r newsletter -q

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/send_digest.py $(BENCH_ARGS)

# Re-extract the strings and merge them into the catalogues (then translate the new sv entries).
i18n: install
	$(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_gettext -k N_ -o newsletter/translations/messages.pot .
	$(BIN)/pybabel update -i newsletter/translations/messages.pot -d newsletter/translations

clean:
	rm -rf $(VENV) instance .pytest_cache test-artifacts
