"""Serving under load: N concurrent clients against a local `talelab serve`, with batching on and then off.

Each mode starts its own server in a subprocess on a free loopback port (one torch thread by default), sends one
warm-up request, then lets `--clients` clients loop over non-streaming `/v1/completions` requests (sampled, a fixed
seed per request, prompts taken in turn from a list of story beginnings) until `--seconds` pass or `--max-requests`
have been sent. The clients are plain asyncio HTTP/1.1 with keep-alive, light enough not to steal the server's CPU.
Prints requests/s, generated tokens/s, latency percentiles, the server's mean batch size and the count of 5xx answers;
exits non-zero if there was any.

    python benchmarks/serve_load.py [--model DIR] [--clients 16] [--seconds 20] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben went to the park.", "One day, a cat named Tom",
           "There was a big tree", "Sam had a red ball. He", "The sun was hot and", "Mia wanted to bake a cake"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def call(reader, writer, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One HTTP/1.1 request on a kept-alive connection: the status and the JSON body."""
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    payload = await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split()[1]), json.loads(payload)


async def once(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await call(reader, writer, method, path, body)
    finally:
        writer.close()


async def load(port: int, clients: int, seconds: float, max_requests: int, max_tokens: int) -> dict:
    sent, results = 0, []  # (status, latency s, completion tokens)
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < end and sent < max_requests:
            i, sent = sent, sent + 1
            body = {"model": "bench", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                    "temperature": 0.8, "top_p": 0.95, "seed": i}
            start = time.perf_counter()
            status, answer = await call(reader, writer, "POST", "/v1/completions", body)
            tokens = answer["usage"]["completion_tokens"] if status == 200 else 0
            results.append((status, time.perf_counter() - start, tokens))
        writer.close()

    await once(port, "POST", "/v1/completions", {"model": "bench", "prompt": "Hi", "max_tokens": 8})
    _, before = await once(port, "GET", "/health")
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    _, after = await once(port, "GET", "/health")
    ok = sorted(latency for status, latency, _ in results if status == 200)
    counters = {k: after["models"]["bench"][k] - before["models"]["bench"][k] for k in ("requests", "batches")}
    cut = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) > 1 else ok * 99
    return {"requests": len(results), "ok": len(ok), "server_errors": sum(s >= 500 for s, _, _ in results),
            "wall_s": wall, "requests_per_s": len(ok) / wall, "tokens_per_s": sum(t for *_, t in results) / wall,
            "p50_ms": 1000 * cut[49], "p95_ms": 1000 * cut[94], "p99_ms": 1000 * cut[98],
            "mean_batch": counters["requests"] / max(counters["batches"], 1)}


def run_mode(model: Path, batching: bool, args) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "talelab", "serve", "--model", f"bench={model}", "--port", str(port),
               "--max-concurrent", "4096", "--max-tokens", str(args.max_tokens),
               "--batching" if batching else "--no-batching"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{server.stderr.read().decode()}") from None
                time.sleep(0.2)
        return asyncio.run(load(port, args.clients, args.seconds, args.max_requests, args.max_tokens))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def default_model(out: Path) -> Path:
    """Karpathy's stories260K, imported from the shared folder."""
    from talelab import paths
    from talelab.models.convert import convert_llama2c

    return Path(convert_llama2c(paths.shared_file(paths.STORIES260K_MODEL),
                                paths.shared_file(paths.STORIES260K_TOKENIZER), out / "stories260K"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model or run directory (default: stories260K, imported)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per mode")
    parser.add_argument("--max-requests", type=int, default=5000, help="stop a mode after this many requests")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else default_model(Path(tmp))
        rows = [("on", run_mode(model, True, args)), ("off", run_mode(model, False, args))]
    print(f"{args.clients} clients, {args.seconds:g} s per mode, max_tokens {args.max_tokens}, "
          f"model {args.model or 'stories260K'}, {args.threads} server thread(s)\n")
    print("| batching | requests | requests/s | tokens/s | p50 ms | p95 ms | p99 ms | mean batch | 5xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in rows:
        print(f"| {mode} | {r['requests']:,} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{r['p50_ms']:,.0f} | {r['p95_ms']:,.0f} | {r['p99_ms']:,.0f} | {r['mean_batch']:.1f} | "
              f"{r['server_errors']} |")
    if any(r["server_errors"] for _, r in rows):
        raise SystemExit("server errors (5xx) under load")


if __name__ == "__main__":
    main()
