"""The official google-genai SDK through spendgate, against the mock upstream.

Environment: BASE_URL (the proxy's /gemini mount). Plain, streamed and token counting,
then a 402 surfacing as the SDK's ClientError.
"""
import os
import sys

from google import genai
from google.genai import errors, types

BASE_URL = os.environ["BASE_URL"]


def client(profile):
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=BASE_URL, headers={"X-Profile-Id": profile}))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


c = client("p-sdk")
r = c.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku about tides.")
check(r.usage_metadata.total_token_count == 825, f"usage total, got {r.usage_metadata}")
check(r.text, "text is readable")

chunks = list(c.models.generate_content_stream(model="gemini-2.5-flash", contents="Write a haiku about tides."))
check(len(chunks) == 3, f"3 chunks, got {len(chunks)}")
check(chunks[-1].usage_metadata.total_token_count == 339, "final usage")

n = c.models.count_tokens(model="gemini-2.5-flash", contents="Write a haiku about tides.")
check(n.total_tokens == 31, f"count tokens, got {n}")

broke = client("p-broke")
broke.models.generate_content(model="gemini-2.5-flash", contents="one")
try:
    broke.models.generate_content(model="gemini-2.5-flash", contents="two")
    check(False, "the second request must be refused")
except errors.ClientError as e:
    check(e.code == 402, f"code 402, got {e.code}")
    check(e.status == "QUOTA_EXCEEDED", f"status, got {e.status}")
    check("limit reached for profile p-broke" in e.message, f"message, got {e.message}")
    check(e.details["detail"]["error"] == "quota_exceeded", "details carry the whole body")

try:
    for _ in broke.models.generate_content_stream(model="gemini-2.5-flash", contents="three"):
        pass
    check(False, "a refused stream must raise")
except errors.ClientError as e:
    check(e.code == 402, f"stream refusal code 402, got {e.code}")
print("ok")
