"""Bounded load test of the prediction service on loopback.

    python examples/service/loadtest.py --spawn model.dyninfer --requests 2000 --concurrency 16
    python examples/service/loadtest.py --url http://127.0.0.1:8080 --requests 2000

Sends exactly ``--requests`` POST /predict requests (one sample each, inputs cycling over
``--distinct`` seeded random images) from ``--concurrency`` client tasks, each request with a
``--timeout`` limit, to a loopback address only; then prints and (``--out``) writes JSON:
client-side latency p50/p90/p99/max, the server's own latency/queue/compute p50/p99, mean
micro-batch size, throughput and the error count. ``--spawn`` starts server.py on a free loopback
port in a subprocess and stops it at the end. Exit status 1 if any request failed.
"""
import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_ready(url: str, proc: subprocess.Popen | None, seconds: float = 120) -> dict:
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode} before it was ready")
            try:
                async with s.get(url + "/info", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return await r.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"server at {url} not ready after {seconds} s")


async def run(url: str, requests: int, concurrency: int, distinct: int, timeout: float, seed: int = 0) -> dict:
    info = await _wait_ready(url, None)
    shape = info["input_shape"]
    g = np.random.default_rng(seed)
    bodies = [json.dumps({"inputs": g.standard_normal(shape, dtype=np.float32).tolist(), "return_path": True})
              for _ in range(distinct)]
    client, server, queue, compute, batch = [], [], [], [], []
    errors: dict[str, int] = {}
    counter = iter(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/predict", data=bodies[i % distinct],
                                        headers={"Content-Type": "application/json"}) as r:
                    body = await r.json()
                    if r.status != 200:
                        errors[f"HTTP {r.status}: {body.get('error', '')[:80]}"] = errors.get(f"HTTP {r.status}", 0) + 1
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            client.append((time.perf_counter() - t0) * 1e3)
            server.append(body["latency_ms"])
            queue.append(body["queue_ms"])
            compute.append(body["compute_ms"])
            batch.append(body["batch_size"])

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ok = len(client)
    return {
        "url": url, "requests": requests, "ok": ok, "errors": sum(errors.values()), "error_kinds": errors,
        "concurrency": concurrency, "wall_s": wall, "throughput_rps": ok / wall,
        "client_ms": {"p50": _pct(client, 50), "p90": _pct(client, 90), "p99": _pct(client, 99), "max": max(client, default=float("nan"))},
        "server_latency_ms": {"p50": _pct(server, 50), "p99": _pct(server, 99)},
        "server_queue_ms": {"p50": _pct(queue, 50), "p99": _pct(queue, 99)},
        "server_compute_ms": {"p50": _pct(compute, 50), "p99": _pct(compute, 99)},
        "mean_batch_size": statistics.fmean(batch) if batch else float("nan"),
        "server": {k: info[k] for k in ("batching", "isa", "gates", "input_shape")},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="running server, loopback only (http://127.0.0.1:PORT)")
    target.add_argument("--spawn", metavar="ARTEFACT", help="start server.py on this artefact for the test")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--distinct", type=int, default=64, help="distinct inputs cycled over")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--server-args", default="", help="extra server.py flags with --spawn, e.g. '--max-batch 8'")
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args(argv)
    if not (1 <= args.requests <= 1_000_000 and 1 <= args.concurrency <= 1024):
        p.error("--requests must be in [1, 1e6] and --concurrency in [1, 1024]")
    proc = None
    if args.spawn:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, str(HERE / "server.py"), args.spawn, "--port", str(port),
                                 *args.server_args.split()], env={**os.environ, "OMP_NUM_THREADS": "1"})
    else:
        url = args.url.rstrip("/")
        host = url.split("//", 1)[-1].split(":")[0].split("/")[0]
        if host not in ("127.0.0.1", "localhost", "[::1]") and not host.startswith("127."):
            p.error(f"--url must be a loopback address, got host {host!r}")
    try:
        if proc is not None:
            asyncio.run(_wait_ready(url, proc))
        report = asyncio.run(run(url, args.requests, args.concurrency, args.distinct, args.timeout))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    report["command"] = " ".join([os.path.basename(sys.executable), "examples/service/loadtest.py", *(argv or sys.argv[1:])])
    c = report["client_ms"]
    print(f"{report['ok']}/{report['requests']} ok, {report['errors']} errors {report['error_kinds'] or ''}; "
          f"concurrency {report['concurrency']}; {report['throughput_rps']:.0f} req/s; client latency ms "
          f"p50 {c['p50']:.2f} p90 {c['p90']:.2f} p99 {c['p99']:.2f} max {c['max']:.2f}; server latency p50 "
          f"{report['server_latency_ms']['p50']:.2f} p99 {report['server_latency_ms']['p99']:.2f}; "
          f"mean micro-batch {report['mean_batch_size']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
