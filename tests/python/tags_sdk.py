"""Attribution tags through each official SDK's default-headers option, against the mock.

Environment: BASE (the proxy's data-plane URL, every provider mounted at /<name>).
Each SDK's client carries X-Profile-Id and X-Spendgate-Tag in its default headers. Every
profile has one call a day tagged tool=script-writer (a limit with match: {tag}): the
second such call is refused with 402 while calls with other tags go on.
"""
import os
import sys

import anthropic
import openai
from elevenlabs.client import ElevenLabs
from elevenlabs.core.api_error import ApiError
from google import genai
from google.genai import errors, types

BASE = os.environ["BASE"]
MESSAGES = [{"role": "user", "content": "When is low tide?"}]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def headers(profile, tag):
    return {"X-Profile-Id": profile, "X-Spendgate-Tag": tag}


def openai_call(profile, tag):
    c = openai.OpenAI(api_key="sk-fake", base_url=f"{BASE}/openai/v1", max_retries=0, default_headers=headers(profile, tag))
    try:
        c.chat.completions.create(model="gpt-5-mini", messages=MESSAGES)
        return 200
    except openai.APIStatusError as e:
        return e.status_code


def anthropic_call(profile, tag):
    c = anthropic.Anthropic(api_key="sk-fake", base_url=f"{BASE}/anthropic", max_retries=0, default_headers=headers(profile, tag))
    try:
        c.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)
        return 200
    except anthropic.APIStatusError as e:
        return e.status_code


def genai_call(profile, tag):
    c = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=f"{BASE}/gemini", headers=headers(profile, tag)))
    try:
        c.models.generate_content(model="gemini-2.5-flash", contents="Write a haiku about tides.")
        return 200
    except errors.ClientError as e:
        return e.code


def elevenlabs_call(profile, tag):
    c = ElevenLabs(api_key="sk-test", base_url=f"{BASE}/elevenlabs", headers=headers(profile, tag))
    try:
        b"".join(c.text_to_speech.convert(voice_id="voice1", text="Hello there.", model_id="eleven_multilingual_v2"))
        return 200
    except ApiError as e:
        return e.status_code


for name, call in [("openai", openai_call), ("anthropic", anthropic_call), ("genai", genai_call), ("elevenlabs", elevenlabs_call)]:
    profile = f"p-tag-{name}"
    got = [
        call(profile, "tool=script-writer, team=video"),
        call(profile, "tool=thumbnails"),
        call(profile, "tool=script-writer"),
        call(profile, "tool=thumbnails"),
    ]
    check(got == [200, 200, 402, 200], f"{name}: {got}")
print("sdk: ok")
