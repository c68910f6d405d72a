"""The official openai SDK against Gemini's OpenAI-compatible endpoint, through spendgate.

Env: BASE_URL (the proxy's /gemini/v1beta/openai/ path). A plain and a streamed chat
completion; the client's own key passes through (no key is injected for this provider).
"""

import os
import sys

import openai

client = openai.OpenAI(api_key="gemini-client-key", base_url=os.environ["BASE_URL"], max_retries=0, timeout=30.0)
MESSAGES = [{"role": "user", "content": "When is low tide?"}]


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


r = client.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES, extra_headers={"X-Profile-Id": "p-compat"})
check(r.choices[0].message.content == "Low tide is at 06:40.", f"content {r.choices}")
check((r.usage.prompt_tokens, r.usage.completion_tokens) == (1200, 800), f"usage {r.usage}")

# Streamed without asking for usage: Gemini puts it on the last chunk, with its choice.
chunks = list(client.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES, stream=True, extra_headers={"X-Profile-Id": "p-compat-stream"}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == "Low tide is at 06:40.", f"stream text {text!r}")
check(len(chunks) == 3, f"{len(chunks)} chunks")
check(chunks[-1].choices[0].finish_reason == "stop", f"last chunk {chunks[-1]}")

print("gemini openai-compat sdk: ok")
