"""Load for scripts/bench-openai.sh, standard library only: requests to the OpenAI-compatible API
(or `aimarket task add --wait` processes) at a fixed concurrency, latency percentiles and
requests per second as markdown table rows.

usage: bench_openai.py chat BASE N CONCURRENCY MAX_TOKENS
       bench_openai.py cli  BIN  N CONCURRENCY MAX_TOKENS DIR
       bench_openai.py embed BASE N
       bench_openai.py ttft BASE N MAX_TOKENS MODE
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = ["Name a color.", "Name a fruit.", "Name an animal.", "Name a country.",
             "Name a tool.", "Name a planet.", "Name a flower.", "Name a metal."]


def chat_of(i):
    q = QUESTIONS[i % len(QUESTIONS)]
    return [{"role": "system", "content": f"You are terse. Request {i}."},
            {"role": "user", "content": q}]


def post(url, body, timeout=600):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def row(label, n, conc, wall, lat):
    ms = [x * 1000 for x in lat]
    print(f"| {label} | {n} | {conc} | {n / wall:.2f} | {pct(ms, 50):.0f} | {pct(ms, 90):.0f} "
          f"| {pct(ms, 99):.0f} | {max(ms):.0f} |")


def run(n, conc, one):
    lat = [0.0] * n

    def timed(i):
        t = time.monotonic()
        one(i)
        lat[i] = time.monotonic() - t

    start = time.monotonic()
    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(timed, range(n)))
    return time.monotonic() - start, lat


def bench_chat(base, n, conc, max_tokens):
    def one(i):
        r = post(f"{base}/v1/chat/completions",
                 {"model": "smollm2", "messages": chat_of(i), "max_tokens": max_tokens})
        assert r["aimarket"]["status"] == "finalized", r
    wall, lat = run(n, conc, one)
    row("`POST /v1/chat/completions`", n, conc, wall, lat)


def bench_cli(binary, n, conc, max_tokens, d):
    def one(i):
        path = os.path.join(d, f"chat-{i}.json")
        with open(path, "w") as f:
            json.dump(chat_of(i), f)
        out = subprocess.run([binary, "--json", "task", "add", "--messages", path,
                              "--max-new-tokens", str(max_tokens), "--wait"],
                             check=True, capture_output=True)
        assert json.loads(out.stdout)[0]["status"] == "finalized"
    wall, lat = run(n, conc, one)
    row("`aimarket task add --messages --wait`", n, conc, wall, lat)


def bench_embed(base, n):
    """Sequential embeddings: the API's latency against its task's own (created to finished)."""
    total, task = [], []
    for i in range(n):
        t = time.monotonic()
        r = post(f"{base}/v1/embeddings",
                 {"model": "minilm", "input": f"sentence number {i} about the sea",
                  "aimarket": {"required": 1}})
        total.append(time.monotonic() - t)
        tid = r["data"][0]["aimarket"]["task_id"]
        with urllib.request.urlopen(f"{base}/tasks/{tid}") as g:
            v = json.load(g)["task"]
        created = time.mktime(time.strptime(v["created_at"][:19], "%Y-%m-%dT%H:%M:%S")) + \
            float("0." + v["created_at"][20:23])
        finished = time.mktime(time.strptime(v["finished_at"][:19], "%Y-%m-%dT%H:%M:%S")) + \
            float("0." + v["finished_at"][20:23])
        task.append(finished - created)
    over = [a - b for a, b in zip(total, task)]
    ms = lambda xs, p: pct(xs, p) * 1000
    print(f"| `POST /v1/embeddings` (1 minilm worker, required 1) | {n} | {ms(total, 50):.1f} "
          f"| {ms(total, 90):.1f} | {ms(task, 50):.1f} | {ms(over, 50):.1f} | {ms(over, 90):.1f} |")


def stream_once(base, i, max_tokens, mode):
    body = {"model": "smollm2", "messages": chat_of(i), "max_tokens": max_tokens, "stream": True,
            "aimarket": {"stream_mode": mode}}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.monotonic()
    first = None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for c in chunk.get("choices", []):
                if c["delta"].get("content") and first is None:
                    first = time.monotonic() - t
    return first, time.monotonic() - t


def bench_ttft(base, n, max_tokens, mode):
    firsts, totals = [], []
    for i in range(n):
        f, tot = stream_once(base, 1000 + i, max_tokens, mode)
        firsts.append(f)
        totals.append(tot)
    ms = lambda xs, p: pct(xs, p) * 1000
    print(f"| {mode} | {n} | {max_tokens} | {ms(firsts, 50):.0f} | {ms(firsts, 90):.0f} "
          f"| {ms(totals, 50):.0f} |")


if __name__ == "__main__":
    what, a = sys.argv[1], sys.argv[2:]
    if what == "chat":
        bench_chat(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif what == "cli":
        bench_cli(a[0], int(a[1]), int(a[2]), int(a[3]), a[4])
    elif what == "embed":
        bench_embed(a[0], int(a[1]))
    elif what == "ttft":
        bench_ttft(a[0], int(a[1]), int(a[2]), a[3])
