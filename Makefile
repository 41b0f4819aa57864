# The two commands: `make run` (a local node with the seed's demonstration) and `make test`.
# Both prepare what they need first (Debian packages, .venv) through deploy/bootstrap.sh.

VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: run stop status reload test bench bench-containment soak soak-retention wheelhouse deploy verify clean

$(READY): pyproject.toml deploy/bootstrap.sh
	deploy/bootstrap.sh

run: $(READY)  ## start Redis (if needed) and WORKER_CONCURRENCY workers under supervisord, run the demo
	deploy/run-local.sh start

stop:  ## stop the local node started by `make run`
	deploy/run-local.sh stop

status:  ## supervisorctl status of the local node
	deploy/run-local.sh status

reload: $(READY)  ## re-render after editing app.properties; starts/stops only added/removed workers
	deploy/run-local.sh reload

test: $(READY)  ## the whole test suite
	RELIABILITY_REPORT=docs/RELIABILITY.md $(BIN)/pytest

bench: $(READY)  ## benchmarks against rq worker-pool and friends; writes docs/BENCHMARKS.md and docs/bench.png
	$(BIN)/python -m bench

bench-containment: $(READY)  ## as root: 1,000 trivial jobs with job containment off and on, start latency with it on
	$(BIN)/python -m bench.containment

soak: $(READY)  ## the chaos soak at full size: 2,000 jobs, workers killed at random, a Redis restart
	SOAK_JOBS=2000 $(BIN)/pytest tests/integration/test_soak.py

soak-retention: $(READY)  ## 20,000 trivial jobs with a 1 s JOB_RETENTION: Redis memory, keys and JOB_ROOT stay bounded
	RETENTION_SOAK_JOBS=20000 $(BIN)/pytest -s tests/integration/test_operations.py -k retention_soak

wheelhouse: $(READY)  ## wheels of conductor and every dependency, for nodes without a package index
	deploy/wheelhouse.sh wheelhouse

INVENTORY ?= ansible/inventory/example.ini

deploy: $(READY)  ## ansible-playbook ansible/deploy.yml against INVENTORY
	PATH=$(CURDIR)/$(BIN):$$PATH ANSIBLE_CONFIG=ansible/ansible.cfg ansible-playbook -i $(INVENTORY) ansible/deploy.yml

verify: $(READY)  ## testinfra checks of the nodes of INVENTORY
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest tests/infra --hosts='ansible://compute' --ansible-inventory=$(INVENTORY)

clean: stop  ## stop the local node, then remove run/, supervisord.conf and this checkout's copy under /var/lib/conductor-local
	deploy/run-local.sh clean
