"""Drives aimarket's OpenAI-compatible API with the official `openai` Python package, as an
application would, for cli/tests/openai_api.rs. One phase per run; prints what it saw as JSON on
stdout (the Rust test compares it with `aimarket infer` and the store).

usage: openai_client.py PHASE BASE_URL API_KEY [CHAT_FILE]
"""

import json
import sys
import time

import openai


def client(base_url, key):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)


def chat_messages(path):
    with open(path) as f:
        return json.load(f)


# Fewer answers than the default three: the test runs two smollm2 workers on two cores.
EXTRA = {"aimarket": {"required": 2}}


def phase_models(c, _):
    models = c.models.list()
    return [
        {"id": m.id, "workers": m.model_extra.get("workers"),
         "content_hashes": m.model_extra.get("content_hashes")}
        for m in models.data
    ]


def phase_chat(c, chat_file):
    messages = chat_messages(chat_file)
    r = c.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=24, logprobs=True, extra_body=EXTRA,
    )
    choice = r.choices[0]
    plain = {
        "id": r.id, "content": choice.message.content, "finish_reason": choice.finish_reason,
        "completion_tokens": r.usage.completion_tokens, "prompt_tokens": r.usage.prompt_tokens,
        "system_fingerprint": r.system_fingerprint,
        "logprobs": [t.logprob for t in choice.logprobs.content],
        "tokens": [t.token for t in choice.logprobs.content],
        "bytes": [t.bytes for t in choice.logprobs.content],
        "aimarket": r.model_extra["aimarket"],
    }
    fetched = c.get(f"/chat/completions/{r.id}", cast_to=object)
    stopped = c.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=24, stop=[" "], extra_body=EXTRA,
    )
    sampled = [
        c.chat.completions.create(model="smollm2", messages=messages, max_tokens=12,
                                  temperature=0.8, seed=seed, extra_body=EXTRA)
        for seed in (7, 7, None)
    ]
    # Past its wait: a 504 naming the task, which goes on; fetched later in the same shape.
    try:
        c.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=24,
            extra_body={"aimarket": {"required": 2, "timeout_seconds": 0.001}},
        )
        late = {"raised": None}
    except openai.APIStatusError as e:
        task = e.body["message"].split()[1]
        later = c.get(f"/chat/completions/chatcmpl-{task}", cast_to=object,
                      options={"headers": {"X-Aimarket-Timeout": "120"}})
        late = {"raised": type(e).__name__, "status": e.status_code, "code": e.body["code"],
                "task": task, "content": later["choices"][0]["message"]["content"],
                "evidence_task": later["aimarket"]["task_id"]}
    return {"plain": plain, "fetched_content": fetched["choices"][0]["message"]["content"],
            "fetched_usage": fetched["usage"],
            "late": late,
            "stopped": {"content": stopped.choices[0].message.content,
                        "finish_reason": stopped.choices[0].finish_reason,
                        "completion_tokens": stopped.usage.completion_tokens},
            "sampled": [{"content": x.choices[0].message.content,
                         "seed": x.model_extra["aimarket"]["seed"],
                         "decoding": x.model_extra["aimarket"]["decoding"]} for x in sampled],
            "verified": stream(c, messages, "verified"),
            "optimistic": stream(c, messages, "optimistic")}


def stream(c, messages, mode):
    started = time.monotonic()
    first = None
    deltas, finish, usage, evidence = [], None, None, None
    s = c.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
        extra_body={"aimarket": {"required": 2, "stream_mode": mode}},
    )
    for chunk in s:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for ch in chunk.choices:
            if ch.delta.content:
                first = first if first is not None else time.monotonic() - started
                deltas.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
                evidence = (chunk.model_extra or {}).get("aimarket")
    return {"content": "".join(deltas), "chunks": len(deltas), "finish_reason": finish,
            "completion_tokens": usage, "ttft_seconds": first,
            "total_seconds": time.monotonic() - started, "aimarket": evidence}


def phase_embeddings(c, _):
    texts = ["The sea is calm tonight.", "A dog barks at the moon."]
    floats = c.embeddings.create(model="minilm", input=texts, extra_body={"aimarket": {"required": 1}})
    b64 = c.embeddings.create(model="minilm", input=texts[0], encoding_format="base64",
                              extra_body={"aimarket": {"required": 1}})
    return {"texts": texts, "floats": [d.embedding for d in floats.data],
            "prompt_tokens": floats.usage.prompt_tokens,
            "base64": b64.data[0].embedding,
            "aimarket": [d.model_extra["aimarket"] for d in floats.data]}


def expect(errors, name, exc, call):
    try:
        call()
        errors.append({"case": name, "raised": None})
    except exc as e:
        errors.append({"case": name, "raised": type(e).__name__, "status": e.status_code,
                       "body": e.body})
    except openai.APIError as e:
        errors.append({"case": name, "raised": type(e).__name__,
                       "status": getattr(e, "status_code", None), "body": e.body})


def phase_errors(c, _):
    user = [{"role": "user", "content": "Hi"}]
    out = []
    bad = openai.BadRequestError
    chat = c.chat.completions.create
    expect(out, "n=2", bad, lambda: chat(model="smollm2", messages=user, n=2))
    expect(out, "max_tokens=0", bad, lambda: chat(model="smollm2", messages=user, max_tokens=0))
    expect(out, "max_tokens=100000", bad,
           lambda: chat(model="smollm2", messages=user, max_tokens=100000))
    expect(out, "empty messages", bad, lambda: chat(model="smollm2", messages=[]))
    expect(out, "unknown role", bad,
           lambda: chat(model="smollm2", messages=[{"role": "wizard", "content": "x"}]))
    expect(out, "temperature type", bad,
           lambda: chat(model="smollm2", messages=user, extra_body={"temperature": "hot"}))
    expect(out, "five stops", bad,
           lambda: chat(model="smollm2", messages=user, stop=["a", "b", "c", "d", "e"]))
    expect(out, "unknown model", openai.NotFoundError,
           lambda: chat(model="gpt-4o", messages=user))
    expect(out, "unknown embedding model", openai.NotFoundError,
           lambda: c.embeddings.create(model="ada", input="x"))
    expect(out, "oversize body", openai.APIStatusError,
           lambda: chat(model="smollm2", messages=[{"role": "user", "content": "x" * 2_000_000}]))
    expect(out, "oversize text", openai.APIStatusError,
           lambda: chat(model="smollm2", messages=[{"role": "user", "content": "x" * 100_000}]))
    expect(out, "too few workers", openai.InternalServerError,
           lambda: chat(model="smollm2", messages=user, extra_body={"aimarket": {"required": 50}}))
    return out


def phase_auth(c, _):
    """Against a coordinator with keys: the client's key is the one given on the command line."""
    out = []
    base = str(c.base_url)
    for name, key in [("no key", ""), ("wrong key", "not-a-key")]:
        # No bearer key at all: the client always sends an Authorization header, so this one
        # carries another scheme.
        headers = None if key else {"Authorization": "Basic dXNlcjpwYXNz"}
        wrong = openai.OpenAI(base_url=base, api_key=key or "unused", max_retries=0,
                              default_headers=headers)
        expect(out, name + " models", openai.AuthenticationError, lambda: wrong.models.list())
        expect(out, name + " chat", openai.AuthenticationError,
               lambda: wrong.chat.completions.create(
                   model="smollm2", messages=[{"role": "user", "content": "Hi"}]))
    out.append({"case": "right key models", "ids": [m.id for m in c.models.list().data]})
    return out


def phase_quota(c, other_key):
    """Three chats on this client's key, then one on another key: what each got."""
    def attempt(cl):
        try:
            cl.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4)
            return {"status": 200}
        except openai.APIStatusError as e:
            return {"raised": type(e).__name__, "status": e.status_code,
                    "code": (e.body or {}).get("code"),
                    "retry_after": e.response.headers.get("retry-after")}
    mine = [attempt(c) for _ in range(3)]
    other = openai.OpenAI(base_url=str(c.base_url), api_key=other_key, max_retries=0)
    return {"mine": mine, "other": attempt(other)}


def phase_completion(c, prompt):
    r = c.completions.create(model="smollm2", prompt=prompt, max_tokens=8, logprobs=0,
                             extra_body=EXTRA)
    ch = r.choices[0]
    return {"id": r.id, "text": ch.text, "finish_reason": ch.finish_reason,
            "completion_tokens": r.usage.completion_tokens, "prompt_tokens": r.usage.prompt_tokens,
            "token_logprobs": ch.logprobs.token_logprobs, "aimarket": r.model_extra["aimarket"]}


def phase_replaced(c, prompt):
    """An optimistic stream of whatever worker generates first, to its end or its error."""
    deltas = []
    try:
        s = c.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=24,
            stream=True,
            extra_body={"aimarket": {"required": 2, "stream_mode": "optimistic",
                                     "timeout_seconds": 240}},
        )
        for chunk in s:
            for ch in chunk.choices:
                if ch.delta.content:
                    deltas.append(ch.delta.content)
        return {"streamed": "".join(deltas), "raised": None}
    except openai.APIError as e:
        return {"streamed": "".join(deltas), "raised": type(e).__name__, "body": e.body}


PHASES = {"models": phase_models, "replaced": phase_replaced, "quota": phase_quota, "chat": phase_chat, "embeddings": phase_embeddings,
          "completion": phase_completion,
          "errors": phase_errors, "auth": phase_auth}

if __name__ == "__main__":
    phase, base_url, key = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(PHASES[phase](client(base_url, key), arg)))
