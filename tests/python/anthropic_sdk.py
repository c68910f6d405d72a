"""The official anthropic SDK through spendgate, against the test mock.

Env: ANTHROPIC_BASE_URL (the proxy's /anthropic mount). Each call names its own profile (the
Rust side checks what each profile was charged) and the fixture the mock answers with. The
client holds a fake key (which this SDK sends as `Authorization: Bearer`): the proxy injects
the real one as `x-api-key`.
"""

import os
import sys

import anthropic

client = anthropic.Anthropic(api_key="sk-ant-client-fake", base_url=os.environ["ANTHROPIC_BASE_URL"], max_retries=0)


def headers(profile, fixture):
    return {"X-Profile-Id": profile, "X-Fixture": fixture}


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


MESSAGES = [{"role": "user", "content": "When is low tide?"}]

# Plain: cache writes and reads reported apart from input.
m = client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES, extra_headers=headers("p-sdk-msg", "anthropic/messages.json"))
u = m.usage
check((u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens, u.output_tokens) == (1530, 2048, 10240, 412), f"usage {u}")

# Streamed with the SDK's helper: the final message has the cumulative output.
with client.messages.stream(
    model="claude-haiku-4-5", max_tokens=1024, messages=MESSAGES, extra_headers=headers("p-sdk-msg-stream", "anthropic/messages_stream.sse")
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
check(text.startswith("The evening low tide"), f"text {text!r}")
check(final.usage.input_tokens == 472 and final.usage.output_tokens == 87, f"stream usage {final.usage}")

# Streamed raw events, with a web search.
events = list(
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=MESSAGES,
        stream=True,
        extra_headers=headers("p-sdk-msg-tools", "anthropic/messages_stream_cache_tools.sse"),
    )
)
deltas = [e for e in events if e.type == "message_delta"]
check(deltas and deltas[-1].usage.server_tool_use.web_search_requests == 1, f"tool use {deltas}")

# Counting tokens is free.
c = client.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES, extra_headers=headers("p-sdk-count", "anthropic/count_tokens.json"))
check(c.input_tokens == 2095, f"count {c}")

# The 402: the first call fits the profile's one request a day, the next ones do not.
client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES, extra_headers=headers("p-sdk-broke", "anthropic/messages.json"))
for stream in (False, True):
    try:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=1024, messages=MESSAGES, stream=stream, extra_headers=headers("p-sdk-broke", "anthropic/messages.json")
        )
        check(False, f"a refused call (stream={stream}) raised nothing")
    except anthropic.PaymentRequiredError as e:
        check(e.status_code == 402, f"status {e.status_code}")
        check(e.body["error"]["type"] == "quota_exceeded", f"body {e.body}")
        check(e.body["detail"]["error"] == "quota_exceeded", f"detail {e.body}")

print("anthropic sdk: ok")
