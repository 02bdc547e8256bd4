# aimarket: `make demo` runs the whole thing, `make test` runs the tests.
# Both install what is missing (nats-server) through scripts/setup.sh.

NATS_URL ?= nats://127.0.0.1:4222
WORKER_ID ?= alice
DB ?= coordinator.db
CARGO ?= cargo
BIN := target/debug/aimarket

export NATS_URL

.PHONY: all build setup nats dev worker demo test test-faults bench eval lint fmt clean

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
	@scripts/demo.sh

## The tests, against real nats-server processes and SQLite files in temp dirs (and headless
## Chromium for the dashboard).
test: setup
	@scripts/setup.sh --browser
	@scripts/fetch-minilm.sh >/dev/null
	NATS_SERVER_BIN="$$(scripts/setup.sh)" AIMARKET_MINILM_DIR="$$(scripts/fetch-minilm.sh)" $(CARGO) test --workspace

## The fault suite alone, with its figures: crashes of workers, coordinator and nats-server
## mid-run (also part of `make test`).
test-faults: setup
	NATS_SERVER_BIN="$$(scripts/setup.sh)" $(CARGO) test -p cli --test chaos --test faults -- --nocapture --test-threads 1

## The standard benchmarks (release build; see BENCHMARKS.md).
bench: setup
	$(CARGO) build --release --bin aimarket
	NATS_SERVER_BIN="$$(scripts/setup.sh)" target/release/aimarket bench --tasks 20000 --workers 3 --required 3 --batch 32 --bulk 100000 --depth 1000
	NATS_SERVER_BIN="$$(scripts/setup.sh)" target/release/aimarket bench --tasks 5000 --bulk 0 --depth 1000000
	NATS_SERVER_BIN="$$(scripts/setup.sh)" target/release/aimarket bench --tasks 20000 --rate 5000 --bulk 0
	$(CARGO) run --release -p worker --example model_throughput -- "$$(scripts/fetch-minilm.sh)" 1 8 32
	scripts/bench-workers.sh 480 1 8 32

## Accuracy on the human-rated sentences in ../shared/data/sentiment of the lexicon, MiniLM
## zero-shot and their vote; add a model with EVAL_MODELS="--model distilbert-sst2=DIR".
SENTENCES = ../shared/data/sentiment/amazonReviewSnippets_GroundTruth.txt ../shared/data/sentiment/movieReviewSnippets_GroundTruth.txt
eval: setup
	$(CARGO) build --release --bin aimarket
	target/release/aimarket eval --model lexicon --model minilm="$$(scripts/fetch-minilm.sh)" $(EVAL_MODELS) $(SENTENCES)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf target/demo
