from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.distribute.embedded import EmbeddedS3
from daemon.samples import speech_like, write_audio, write_face_clip


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated once per session: a moving face (the astronaut photo) and speech-like audio."""
    folder = tmp_path_factory.mktemp("media")
    return {
        "face": write_face_clip(folder / "anchor.mp4", 2.0, 25, (256, 256)),
        "face_b": write_face_clip(folder / "anchor_b.mp4", 1.0, 30, (320, 240), seed=3),
        "speech": write_audio(folder / "speech.wav", speech_like(3.0, seed=1)),
        "long_speech": write_audio(folder / "long.wav", speech_like(6.0, seed=2)),
    }


@pytest.fixture
def external(tmp_path: Path, embedded_s3: EmbeddedS3, s3_bucket: str, s3_prefix: str) -> dict[str, Any]:
    """The session's SeaweedFS configured as an external endpoint (no storage start per test), keys in a
    0600 credentials file."""
    keys = tmp_path / "s3-credentials"
    keys.write_text(
        f"aws_access_key_id={embedded_s3.access_key}\naws_secret_access_key={embedded_s3.secret_key}\n"
    )
    keys.chmod(0o600)
    return {
        "endpoint_url": embedded_s3.endpoint_url,
        "bucket": s3_bucket,
        "prefix": s3_prefix.rstrip("/"),
        "credentials_file": str(keys),
    }


@dataclass
class WebhookReceiver:
    """A JSON webhook endpoint on loopback: every POSTed body, in order."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    received = WebhookReceiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    received.url = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
