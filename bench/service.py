"""Benchmark: the service's HTTP ingest and its logging proxy, in one run.

1. HTTP ingest: `tutord run`'s API (`daemon/service/api.make_app` under uvicorn, in a
   process of its own as in a deployment, SQLite in a fresh home) receives `--batches`
   POSTs of 100 interaction records each from one keep-alive client in this process;
   prints records/s. Target: >= 10,000 records/s.
2. Proxy: the same requests (`max_tokens` 1, non-streaming) sent `--requests` times
   directly to an OpenAI-compatible upstream and through the proxy
   (`daemon/service/proxy.py`), alternating; prints the proxy's added latency at p50 and
   p99 and the throughput ratio (through the proxy / direct, `--concurrency` clients, in
   rounds that alternate between the two).
   Targets: under 2 ms added at p50, >= 95% of direct throughput. The upstream is a real
   vLLM server when `--vllm-url URL --vllm-model NAME` are given, else a minimal
   OpenAI-compatible stub (uvicorn, a process of its own) that answers at once, which
   isolates the proxy's own cost. The proxy, too, runs in a process of its own.
   `--vllm-model` is the folder the server serves (what tutord's `model.base` is).

    .venv/bin/python bench/service.py [--batches 100] [--requests 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from daemon import migrate
from daemon.home import Home
from daemon.settings import Settings
from replay.db import make_engine

TOKEN = "bench-token"


def _run(app: FastAPI, port: int) -> None:
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _api_process(root: str, settings: dict[str, Any], port: int) -> None:
    """A child process: tutord's API (with the proxy when a server URL is set) on `port`."""
    from daemon.service.api import make_app

    parsed = Settings.model_validate(settings)
    home, engine = make_home(Path(root), parsed)
    _run(make_app(engine, home, parsed), port)


def _stub_process(port: int) -> None:
    _run(stub_upstream(), port)


@contextlib.contextmanager
def serving(target: Callable[..., None], *args: Any) -> Iterator[int]:
    """`target(*args, port)` in a spawned process; yields the port once it accepts."""
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=target, args=(*args, port), daemon=True
    )
    child.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if not child.is_alive() or time.monotonic() > deadline:
                child.kill()
                raise RuntimeError(f"{target.__name__} did not start") from None
            time.sleep(0.05)
    try:
        yield port
    finally:
        child.terminate()
        child.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def record(i: int) -> dict[str, Any]:
    return {
        "id": f"bench-{i}",
        "messages": [
            {"role": "user", "content": f"What is {i % 97} + {i % 89}?"},
            {"role": "assistant", "content": f"The answer is {i % 97 + i % 89}."},
        ],
        "feedback": {"rating": 1} if i % 5 == 0 else None,
        "task": "add",
    }


def make_home(root: Path, settings: Settings) -> tuple[Home, Any]:
    home = Home(root)
    home.create()
    engine = make_engine(home.database_url(settings))
    migrate.upgrade(engine)
    return home, engine


def bench_ingest(batches: int) -> dict[str, float]:
    settings = {"service": {"api_token": TOKEN}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        serving(_api_process, str(Path(tmp) / "home"), settings) as port,
    ):
        bodies = [
            json.dumps({"records": [record(b * 100 + i) for i in range(100)]}).encode()
            for b in range(batches)
        ]
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            client.post("/v1/interactions", content=json.dumps(record(-1)))  # warm
            started = time.perf_counter()
            for body in bodies:
                answer = client.post("/v1/interactions", content=body)
                answer.raise_for_status()
            seconds = time.perf_counter() - started
    return {
        "records": batches * 100,
        "seconds": round(seconds, 3),
        "records_per_s": round(batches * 100 / seconds),
    }


def stub_upstream() -> FastAPI:
    """An OpenAI-compatible server that answers every chat completion at once."""
    app = FastAPI()
    answer = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }

    @app.post("/v1/chat/completions")
    async def chat(_: dict[str, Any]) -> dict[str, Any]:
        return answer

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "stub", "object": "model"}]}

    return app


async def _timed(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> float:
    started = time.perf_counter()
    answer = await client.post(url, json=body, headers=headers)
    answer.raise_for_status()
    return time.perf_counter() - started


async def _latencies(
    direct: str, proxied: str, body: dict[str, Any], n: int
) -> tuple[list[float], list[float]]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(5):  # warm both paths
            await _timed(client, direct, body, {})
            await _timed(client, proxied, body, auth)
        d, p = [], []
        for _ in range(n):
            d.append(await _timed(client, direct, body, {}))
            p.append(await _timed(client, proxied, body, auth))
    return d, p


async def _seconds_for(
    url: str, body: dict[str, Any], n: int, concurrency: int, headers: dict[str, str]
) -> float:
    """Seconds `concurrency` clients take to get `n` answers from `url`."""
    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        queue = list(range(n))
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                queue.pop()
                await _timed(client, url, body, headers)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


ROUNDS = 4
"""Throughput is measured in this many rounds, direct and proxied alternating, so a drift in
the server's own speed (vLLM on CPU varies by several percent) falls on both sides."""


def throughputs(
    direct_url: str, proxy_url: str, body: dict[str, Any], n: int, concurrency: int
) -> tuple[float, float]:
    """Requests per second directly and through the proxy, over alternating rounds."""
    per_round = max(concurrency, n // ROUNDS)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    direct = proxied = 0.0
    for _ in range(ROUNDS):
        direct += asyncio.run(_seconds_for(direct_url, body, per_round, concurrency, {}))
        proxied += asyncio.run(_seconds_for(proxy_url, body, per_round, concurrency, auth))
    return per_round * ROUNDS / direct, per_round * ROUNDS / proxied


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_proxy(
    requests: int, concurrency: int, vllm_url: str | None, vllm_model: str | None
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if vllm_url is None:  # the stub serves any name: a folder stands for the base
            upstream = f"http://127.0.0.1:{stack.enter_context(serving(_stub_process))}"
            (tmp / "stub").mkdir()
            (tmp / "stub" / "config.json").write_text("{}")
            model = str(tmp / "stub")
        else:
            upstream, model = vllm_url.rstrip("/"), vllm_model or ""
        settings = {
            "service": {"api_token": TOKEN},
            "model": {"backend": "openai", "server_url": upstream, "base": model},
        }
        port = stack.enter_context(serving(_api_process, str(tmp / "home"), settings))
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "max_tokens": 1,
            "temperature": 0,
        }
        direct_url = f"{upstream}/v1/chat/completions"
        proxy_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        d, p = asyncio.run(_latencies(direct_url, proxy_url, body, requests))
        added = [b - a for a, b in zip(d, p, strict=True)]
        direct_rps, proxy_rps = throughputs(direct_url, proxy_url, body, requests, concurrency)
    return {
        "upstream": "vllm" if vllm_url else "stub",
        "requests": requests,
        "direct_p50_ms": round(statistics.median(d) * 1000, 2),
        "proxy_p50_ms": round(statistics.median(p) * 1000, 2),
        "added_p50_ms": round(statistics.median(added) * 1000, 2),
        "added_p99_ms": round(percentile(added, 0.99) * 1000, 2),
        "direct_rps": round(direct_rps, 1),
        "proxy_rps": round(proxy_rps, 1),
        "throughput_ratio": round(proxy_rps / direct_rps, 3),
        "concurrency": concurrency,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--vllm-url", default=None)
    p.add_argument("--vllm-model", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = {
        "ingest": bench_ingest(a.batches),
        "proxy": bench_proxy(a.requests, a.concurrency, a.vllm_url, a.vllm_model),
    }
    if a.json:
        print(json.dumps(result, indent=1))
        return
    i, x = result["ingest"], result["proxy"]
    print(
        f"HTTP ingest: {i['records']} records in {i['seconds']} s: "
        f"{i['records_per_s']} records/s (target >= 10000)"
    )
    print(
        f"proxy ({x['upstream']} upstream, {x['requests']} requests): added latency p50 "
        f"{x['added_p50_ms']} ms, p99 {x['added_p99_ms']} ms (target p50 < 2 ms); throughput "
        f"{x['proxy_rps']} vs {x['direct_rps']} req/s direct at concurrency {x['concurrency']}: "
        f"{x['throughput_ratio']:.0%} (target >= 95%)"
    )


if __name__ == "__main__":
    main()
