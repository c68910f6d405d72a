"""The official ElevenLabs SDK through spendgate, against the mock upstream.

Environment: BASE_URL (the proxy's /elevenlabs mount), FIXTURES (tests/fixtures).
Every text-to-speech variant, then a 402 surfacing as the SDK's ApiError.
"""
import json
import os
import sys

import httpx
from elevenlabs.client import ElevenLabs
from elevenlabs.core.api_error import ApiError

BASE_URL = os.environ["BASE_URL"]
FIXTURES = os.environ["FIXTURES"]


def request(name):
    with open(os.path.join(FIXTURES, "elevenlabs", name)) as f:
        return json.load(f)


def client(profile):
    return ElevenLabs(api_key="sk-test", base_url=BASE_URL, httpx_client=httpx.Client(headers={"X-Profile-Id": profile}, timeout=30))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


el = client("p-sdk")

r = request("tts_request.json")
audio = b"".join(el.text_to_speech.convert(voice_id="voice1", text=r["text"], model_id=r["model_id"]))
check(audio == b"\xff\xf3" * 1000, "convert returns the upstream audio")

r = request("tts_stream_request.json")
audio = b"".join(el.text_to_speech.stream(voice_id="voice1", text=r["text"], model_id=r["model_id"]))
check(audio == b"\xff\xf3" * 1000, "stream returns the upstream audio")

r = request("tts_with_timestamps_request.json")
ts = el.text_to_speech.convert_with_timestamps(voice_id="voice1", text=r["text"], model_id=r.get("model_id"))
check("".join(ts.alignment.characters) == "Hi there, Sam.", "with-timestamps alignment is readable")

r = request("tts_stream_with_timestamps_request.json")
chunks = list(el.text_to_speech.stream_with_timestamps(voice_id="voice1", text=r["text"], model_id=r["model_id"]))
check(len(chunks) == 3, f"stream-with-timestamps yields 3 objects, got {len(chunks)}")
text = "".join("".join(c.alignment.characters) for c in chunks if c.alignment)
check(text == "Good morning. Gates open at eight sharp.", f"stream alignments join, got {text!r}")

# A profile allowed one request a day: the second one is refused.
broke = client("p-broke")
r = request("tts_request.json")
b"".join(broke.text_to_speech.convert(voice_id="voice1", text=r["text"], model_id=r["model_id"]))
try:
    b"".join(broke.text_to_speech.convert(voice_id="voice1", text=r["text"], model_id=r["model_id"]))
    check(False, "the second request must be refused")
except ApiError as e:
    check(e.status_code == 402, f"status 402, got {e.status_code}")
    check(e.body["detail"]["status"] == "quota_exceeded", f"detail.status, got {e.body}")
    check(e.body["error"]["type"] == "quota_exceeded", "error.type")
    check("limit reached for profile p-broke" in e.body["error"]["message"], "message")
    check(int(e.headers["retry-after"]) > 0, "Retry-After")
print("ok")
