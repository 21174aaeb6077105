# Shortcuts for people who reach for make; dev.py is the single entry (it needs only Python 3.11).
PYTHON ?= python3
ARGS ?=

.PHONY: run test setup server-stop

run:  ## the whole pipeline on projects/digits against a local tracking server
	$(PYTHON) dev.py run $(ARGS)

test:  ## the whole test suite
	$(PYTHON) dev.py test $(ARGS)

setup:  ## (re)build .venv
	$(PYTHON) dev.py setup

server-stop:  ## stop the local tracking server
	.venv/bin/trainwise server stop
