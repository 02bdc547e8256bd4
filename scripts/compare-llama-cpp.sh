#!/usr/bin/env bash
# Compares aimarket's smollm2 with llama.cpp (PyPI llama-cpp-python, compiled into a venv under
# .cache on first use by scripts/llama-cpp-venv.sh) on the same GGUF file: the templated prompt's ids
# and the greedy ids of each prompt, 2 threads. Where the greedy ids part, it prints the step and
# llama.cpp's top-1/top-2 margin there (a near-tie, where two correct builds of llama.cpp also
# part). Then the cross-scoring of the two: each engine scores the other's greedy answers with
# one teacher-forced pass (aimarket through `infer --score-ids`), the largest gap of each answer
# against smollm2's eps: how much tolerance honest answers from a second implementation need.
# Not part of make test.
#   scripts/compare-llama-cpp.sh [MAX_NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
max="${1:-48}"
python="$(scripts/llama-cpp-venv.sh)"
bin="${AIMARKET_BIN:-$(scripts/target-dir.sh)/debug/aimarket}"
dir="$(scripts/fetch-smollm2.sh)"
prompts=(
    "What is the capital of France?"
    "Write one sentence about the sea."
    "List three fruits."
    "Explain in two sentences why the sky is blue."
    "Translate to French: The cat sleeps on the warm windowsill."
    "What is 12 plus 30?"
    "Give a short title for a story about a lost dog who finds his way home."
    "Summarize: The city council voted on Tuesday to expand the bus network, adding four routes."
)
ours="$(mktemp)"
theirs="$(mktemp)"
trap 'rm -f "$ours" "$theirs"' EXIT
"$bin" --json infer --threads 2 --model smollm2 --model-dir "$dir" \
    --type generate --max-new-tokens "$max" "${prompts[@]}" >"$ours"
"$python" - "$dir/SmolLM2-135M-Instruct.Q4_1.gguf" "$ours" "$max" "$theirs" <<'PY'
import json, sys
import numpy as np
import llama_cpp, llama_cpp.llama
# No extra buffer types (AMX / repacked weights): llama-cpp-python 0.3.36 crashes with them on
# CPUs with AMX; its plain AVX-512/AVX2 kernels run instead.
_defaults = llama_cpp.llama_model_default_params
def _plain():
    p = _defaults(); p.use_extra_bufts = False; return p
llama_cpp.llama_model_default_params = llama_cpp.llama.llama_cpp.llama_model_default_params = _plain
from llama_cpp import Llama

path, ours_file, max_new, theirs_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ours = json.load(open(ours_file))
llm = Llama(model_path=path, n_ctx=4096, n_threads=2, logits_all=True, verbose=False)
eos = llm.token_eos()
same_prompt = same_ids = 0
answers, cross = [], []
print("| prompt | prompt ids | greedy ids | parted at step | llama.cpp top-2 margin there |")
print("|---|---|---|---|---|")
for row in ours:
    prompt_ids = row["prompt_token_ids"]
    # The same templated text, tokenized by llama.cpp with special tokens parsed.
    rendered = llm.detokenize(prompt_ids, special=True).decode()
    theirs_prompt = llm.tokenize(rendered.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(theirs_prompt)
    ids, margins = [], []
    for _ in range(max_new):
        logits = np.array(llm.scores[llm.n_tokens - 1])
        top = np.argsort(-logits)[:2]
        ids.append(int(top[0]))
        margins.append(float(logits[top[0]] - logits[top[1]]))
        if ids[-1] == eos:
            break
        llm.eval([ids[-1]])
    answers.append(ids)
    # llama.cpp scores aimarket's answer: one pass over the prompt and the answer.
    mine = row["token_ids"]
    llm.reset()
    llm.eval(theirs_prompt + mine[:-1])
    gaps = []
    for t, y in enumerate(mine):
        logits = np.array(llm.scores[len(theirs_prompt) - 1 + t])
        gaps.append(float(logits.max() - logits[y]))
    cross.append(max(gaps))
    p_ok = theirs_prompt == prompt_ids
    parted = next((i for i, (a, b) in enumerate(zip(ids, row["token_ids"])) if a != b), None)
    if parted is None and len(ids) != len(row["token_ids"]):
        parted = min(len(ids), len(row["token_ids"]))
    same_prompt += p_ok
    same_ids += parted is None
    where = "-" if parted is None else str(parted)
    margin = "-" if parted is None or parted >= len(margins) else f"{margins[parted]:.3f}"
    print(f"| {row['text'][:40]} | {'same' if p_ok else 'differ'} | "
          f"{'same' if parted is None else 'differ'} ({len(row['token_ids'])} tokens) | {where} | {margin} |")
print(f"\n{same_prompt}/{len(ours)} prompts tokenized alike, {same_ids}/{len(ours)} greedy answers identical")
json.dump({"answers": answers, "llama_cpp_gaps": cross}, open(theirs_file, "w"))
PY
echo
echo "| prompt | llama.cpp's answer scored by aimarket: largest gap | verdict | aimarket's answer scored by llama.cpp: largest gap |"
echo "|---|---|---|---|"
for i in "${!prompts[@]}"; do
    ids="$(python3 -c 'import json, sys; print(",".join(map(str, json.load(open(sys.argv[1]))["answers"][int(sys.argv[2])])))' "$theirs" "$i")"
    back="$(python3 -c 'import json, sys; print("%.3f" % json.load(open(sys.argv[1]))["llama_cpp_gaps"][int(sys.argv[2])])' "$theirs" "$i")"
    "$bin" --json infer --threads 2 --model smollm2 --model-dir "$dir" --type generate \
        --max-new-tokens "$max" --score-ids "$ids" "${prompts[$i]}" |
        python3 -c 'import json, sys
r = json.load(sys.stdin)[0]
verdict = "passes" if r["passed"] else "refused"
print("| %s | %.3f | %s at eps %s | %s |" % (r["text"][:40], max(r["gaps"]), verdict, r["eps"], sys.argv[1]))' "$back"
done
