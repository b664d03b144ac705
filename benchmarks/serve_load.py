"""Serving under load: N concurrent clients against a local `talelab serve`, comparing its batching modes.

Each mode starts its own server in a subprocess on a free loopback port (one torch thread by default), sends one
warm-up request, then lets `--clients` clients loop over non-streaming `/v1/completions` requests (sampled, a fixed
seed per request, prompts taken in turn from a list of story beginnings) until `--seconds` pass or `--max-requests`
have been sent. The clients are plain asyncio HTTP/1.1 with keep-alive, light enough not to steal the server's CPU.
Prints requests/s, generated tokens/s, latency percentiles, the server's mean live rows per decoding step and the
count of 5xx answers; exits non-zero if there was any.

By default every request asks for `--max-tokens` and batching on (continuous) is compared with batching off (one
request at a time). `--mixed` (32 clients unless `--clients` says otherwise) draws each request's max_tokens from 16
to 256 with a seeded generator, the same draws in each mode, and compares static batching (a request waits for the
running batch to end) with continuous batching (it joins the batch at the next step): the p95 latency of the short
requests (max_tokens <= 64) and the ratios are printed as well.

    python benchmarks/serve_load.py [--model DIR] [--clients 16] [--seconds 20] [--max-tokens 64] [--mixed]
                                    [--max-batch 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from talelab.config import ServeConfig
from talelab.serve.app import run_server

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


async def load(port: int, args, budgets: list[int]) -> dict:
    """Clients looping over requests, request i asking for budgets[i] tokens; the figures of the run."""
    sent, results = 0, []  # (status, latency s, completion tokens, max_tokens)
    end = time.monotonic() + args.seconds

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < end and sent < len(budgets):
            i, sent = sent, sent + 1
            body = {"model": "bench", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": budgets[i],
                    "temperature": 0.8, "top_p": 0.95, "seed": i}
            start = time.perf_counter()
            status, answer = await call(reader, writer, "POST", "/v1/completions", body)
            tokens = answer["usage"]["completion_tokens"] if status == 200 else 0
            results.append((status, time.perf_counter() - start, tokens, budgets[i]))
        writer.close()

    await once(port, "POST", "/v1/completions", {"model": "bench", "prompt": "Hi", "max_tokens": 8})
    _, before = await once(port, "GET", "/health")
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.perf_counter() - started
    _, after = await once(port, "GET", "/health")
    counters = {k: after["models"]["bench"][k] - before["models"]["bench"][k] for k in ("steps", "row_steps")}
    ok = [(latency, budget) for status, latency, _, budget in results if status == 200]
    return {"requests": len(results), "ok": len(ok), "server_errors": sum(r[0] >= 500 for r in results),
            "wall_s": wall, "requests_per_s": len(ok) / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
            **percentiles_ms([latency for latency, _ in ok]),
            "short_p95_ms": percentiles_ms([latency for latency, budget in ok if budget <= SHORT])["p95_ms"],
            "mean_rows": counters["row_steps"] / max(counters["steps"], 1)}


SHORT = 64  # --mixed: requests asking for at most this many tokens count as short


def percentiles_ms(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    cut = statistics.quantiles(sorted(latencies), n=100, method="inclusive") if len(latencies) > 1 \
        else latencies * 99
    return {"p50_ms": 1000 * cut[49], "p95_ms": 1000 * cut[94], "p99_ms": 1000 * cut[98]}


def run_mode(model: Path, mode: str, args, budgets: list[int]) -> dict:
    """Serve `model` batching as `mode` says (continuous, static or off) in a subprocess, and load it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--model", str(model),
               "--port", str(port), "--max-tokens", str(max(budgets)), "--max-batch", str(args.max_batch)]
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
        return asyncio.run(load(port, args, budgets))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def serve(args) -> None:
    """This script as the server of one mode: `talelab serve` with batching off, static or continuous (static
    batching has no flag of its own: it is kept for this comparison only)."""
    config = ServeConfig(port=args.port, max_concurrent=4096, max_tokens=args.max_tokens,
                         batching=args.serve != "off", max_batch=args.max_batch)
    run_server([f"bench={args.model}"], config, continuous=args.serve == "continuous")


def default_model(out: Path) -> Path:
    """Karpathy's stories260K, imported from the shared folder."""
    from talelab import paths
    from talelab.models.convert import convert_llama2c

    return Path(convert_llama2c(paths.shared_file(paths.STORIES260K_MODEL),
                                paths.shared_file(paths.STORIES260K_TOKENIZER), out / "stories260K"))


def table(rows: list[tuple[str, dict]], short: bool) -> None:
    print("| batching | requests | requests/s | tokens/s | p50 ms | p95 ms | p99 ms |"
          + (f" short p95 ms (max_tokens <= {SHORT}) |" if short else "") + " mean live rows | 5xx |")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if short else "") + "---:|---:|")
    for mode, r in rows:
        print(f"| {mode} | {r['requests']:,} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:,.0f} | "
              f"{r['p50_ms']:,.0f} | {r['p95_ms']:,.0f} | {r['p99_ms']:,.0f} | "
              + (f"{r['short_p95_ms']:,.0f} | " if short else "") + f"{r['mean_rows']:.1f} | {r['server_errors']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model or run directory (default: stories260K, imported)")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 16; --mixed: 32)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per mode")
    parser.add_argument("--max-requests", type=int, default=5000, help="stop a mode after this many requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="every request's max_tokens (not with --mixed)")
    parser.add_argument("--mixed", action="store_true", help="max_tokens drawn from 16 to 256 per request; static "
                        "against continuous batching")
    parser.add_argument("--seed", type=int, default=0, help="--mixed: seed of the max_tokens draws")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--max-batch", type=int, default=ServeConfig.max_batch, help="most rows in one batch")
    parser.add_argument("--serve", choices=["continuous", "static", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    args.clients = args.clients or (32 if args.mixed else 16)
    draws = random.Random(args.seed)
    budgets = [draws.randint(16, 256) if args.mixed else args.max_tokens for _ in range(args.max_requests)]
    modes = ["static", "continuous"] if args.mixed else ["continuous", "off"]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else default_model(Path(tmp))
        rows = [(mode, run_mode(model, mode, args, budgets)) for mode in modes]
    workload = "max_tokens 16-256 (seeded)" if args.mixed else f"max_tokens {args.max_tokens}"
    print(f"{args.clients} clients, {args.seconds:g} s per mode, {workload}, model {args.model or 'stories260K'}, "
          f"max_batch {args.max_batch}, {args.threads} server thread(s)\n")
    table(rows, short=args.mixed)
    if args.mixed:
        (_, static), (_, continuous) = rows
        print(f"\ncontinuous / static: {continuous['requests_per_s'] / static['requests_per_s']:.2f}x requests/s "
              f"(goal >= 2), short-request p95 {continuous['short_p95_ms'] / static['short_p95_ms']:.2f}x "
              f"(goal <= 0.33), p95 {continuous['p95_ms'] / static['p95_ms']:.2f}x")
    if any(r["server_errors"] for _, r in rows):
        raise SystemExit("server errors (5xx) under load")


if __name__ == "__main__":
    main()
