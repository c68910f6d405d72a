"""The official google-genai SDK in Vertex AI mode (express, with an API key) through
spendgate, against the test mock: Imagen, Veo and its polling, text generation.

Env: VERTEX_BASE_URL (the proxy's vertex mount). Each call uses its own profile; the Rust side
checks what each was charged.
"""

import os
import sys
import warnings

from google import genai
from google.genai import types

warnings.simplefilter("ignore")


def client(profile):
    return genai.Client(
        vertexai=True,
        api_key="vertex-client-key",
        http_options=types.HttpOptions(base_url=os.environ["VERTEX_BASE_URL"], headers={"X-Profile-Id": profile}),
    )


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


# Keep every client alive while it is used (a collected client closes its connections).
img, veo, poller, text, stream = (client(p) for p in ("p-gx-img", "p-gx-veo", "p-gx-poll", "p-gx-text", "p-gx-stream"))

r = img.models.generate_images(
    model="imagen-4.0-generate-001", prompt="A lighthouse at dusk, watercolor", config=types.GenerateImagesConfig(number_of_images=2)
)
check(len(r.generated_images) == 2, f"{len(r.generated_images)} images")

op = veo.models.generate_videos(model="veo-3.1-generate-001", prompt="A ferry crossing a calm bay", config=types.GenerateVideosConfig(duration_seconds=6))
check(not op.done, "the operation is pending")
op = poller.operations.get(op)
check(op.done and op.response.generated_videos, f"operation {op}")

r = text.models.generate_content(model="gemini-2.5-flash", contents="When is low tide?")
check(r.usage_metadata.prompt_token_count == 24, f"usage {r.usage_metadata}")
chunks = list(stream.models.generate_content_stream(model="gemini-2.5-flash", contents="When is low tide?"))
check(chunks[-1].usage_metadata.thoughts_token_count == 301, f"stream usage {chunks[-1].usage_metadata}")

print("genai vertex sdk: ok")
