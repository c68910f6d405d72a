"""The official openai SDK through spendgate for images, speech to text and batches.

Env: OPENAI_BASE_URL (the proxy's /openai/v1 mount) and CASE (images, transcriptions or
batches). Each call names its own profile; the Rust side checks what each was charged and
what the mock upstream received. The client holds a fake key: the proxy injects the real one.
"""

import os
import sys

import openai

client = openai.OpenAI(api_key="sk-client-fake", base_url=os.environ["OPENAI_BASE_URL"], max_retries=0, timeout=30.0)

# The audio uploaded: every byte value, so the Rust side can find it whole in the forwarded form.
AUDIO = bytes(range(256)) * 100


def profile(p):
    return {"X-Profile-Id": p}


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def images():
    # DALL-E 2: two pictures, priced per image from the request.
    r = client.images.generate(model="dall-e-2", prompt="A tide table at dawn", n=2, size="1024x1024", extra_headers=profile("p-img-dalle2"))
    check(r.data is not None and len(r.data) == 2, f"dall-e-2 images {r.data}")
    check([d.url for d in r.data] == ["https://images.test/tide-0.png", "https://images.test/tide-1.png"], f"dall-e-2 urls {r.data}")
    check(r.usage is None, f"dall-e-2 usage {r.usage}")

    # GPT Image: priced from the answer's token usage.
    r = client.images.generate(model="gpt-image-1", prompt="A tide table at dawn", size="1024x1024", quality="medium", extra_headers=profile("p-img-gpt"))
    check(r.data is not None and len(r.data) == 1 and r.data[0].b64_json == "aW1hZ2U=", f"gpt-image-1 data {r.data}")
    check(r.usage.input_tokens == 50 and r.usage.output_tokens == 4160, f"gpt-image-1 usage {r.usage}")

    # An edit of two pictures: a multipart upload with `image[]` parts.
    pictures = [("a.png", b"\x89PNG-first", "image/png"), ("b.png", b"\x89PNG-second", "image/png")]
    r = client.images.edit(model="gpt-image-1", image=pictures, prompt="Merge the tide tables", size="1024x1024", extra_headers=profile("p-img-edit"))
    check(r.data is not None and r.data[0].b64_json == "ZWRpdA==", f"edit data {r.data}")
    check(r.usage.input_tokens == 1200, f"edit usage {r.usage}")


def transcriptions():
    # whisper-1, verbose: usage of type duration.
    t = client.audio.transcriptions.create(
        model="whisper-1", file=("tide.mp3", AUDIO, "audio/mpeg"), response_format="verbose_json", extra_headers=profile("p-stt-verbose")
    )
    check(t.text == "Low tide is at 06:40.", f"verbose text {t.text!r}")
    check(t.duration == 42.0 and t.language == "english", f"verbose fields {t}")
    check(t.usage is not None and t.usage.type == "duration" and t.usage.seconds == 42, f"verbose usage {t.usage}")

    # whisper-1, json.
    t = client.audio.transcriptions.create(model="whisper-1", file=("tide.mp3", AUDIO, "audio/mpeg"), response_format="json", extra_headers=profile("p-stt-json"))
    check(t.text == "Low tide is at 06:40.", f"json text {t.text!r}")
    check(t.usage.type == "duration" and t.usage.seconds == 7.5, f"json usage {t.usage}")

    # gpt-4o-mini-transcribe: usage of type tokens.
    t = client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("tide.mp3", AUDIO, "audio/mpeg"), response_format="json", extra_headers=profile("p-stt-tokens")
    )
    check(t.text == "Low tide is at 06:40.", f"tokens text {t.text!r}")
    u = t.usage
    check(u.type == "tokens" and (u.input_tokens, u.input_token_details.audio_tokens, u.output_tokens) == (150, 130, 40), f"tokens usage {u}")

    # gpt-4o-mini-transcribe streamed: usage on the transcript.text.done event.
    events = list(
        client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("tide.mp3", AUDIO, "audio/mpeg"), stream=True, extra_headers=profile("p-stt-stream")
        )
    )
    check([e.type for e in events] == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"], f"events {events}")
    check("".join(e.delta for e in events[:-1]) == events[-1].text == "Low tide is at 06:40.", f"stream text {events}")
    check(events[-1].usage.input_tokens == 300 and events[-1].usage.output_tokens == 60, f"stream usage {events[-1].usage}")


def batches():
    try:
        client.batches.create(
            input_file_id="file-tides", endpoint="/v1/chat/completions", completion_window="24h", extra_headers=profile("p-batch")
        )
        check(False, "batches.create raised nothing")
    except openai.PermissionDeniedError as e:
        check(e.status_code == 403, f"status {e.status_code}")
        check(e.body["type"] == "endpoint_not_metered" and e.body["code"] == "endpoint_not_metered", f"body {e.body}")
        message = e.body["message"]
        check("POST /v1/batches is not metered by spendgate" in message, f"message {message}")
        check("providers.openai.unmetered" in message, f"message {message}")


{"images": images, "transcriptions": transcriptions, "batches": batches}[os.environ["CASE"]]()
print("openai media sdk: ok")
