"""The official anthropic SDK's message batches through spendgate: refused before the upstream.

Env: ANTHROPIC_BASE_URL (the proxy's /anthropic mount).
"""

import os
import sys

import anthropic

client = anthropic.Anthropic(api_key="sk-ant-client-fake", base_url=os.environ["ANTHROPIC_BASE_URL"], max_retries=0, timeout=30.0)


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


requests = [
    {"custom_id": f"tide-{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "When is low tide?"}]}}
    for i in range(3)
]
try:
    client.messages.batches.create(requests=requests, extra_headers={"X-Profile-Id": "p-batch"})
    check(False, "messages.batches.create raised nothing")
except anthropic.PermissionDeniedError as e:
    check(e.status_code == 403, f"status {e.status_code}")
    check(e.body["type"] == "error", f"body {e.body}")
    check(e.body["error"]["type"] == "endpoint_not_metered", f"error type {e.body}")
    message = e.body["error"]["message"]
    check("POST /v1/messages/batches is not metered by spendgate" in message, f"message {message}")
    check("message batches are billed when their results are produced" in message, f"reason {message}")
    check("providers.anthropic.unmetered" in message, f"message {message}")
    # The SDK's own message carries the body, so the reason is readable where the error is logged.
    check("providers.anthropic.unmetered" in str(e), f"str {e}")

print("anthropic batches sdk: ok")
