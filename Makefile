# qrl — local workflows. Every target sets up .venv first if needed.
PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
# CPU wheel by default; override TORCH_VERSION (or install torch yourself) for GPUs.
BIN           := $(VENV)/bin
QRL           := $(BIN)/qrl

# Local cluster settings (make cluster / make demo).
ALGO    ?= dqn
ENV     ?= CartPole-v1
ACTORS  ?= 4
PORT    ?= 5555
RUN_DIR ?= runs/cluster
SET     ?=
CONFIG  ?=

.PHONY: image install install-bench demo cluster stop test test-fast lint learn bench bench-quick soak clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install-bench: $(VENV)/.installed-bench

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

# Train DQN on CartPole-v1 with a local cluster (broker, 4 actors, learner)
# until a deterministic evaluation reaches 475 or the step budget runs out.
demo: install
	$(QRL) run --config configs/dqn-CartPole-v1.yaml --total-steps 300000 --run-dir runs/demo

# Broker, actors and learner as three separate processes (the commands a multi-machine run uses),
# in the foreground until the learner stops; logs and pid files in $(RUN_DIR). Ctrl-C here or
# `make stop` from another terminal stops all three; they also exit if this recipe's shell is killed
# (QRL_PARENT_PID: each one asks the kernel for SIGTERM when its parent dies). PORT=0: free ports.
cluster: install
	@mkdir -p $(RUN_DIR); rm -f $(RUN_DIR)/broker.json; export QRL_PARENT_PID=$$$$; \
	$(QRL) broker --port $(PORT) --address-file $(RUN_DIR)/broker.json > $(RUN_DIR)/broker.log 2>&1 & echo $$! > $(RUN_DIR)/broker.pid; \
	while [ ! -f $(RUN_DIR)/broker.json ]; do \
	  kill -0 $$(cat $(RUN_DIR)/broker.pid) 2>/dev/null || { tail -1 $(RUN_DIR)/broker.log; exit 2; }; sleep 0.05; \
	done; \
	address=$$(sed 's/.*"address": *"\([^"]*\)".*/\1/' $(RUN_DIR)/broker.json); \
	$(QRL) actor --n $(ACTORS) --broker $$address --set actor.give_up_after=3 > $(RUN_DIR)/actor.log 2>&1 & echo $$! > $(RUN_DIR)/actor.pid; \
	$(QRL) learner $(if $(CONFIG),--config $(CONFIG),--algo $(ALGO) --env $(ENV)) --broker $$address --run-dir $(RUN_DIR) --no-progress $(SET) > $(RUN_DIR)/learner.log 2>&1 & echo $$! > $(RUN_DIR)/learner.pid; \
	echo "cluster: broker at $$address; logs in $(RUN_DIR)/*.log; Ctrl-C or 'make stop' stops it"; \
	trap 'kill -TERM $$(cat $(RUN_DIR)/learner.pid 2>/dev/null) 2>/dev/null' INT TERM; \
	learner=$$(cat $(RUN_DIR)/learner.pid); \
	while :; do wait $$learner; code=$$?; kill -0 $$learner 2>/dev/null || break; done; \
	kill -TERM $$(cat $(RUN_DIR)/actor.pid $(RUN_DIR)/broker.pid 2>/dev/null) 2>/dev/null; wait; \
	rm -f $(RUN_DIR)/*.pid; tail -1 $(RUN_DIR)/learner.log; exit $$code

stop:
	@for role in learner actor broker; do \
	  f=$(RUN_DIR)/$$role.pid; \
	  if [ -f $$f ]; then kill -TERM $$(cat $$f) 2>/dev/null && echo "stopped $$role"; rm -f $$f; fi; \
	done

test: install
	$(BIN)/python -m pytest -q --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The lint gate: ruff (pyproject.toml [tool.ruff]) and no function over 60 lines in the runtime.
lint: install
	$(BIN)/ruff check qrl brokers algorithms tests scripts docs
	$(BIN)/python scripts/check_function_length.py qrl brokers algorithms

# Learning check: the preset configs/$(ALGO)-$(ENV).yaml must reach rl-baselines3-zoo's return
# within its step budget for every seed (scripts/learn.py), e.g. make learn ALGO=apex ENV=CartPole-v1
SEEDS ?= 3
learn: install
	$(BIN)/python scripts/learn.py --algo $(ALGO) --env $(ENV) --seeds $(SEEDS)

# Benchmarks (not tests): each prints qrl's figure, the reference measured in the same run and
# their ratio, and writes bench/results/*.json; BENCHMARKS.md is generated from those files
# (scripts/benchmarks_md.py). About 50 minutes in all on 2 cores.
BENCHES := bench_transport bench_collection bench_replay bench_frames bench_learner bench_solve bench_overhead bench_inference bench_atari_envs bench_mcts
# PEERS=rllib adds the RLlib comparison (ray in its own .venv-rllib; heavy, never in CI).
PEERS ?=
bench: install-bench $(if $(findstring rllib,$(PEERS)),.venv-rllib/.installed)
	cd scripts && for b in $(BENCHES); do ../$(BIN)/python $$b.py || exit 1; done
	cd scripts && ../$(BIN)/python bench_solve.py --task ppo-CartPole-v1
	cd scripts && ../$(BIN)/python bench_solve.py --task ppo-LunarLander-v3 --stop-at-solve
	cd scripts && ../$(BIN)/python plot_bench.py
	$(BIN)/python scripts/benchmarks_md.py
	$(if $(findstring rllib,$(PEERS)),cd scripts && ../$(BIN)/python bench_rllib.py --rllib-python ../.venv-rllib/bin/python)

.venv-rllib/.installed:
	$(PYTHON) -m venv .venv-rllib
	.venv-rllib/bin/pip install --quiet torch==$(TORCH_VERSION)
	.venv-rllib/bin/pip install --quiet "ray[rllib]"
	touch $@

# The container image (Dockerfile, deploy/docker/build.sh): a Debian base from debootstrap and
# wheels made here, so no image registry is needed. A GPU learner image:
#   make image IMAGE=qrl:cuda TORCH_VERSION=2.13.0+cu126 TORCH_INDEX=https://download.pytorch.org/whl/cu126
IMAGE ?= qrl:latest
TORCH_INDEX ?=
image: install
	deploy/docker/build.sh $(IMAGE) $(TORCH_VERSION) $(TORCH_INDEX)

# Every benchmark in its --quick mode (about a minute): proves they still run.
bench-quick: install-bench
	cd scripts && for b in $(BENCHES) soak; do ../$(BIN)/python $$b.py --quick || exit 1; done

# Soak (scripts/soak.py): DQN and PPO clusters for MINUTES with actor workers and each broker
# killed on the way; RSS and descriptors of every process; bench/results/soak.json and soak.png.
MINUTES ?= 60
soak: install-bench
	$(BIN)/python scripts/soak.py --minutes $(MINUTES)

clean:
	rm -rf $(VENV) runs .pytest_cache
