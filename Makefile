# make <c>-train|<c>-infer|<c>-submit|<c>-ensemble|<c>-tune|<c>-push|<c>-data, make demo, make test.
#   ARGS="key=value ..."  config overrides        RUN=<name>  the run to create / resume / use
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
COMPETITIONS := usppm
RUN  ?=
ARGS ?=
run_arg = $(if $(RUN),run_name=$(RUN))

.PHONY: setup demo test clean-runs $(foreach c,$(COMPETITIONS),$(c)-train $(c)-infer $(c)-submit $(c)-demo)

setup: $(STAMP)
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(addsuffix -demo,$(COMPETITIONS))

test: $(STAMP)
	$(PY) -m pytest -q tests

$(addsuffix -demo,$(COMPETITIONS)): %-demo: $(STAMP)
	$(PY) -m competitions.$*.demo $(ARGS)

$(addsuffix -train,$(COMPETITIONS)): %-train: $(STAMP)
	$(PY) -m competitions.$*.train $(run_arg) $(ARGS)

$(addsuffix -infer,$(COMPETITIONS)): %-infer: $(STAMP)
	$(PY) -m competitions.$*.infer $(run_arg) $(ARGS)

$(addsuffix -submit,$(COMPETITIONS)): %-submit: $(STAMP)
	$(PY) -m competitions.$*.infer --submit $(run_arg) $(ARGS)

usppm-data: $(STAMP)
	$(PY) -m common.kaggle download us-patent-phrase-to-phrase-matching data/usppm
