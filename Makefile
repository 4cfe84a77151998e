# make <c>-train|<c>-infer|<c>-submit|<c>-rescore|<c>-ensemble|<c>-tune|<c>-push|<c>-data|<c>-runs|<c>-dashboard,
# make demo, make test.
#   ARGS="key=value ..."  config overrides        RUN=<name>  the run to create / resume / use
#   RUNS="a b"  runs to blend (ensemble)           RUN2=<name> second run to compare (armyworm-gradcam)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
COMPETITIONS := usppm mvtec armyworm codesim growth
DEMOS  := usppm mvtec armyworm codesim growth
COMMANDS := train infer submit rescore ensemble tune push
RUN  ?=
RUN2 ?=
RUNS ?=
ARGS ?=
DRY_RUN ?=
run_arg = $(if $(RUN),run_name=$(RUN))
kit = $(PY) -m competitions

TARGETS := $(foreach c,$(COMPETITIONS),$(foreach k,$(COMMANDS),$(c)-$(k)))
.PHONY: setup demo test bench $(TARGETS) $(addsuffix -demo,$(COMPETITIONS)) $(addsuffix -data,$(COMPETITIONS)) \
	$(addsuffix -runs,$(COMPETITIONS)) $(addsuffix -dashboard,$(COMPETITIONS)) armyworm-gradcam

setup: $(STAMP)
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(addsuffix -demo,$(DEMOS))

test: $(STAMP)
	$(PY) -m pytest -q tests benchmarks

bench: $(STAMP)   # ratios of the kit against the plain way (benchmarks/, minutes): benchmarks/results.md
	$(PY) -m benchmarks $(ARGS)

$(addsuffix -demo,$(COMPETITIONS)): %-demo: $(STAMP)
	$(kit) $* demo $(ARGS)

$(filter %-train %-infer %-submit %-rescore %-tune,$(TARGETS)): $(STAMP)
	$(kit) $(firstword $(subst -, ,$@)) $(lastword $(subst -, ,$@)) $(run_arg) $(ARGS)

$(filter %-ensemble,$(TARGETS)): %-ensemble: $(STAMP)
	$(kit) $* ensemble runs="$(RUNS)" $(run_arg) $(ARGS)

$(filter %-push,$(TARGETS)): %-push: $(STAMP)
	$(kit) $* push $(run_arg) $(if $(DRY_RUN),dry_run=true) $(ARGS)

$(addsuffix -runs,$(COMPETITIONS)): %-runs: $(STAMP)
	$(kit) $* runs $(ARGS)

$(addsuffix -dashboard,$(COMPETITIONS)): %-dashboard: $(STAMP)
	$(kit) $* dashboard $(run_arg) $(ARGS)

armyworm-gradcam: $(STAMP)
	$(kit) armyworm gradcam $(run_arg) $(if $(RUN2),run2=$(RUN2)) $(ARGS)

usppm-data: $(STAMP)
	$(PY) -m competitions usppm download dest=data/usppm

mvtec-data:
	@echo "DACON 235894 (Computer Vision 이상치 탐지): download open.zip from dacon.io (login required) and unzip it into data/mvtec/"
	@echo "  expected: data/mvtec/{train_df.csv,test_df.csv,sample_submission.csv,train/,test/}"

armyworm-data:
	@echo "Zindi Makerere Fall Armyworm Crop Challenge: download from zindi.africa (login required) into data/armyworm/"
	@echo "  expected: data/armyworm/{Train.csv,Test.csv,SampleSubmission.csv,Images/}"

codesim-data:
	@echo "DACON 235900 (코드 유사성 판단 AI 경진대회): download open.zip from dacon.io (login required) and unzip it into data/codesim/"
	@echo "  expected: data/codesim/{code/problemNNN/problemNNN_K.py,sample_train.csv,test.csv,sample_submission.csv}"

growth-data:
	@echo "DACON 235897 (생육 환경 최적화 경진대회): download the data from dacon.io (login required) into data/growth/"
	@echo "  expected: data/growth/{train/CASEnn/{image,meta,label.csv},test/{image,meta},sample_submission.csv}"
