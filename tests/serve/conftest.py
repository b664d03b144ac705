"""Live servers on loopback for the serve tests: real models (the tiny trained run and stories260K), real uvicorn."""

from __future__ import annotations

import http.client
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import openai
import pytest
import uvicorn

from talelab.config import ServeConfig
from talelab.serve.app import create_app, load_models


@contextmanager
def live_server(models: dict[str, Path], continuous: bool = True, **config):
    """Serve `models` on a free loopback port in a thread; yield the base URL; shut down. `continuous=False`:
    static batches."""
    app = create_app(load_models([f"{name}={path}" for name, path in models.items()]), ServeConfig(**config),
                     continuous)
    with live_app(app) as url:
        yield url


@contextmanager
def live_app(app):
    """Serve an ASGI app on a free loopback port (the OS picks it) in a thread; yield its base URL; shut down."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post(url: str, path: str, body) -> tuple[int, dict]:
    """POST raw bytes (or a JSON-encoded object) and return the status and the decoded error body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=30)
    connection.request("POST", path, data, {"Content-Type": "application/json"})
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


def error_of(url: str, body, path: str = "/v1/completions", status: int = 400) -> dict:
    got, payload = post(url, path, body)
    assert got == status, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]


@pytest.fixture(scope="session")
def served(tiny_run, stories260k) -> dict[str, Path]:
    return {"tiny": tiny_run, "stories260K": stories260k}


@pytest.fixture(scope="session")
def server(served):
    """The two models with default settings (batching on), shared by the tests that need no special limits."""
    with live_server(served) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=60)
