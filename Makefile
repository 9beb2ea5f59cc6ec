# geosr developer entry points. The README's commands are the source of truth; these call them.
#
#   make stack          start the local stack (Prefect server, SeaweedFS S3, Dask scheduler + CPU and
#                       GPU-tagged workers, a Prefect process worker) as processes on 127.0.0.1
#   make stack-status   health of every part (exit 1 if anything is down)
#   make stack-env      `eval "$(make -s stack-env)"` points a shell at the stack
#   make stack-down     stop exactly the processes `make stack` started (PURGE=1 also deletes its data)
#
# State (pid files, logs, Prefect SQLite db, S3 data) goes to $GEOSR_STACK_DIR (default .cache/stack);
# ports come from GEOSR_STACK_{PREFECT,S3,DASK,DASHBOARD}_PORT (see infra/stack/stack.py).

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
STACK := $(PYTHON) infra/stack/stack.py

.PHONY: help stack stack-down stack-status stack-env test test-infra sample lint-docker k8s-render requirements

help:
	@sed -n '2,12p' Makefile

stack:
	$(STACK) up

stack-down:
	$(STACK) down $(if $(filter 1 yes true,$(PURGE)),--purge,)

stack-status:
	$(STACK) status

stack-env:
	@$(STACK) env

# The README's test command (sets up .venv, runs the whole suite).
test:
	bash scripts/test.sh

# The README's main job on the bundled sample.
sample:
	bash scripts/sample.sh

# Only the infrastructure tests (manifests, Dockerfiles, local stack end to end).
test-infra:
	$(PYTHON) -m pytest -q tests/test_infra_k8s.py tests/test_infra_docker.py tests/test_infra_stack.py

lint-docker:
	$(dir $(PYTHON))hadolint --failure-threshold info infra/docker/gpu.Dockerfile infra/docker/cpu.Dockerfile

# What `kubectl apply -k` would send (offline subset of kustomize); OVERLAY=overlays/gpu-8 for the example.
k8s-render:
	@$(PYTHON) infra/k8s/render.py infra/k8s/$(or $(OVERLAY),base)

# Re-pin requirements/cpu.txt (image dependencies) to the versions in the tested venv.
requirements:
	$(PYTHON) infra/docker/pin_requirements.py
