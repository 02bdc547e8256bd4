# aimarket: `make demo` runs the whole thing, `make test` runs the tests.
# Both install what is missing (nats-server) through scripts/setup.sh.

NATS_URL ?= nats://127.0.0.1:4222
WORKER_ID ?= alice
DB ?= coordinator.db
CARGO ?= cargo
# Wherever cargo puts its builds (CARGO_TARGET_DIR, a cargo config, or ./target).
TARGET_DIR := $(shell scripts/target-dir.sh)
BIN := $(TARGET_DIR)/debug/aimarket
RELEASE_BIN := $(TARGET_DIR)/release/aimarket

export NATS_URL
export CARGO

.PHONY: all build setup nats dev worker demo demo-cluster test test-faults bench bench-postgres eval accuracy lint fmt clean

all: build

build:
	$(CARGO) build --bin aimarket

setup:
	@scripts/setup.sh >/dev/null

## nats-server in the foreground, with nats.conf.
nats: setup
	"$$(scripts/setup.sh)" -c nats.conf

## nats-server (in the background, unless one already listens on 4222), then the coordinator.
dev: setup build
	@scripts/nats-up.sh
	$(BIN) coordinator --db $(DB)

## One worker: make worker WORKER_ID=bob
worker: build
	$(BIN) worker --id $(WORKER_ID)

## Everything up (three workers on three models), the sample tasks in, the leaderboard out,
## everything stopped again.
demo: setup build
	@AIMARKET_BIN="$(BIN)" scripts/demo.sh

## Scale-out: PostgreSQL, three NATS nodes, two coordinators, three workers; a coordinator and a
## NATS node killed mid-run; the leaderboard out; everything stopped again.
demo-cluster: setup build
	@AIMARKET_BIN="$(BIN)" scripts/demo-cluster.sh

## The tests, against real nats-server processes, SQLite files and PostgreSQL servers in temp
## dirs (and headless Chromium for the dashboard; the official openai Python client, from PyPI
## into a venv, for the OpenAI-compatible API; QEMU's x86-64 emulator, to run the engine on a
## CPU without AVX).
test: setup
	@scripts/setup.sh --browser
	@scripts/setup.sh --postgres >/dev/null
	@scripts/setup.sh --qemu >/dev/null
	@scripts/fetch-minilm.sh >/dev/null
	@scripts/fetch-sentences.sh >/dev/null
	@scripts/fetch-smollm2.sh >/dev/null
	@scripts/openai-venv.sh >/dev/null
	NATS_SERVER_BIN="$$(scripts/setup.sh)" AIMARKET_PG_BIN="$$(scripts/setup.sh --postgres)" \
		AIMARKET_OPENAI_PYTHON="$$(scripts/openai-venv.sh)" \
		AIMARKET_QEMU_X86_64="$$(scripts/setup.sh --qemu)" \
		AIMARKET_MINILM_DIR="$$(scripts/fetch-minilm.sh)" \
		AIMARKET_SENTENCES_DIR="$$(scripts/fetch-sentences.sh)" \
		AIMARKET_SMOLLM2_DIR="$$(scripts/fetch-smollm2.sh)" $(CARGO) test --workspace

## The fault suite alone, with its figures: crashes of workers, coordinators, nats-server and
## PostgreSQL mid-run (also part of `make test`).
test-faults: setup
	NATS_SERVER_BIN="$$(scripts/setup.sh)" AIMARKET_PG_BIN="$$(scripts/setup.sh --postgres)" \
		$(CARGO) test -p cli --test chaos --test faults --test postgres_cluster -- --nocapture --test-threads 1

## The standard benchmarks (release build; see BENCHMARKS.md).
bench: setup
	$(CARGO) build --release --bin aimarket
	NATS_SERVER_BIN="$$(scripts/setup.sh)" $(RELEASE_BIN) bench --tasks 20000 --workers 3 --required 3 --batch 32 --bulk 100000 --depth 1000
	NATS_SERVER_BIN="$$(scripts/setup.sh)" $(RELEASE_BIN) bench --tasks 5000 --bulk 0 --depth 1000000
	NATS_SERVER_BIN="$$(scripts/setup.sh)" $(RELEASE_BIN) bench --tasks 20000 --rate 5000 --bulk 0
	AIMARKET_SENTENCES_DIR="$$(scripts/fetch-sentences.sh)" $(CARGO) run --release -p worker --example model_throughput -- "$$(scripts/fetch-minilm.sh)" 1 8 32
	AIMARKET_BIN="$(RELEASE_BIN)" scripts/bench-workers.sh 480 1 8 32
	scripts/bench-generation.sh 64
	AIMARKET_BIN="$(RELEASE_BIN)" scripts/bench-verified.sh 12 48 exact
	AIMARKET_BIN="$(RELEASE_BIN)" scripts/bench-verified.sh 12 48 generate-once
	AIMARKET_BIN="$(RELEASE_BIN)" scripts/bench-openai.sh 24 4 16
	$(MAKE) bench-postgres

## The store side by side: one coordinator on SQLite, then one and two on a PostgreSQL server
## started in a temp dir, same load (see BENCHMARKS.md).
bench-postgres: setup
	$(CARGO) build --release --bin aimarket
	AIMARKET_BIN="$(RELEASE_BIN)" scripts/bench-postgres.sh 20000

## Accuracy on the human-rated sentences of the VADER study (fetched from PyPI by
## scripts/fetch-sentences.sh) of the lexicon, MiniLM zero-shot and their vote; add a model with
## EVAL_MODELS="--model distilbert-sst2=DIR".
eval: setup
	$(CARGO) build --release --bin aimarket
	sentences="$$(scripts/fetch-sentences.sh)" && $(RELEASE_BIN) eval --model lexicon \
		--model minilm="$$(scripts/fetch-minilm.sh)" $(EVAL_MODELS) \
		"$$sentences/amazonReviewSnippets_GroundTruth.txt" "$$sentences/movieReviewSnippets_GroundTruth.txt"

## Accuracy as the coordinator measures it: human-rated sentences of both sets as gold and as
## tasks, one worker each of lexicon, MiniLM and SmolLM2 with --distinct-models; each model's
## gold accuracy and that of the finalized consensus. ACCURACY_SENTENCES per set (default 200).
accuracy: setup
	$(CARGO) build --release --bin aimarket
	AIMARKET_BIN="$(RELEASE_BIN)" scripts/accuracy.sh $(or $(ACCURACY_SENTENCES),200)

## The house rules, checked: formatting, clippy with warnings as errors, and the docs (broken
## intra-doc links fail).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --document-private-items

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf target/demo
