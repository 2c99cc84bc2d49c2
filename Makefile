# Set-up is idempotent: .venv is (re)built only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_WORKERS ?= 2

.PHONY: setup test demo posttrain-demo lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# Tests simulate 8 devices (tests/conftest.py sets the same); the demo and other jobs use the real ones.
test: setup
	XLA_FLAGS="$${XLA_FLAGS:---xla_force_host_platform_device_count=8}" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q

# The demo isoFLOP sweep on the default corpus, then its fit and plots (docs/sweeps.md).
# Preparing skips an existing corpus and tokenizer and the sweep skips finished runs, so re-running
# `make demo` resumes an interrupted sweep. The demo's small models run fastest as one shard per core.
demo: setup
	$(BIN)/scalelab data prepare
	$(BIN)/scalelab tokenizer train
	$(BIN)/scalelab sweep run demo --sweep-dir sweeps/demo --workers auto
	$(BIN)/scalelab fit sweeps/demo --budget 1e12 --out sweeps/demo/fit
	$(BIN)/scalelab plot sweeps/demo/fit --out sweeps/demo/fit

# The offline RLHF demonstration (docs/ppo.md): a tiny GPT on the default corpus, SFT on corpus openings,
# preference pairs from the SFT policy labelled by VADER, a reward model, PPO at three betas and DPO, judged
# by VADER on held-out prompts against the KL to the SFT policy. Finished steps are kept: re-running resumes.
RLHF ?= runs/rlhf-demo
PPO_BETAS ?= 0.01 0.05 0.2
posttrain-demo: setup
	$(BIN)/scalelab data prepare
	$(BIN)/scalelab tokenizer train
	$(BIN)/scalelab train gpt-tiny-text --run-dir $(RLHF)/pretrained --quiet --set train.steps=600 \
		--set checkpoint.every=600 --set train.eval_every=300
	test -f $(RLHF)/data/heldout.jsonl || $(BIN)/scalelab sentiment data $(RLHF)/data --prompts 30000
	$(BIN)/scalelab sft sft-tiny --init-from $(RLHF)/pretrained --run-dir $(RLHF)/sft --quiet \
		--set posttrain.train_file=$(RLHF)/data/sft.jsonl --set train.steps=300 --set checkpoint.every=300 \
		--set train.eval_every=100
	test -f $(RLHF)/data/pairs.jsonl || $(BIN)/scalelab sentiment pairs $(RLHF)/sft $(RLHF)/data/prompts.jsonl $(RLHF)/data
	$(BIN)/scalelab reward reward-tiny --init-from $(RLHF)/sft --run-dir $(RLHF)/reward --quiet \
		--set posttrain.train_file=$(RLHF)/data/pairs.jsonl --set posttrain.eval_file=$(RLHF)/data/pairs-heldout.jsonl \
		--set train.steps=1000 --set train.batch_size=32 --set optimizer.lr=3e-3 --set checkpoint.every=1000 \
		--set train.eval_every=250 --set train.eval_batches=20
	for beta in $(PPO_BETAS); do \
		$(BIN)/scalelab ppo ppo-tiny --init-from $(RLHF)/sft --run-dir $(RLHF)/ppo-beta$$beta --quiet \
			--set posttrain.beta=$$beta --set posttrain.ppo.reward_model=$(RLHF)/reward \
			--set posttrain.train_file=$(RLHF)/data/prompts.jsonl --set train.steps=40 || exit 1; \
	done
	$(BIN)/scalelab dpo dpo-tiny --init-from $(RLHF)/sft --run-dir $(RLHF)/dpo --quiet \
		--set posttrain.train_file=$(RLHF)/data/pairs.jsonl --set posttrain.eval_file=$(RLHF)/data/pairs-heldout.jsonl \
		--set train.steps=200 --set train.batch_size=32 --set optimizer.lr=3e-4 --set checkpoint.every=200 \
		--set train.eval_every=100
	$(BIN)/scalelab sentiment judge $(RLHF)/sft $(foreach beta,$(PPO_BETAS),$(RLHF)/ppo-beta$(beta)) $(RLHF)/dpo \
		--reference $(RLHF)/sft --prompts $(RLHF)/data/heldout.jsonl --out $(RLHF)/judge \
		--reward-model $(RLHF)/reward $(RLHF)/data/pairs-heldout.jsonl --pretrained $(RLHF)/pretrained

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The PyTorch baseline needs the optional bench extra (torch, CPU build); tests do not.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/scalelab bench

clean:
	rm -rf $(VENV) runs .pytest_cache
