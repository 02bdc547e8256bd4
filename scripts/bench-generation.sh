#!/usr/bin/env bash
# Tokens/s of smollm2 (aimarket, release build) and of llama.cpp (llama-cpp-python 0.3.36, built
# into a venv under .cache by scripts/llama-cpp-venv.sh on first use) on the same
# SmolLM2-135M-Instruct Q4_1 GGUF file and the same prompt, at 1 and 2 threads, prompt
# processing and generation separately; medians of three runs each. Both engines generate
# NEW_TOKENS tokens whatever the model would say (the counts are printed). Then what verifying
# costs: a teacher-forced pass over the prompt and the tokens generated, against generating them,
# from an empty cache, and a second candidate of the same prompt scored after it (the prompt's
# keys and values reused).
# aimarket runs the fastest kernel path unless AIMARKET_KERNEL names one. make bench runs it.
#   scripts/bench-generation.sh [NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-64}"
dir="$(scripts/fetch-smollm2.sh)"
python="$(scripts/llama-cpp-venv.sh)"
"${CARGO:-cargo}" build --quiet --release -p worker --example generation_throughput
example="$(scripts/target-dir.sh)/release/examples/generation_throughput"
echo "| engine | threads | prompt tokens/s | generation tokens/s (tokens) |"
echo "|---|---|---|---|"
costs=()
for t in 1 2; do
    ours="$("$example" "$dir" "$n" "$t")"
    costs+=("$ours")
    python3 - "$ours" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
pp, tg = r["prompt_tokens_per_sec"], r["generation_tokens_per_sec"]
print(f"| aimarket smollm2 ({r['kernel']}) | {r['threads']} | {pp:.0f} ({r['prompt_tokens']} tokens) | {tg:.1f} ({r['generated_tokens']}) |")
PY
    "$python" - "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" "$t" "$n" <<'PY'
import statistics, sys, time
import llama_cpp, llama_cpp.llama
# No extra buffer types (AMX / repacked weights): llama-cpp-python 0.3.36 crashes with them on
# CPUs with AMX; its plain AVX-512/AVX2 kernels run instead.
_defaults = llama_cpp.llama_model_default_params
def _plain():
    p = _defaults(); p.use_extra_bufts = False; return p
llama_cpp.llama_model_default_params = llama_cpp.llama.llama_cpp.llama_model_default_params = _plain
from llama_cpp import Llama
path, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
note = ("Read the following note and explain in a few sentences what the writer wants, then "
        "suggest a reply. The note: the team meeting moves from Monday to Tuesday at ten, in the "
        "small room on the second floor, because the large room is being painted; please bring "
        "the figures for the third quarter and the list of open questions from last week.")
prompt = llm.tokenize(("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
    "by Hugging Face<|im_end|>\n<|im_start|>user\n" + note + "<|im_end|>\n<|im_start|>assistant\n"
    ).encode(), add_bos=False, special=True)
pp, tg = [], []
for _ in range(3):
    llm.reset()
    t = time.perf_counter(); llm.eval(prompt); pp.append(len(prompt) / (time.perf_counter() - t))
    t = time.perf_counter()
    for _ in range(n - 1):
        llm.eval([prompt[-1]])
    tg.append((n - 1) / (time.perf_counter() - t))
print(f"| llama.cpp | {threads} | {statistics.median(pp):.0f} ({len(prompt)} tokens) | {statistics.median(tg):.1f} ({n}) |")
PY
done
echo
echo "| threads | tokens generated | generate them (ms) | verify them (ms) | verify / generate | a second candidate (ms) | second / generate |"
echo "|---|---|---|---|---|---|---|"
for c in "${costs[@]}"; do
    python3 - "$c" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
g, v, a = r["generate_ms"], r["verify_ms"], r["verify_again_ms"]
print(f"| {r['threads']} | {r['generated_tokens']} | {g:.0f} | {v:.0f} | {v / g:.2f} | {a:.0f} | {a / g:.2f} |")
PY
done
