"""The API's OpenAPI document, as /openapi.json serves it. `python -m daemon.api.openapi docs/openapi.json`
writes the committed copy; a test keeps the two the same."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.config import Config, PathsConfig
from daemon.files import write_atomic


def openapi_document() -> dict[str, Any]:
    from daemon.api.app import create_app

    with tempfile.TemporaryDirectory() as scratch:  # the app opens a store; a throwaway one will do
        root = Path(scratch)
        paths = PathsConfig(shared=root, inbox=root / "inbox", state=root / "state", models=root / "models")
        app = create_app(Config(paths=paths), environ={})
        document: dict[str, Any] = app.openapi()
        app.state.api.close()
        return document


def openapi_text() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    write_atomic(Path(sys.argv[1]), openapi_text())


if __name__ == "__main__":
    main()
