"""The official openai SDK through spendgate, against the test mock.

Env: OPENAI_BASE_URL (the proxy's /openai/v1 mount). Each call names its own profile (the Rust
side checks what each profile was charged) and the fixture the mock answers with. The client
holds a fake key: the proxy injects the real one.
"""

import os
import sys

import openai

client = openai.OpenAI(api_key="sk-client-fake", base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)


def headers(profile, fixture):
    return {"X-Profile-Id": profile, "X-Fixture": fixture}


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


MESSAGES = [{"role": "user", "content": "When is low tide?"}]

# Plain chat completion: cached and reasoning tokens reported.
r = client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, extra_headers=headers("p-sdk-chat", "openai/chat_completions.json"))
check(r.usage.prompt_tokens == 2006 and r.usage.prompt_tokens_details.cached_tokens == 1920, f"chat usage {r.usage}")
check(r.usage.completion_tokens_details.reasoning_tokens == 896, f"chat reasoning {r.usage}")
check(r.choices[0].message.content.startswith("Low tide"), "chat content")

# Streamed, usage asked for: the final chunk carries it.
chunks = list(
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers("p-sdk-stream-usage", "openai/chat_completions_stream_include_usage.sse"),
    )
)
check(len(chunks) == 6, f"{len(chunks)} chunks with usage")
check(chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 37, f"usage chunk {chunks[-1]}")

# Streamed, usage not asked for: exactly the chunks the upstream sends such a client.
chunks = list(
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers=headers("p-sdk-stream", "openai/chat_completions_stream_include_usage.sse"),
    )
)
check(len(chunks) == 5, f"{len(chunks)} chunks without usage")
check(all(c.choices for c in chunks), "no chunk without choices")
check(all("usage" not in c.model_fields_set for c in chunks), "no usage member in any chunk")
text = "".join(c.choices[0].delta.content or "" for c in chunks)
check(text == "Low tide is at 06:40.", f"stream text {text!r}")

# Responses, plain and streamed.
r = client.responses.create(model="gpt-5", input="When does the ferry leave?", extra_headers=headers("p-sdk-resp", "openai/responses.json"))
check(r.usage.input_tokens == 75 and r.usage.output_tokens == 1186, f"responses usage {r.usage}")
events = list(client.responses.create(model="gpt-4.1-mini", input="Ferry?", stream=True, extra_headers=headers("p-sdk-resp-stream", "openai/responses_stream.sse")))
check(events[-1].type == "response.completed", f"last event {events[-1].type}")
check(events[-1].response.usage.input_tokens_details.cached_tokens == 1536, f"responses stream usage {events[-1].response.usage}")

# Embeddings (the SDK asks for base64 and decodes it).
r = client.embeddings.create(model="text-embedding-3-small", input="harbour", extra_headers=headers("p-sdk-emb", "openai/embeddings_base64.json"))
check(r.usage.prompt_tokens == 8 and len(r.data[0].embedding) == 4, f"embeddings {r.usage}")

# The 402: the first call fits the profile's one request a day, the next ones do not.
client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, extra_headers=headers("p-sdk-broke", "openai/chat_completions.json"))
for stream in (False, True):
    try:
        client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, stream=stream, extra_headers=headers("p-sdk-broke", "openai/chat_completions.json"))
        check(False, f"a refused call (stream={stream}) raised nothing")
    except openai.APIStatusError as e:
        check(e.status_code == 402, f"status {e.status_code}")
        check(e.body["code"] == "quota_exceeded" and e.body["type"] == "quota_exceeded", f"body {e.body}")
        check(e.body["limit"]["metric"] == "requests", f"limit {e.body}")
        check("Daily" in e.message or "daily" in e.message, f"message {e.message}")

print("openai sdk: ok")
