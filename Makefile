# The two commands: `make run` (a local node with the seed's demonstration) and `make test`.
# Both prepare what they need first (Debian packages, .venv) through deploy/bootstrap.sh.

VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: run stop status reload test bench clean

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
	$(BIN)/pytest

clean: stop
	rm -rf run supervisord.conf
