"""HTTP prediction service for a dyninfer artefact, with micro-batching (aiohttp).

    pip install -e ".[serve]"          # or, without torch: see README "The torch-free runtime"
    python examples/service/server.py model.dyninfer --port 8080 [--max-batch 16 --max-wait-ms 2 --queue 256]

Endpoints
  POST /predict   {"inputs": [C][H][W] or [B][C][H][W] numbers, "return_path": true}
                  -> {"predictions": [B], "logits": [B][...], "density": [B],
                      "path": [B]{gate name: [kept channel indices]}  (when return_path),
                      "latency_ms", "queue_ms", "compute_ms", "batch_size"}
  GET  /health    {"status": "ok"}
  GET  /info      the artefact's metadata, the batching settings and counters

The service needs numpy, aiohttp and dyninfer.runtime only: no torch. The artefact (written by
``engine.save(path, format="runtime")``) is loaded once (dyninfer.runtime.load: verified). Requests wait in a bounded asyncio queue;
one batcher task takes the first waiting request, then more until ``max_batch`` samples or
``max_wait_ms`` after the first, concatenates them and runs the engine once in a worker thread
(the event loop keeps accepting requests meanwhile). Latency fields are server-side: arrival to
answer, time queued, engine time of the micro-batch the request rode in.

Errors: malformed JSON or fields 400, wrong shape or non-finite values 422, more samples than
``max_batch`` or a too large body 413, a full queue 503 (with Retry-After). Every error is a JSON
{"error": message}; an engine failure is a 500 for the requests of that batch only.
"""
import argparse
import asyncio
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from aiohttp import web

import dyninfer.runtime as rt

__all__ = ["BatchConfig", "MicroBatcher", "make_app", "main"]


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 16        # samples per engine call
    max_wait_ms: float = 2.0   # how long the first request of a batch waits for company
    queue_size: int = 256      # requests waiting; beyond it: 503
    threads: int = 1           # runtime threads per engine call

    def __post_init__(self):
        if self.max_batch < 1 or self.queue_size < 1 or self.threads < 1:
            raise ValueError(f"BatchConfig: max_batch, queue_size and threads must be >= 1, got {self}")
        if not (0 <= self.max_wait_ms < 10_000) or math.isnan(self.max_wait_ms):
            raise ValueError(f"BatchConfig: max_wait_ms must be in [0, 10000), got {self.max_wait_ms}")


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class MicroBatcher:
    """Collects requests into micro-batches and runs the engine on them one batch at a time."""

    def __init__(self, engine, config: BatchConfig):
        self.engine, self.config = engine, config
        self.queue: asyncio.Queue = asyncio.Queue(config.queue_size)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dyninfer-engine")
        self.stats = {"requests": 0, "samples": 0, "batches": 0, "rejected_queue_full": 0, "engine_errors": 0}
        self._task: asyncio.Task | None = None
        self._carry = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> dict[str, Any]:
        """x: (n, C, H, W), n <= max_batch. Returns logits (n, ...), path (n, P) and timings."""
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((x, fut, time.perf_counter()))
        except asyncio.QueueFull:
            self.stats["rejected_queue_full"] += 1
            raise RequestError(503, f"server busy: {self.config.queue_size} requests already queued; retry later")
        return await fut

    async def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self.queue.get()
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._next(None)]
            n = items[0][0].shape[0]
            deadline = loop.time() + self.config.max_wait_ms / 1e3
            while n < self.config.max_batch:
                try:
                    item = await self._next(max(0.0, deadline - loop.time()))
                except (asyncio.TimeoutError, TimeoutError):
                    break
                if n + item[0].shape[0] > self.config.max_batch:
                    self._carry = item  # starts the next batch
                    break
                items.append(item)
                n += item[0].shape[0]
            items = [it for it in items if not it[1].done()]  # clients that went away
            if not items:
                continue
            x = np.concatenate([it[0] for it in items]) if len(items) > 1 else items[0][0]
            t0 = time.perf_counter()
            try:
                logits, path = await loop.run_in_executor(
                    self.pool, lambda: self.engine.run(x, return_path=True, threads=self.config.threads))
            except Exception as exc:  # an engine error fails this batch's requests, not the server
                self.stats["engine_errors"] += 1
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(RequestError(500, f"engine failed on this batch: {exc}"))
                continue
            t1 = time.perf_counter()
            self.stats["batches"] += 1
            start = 0
            for xi, fut, arrived in items:
                k = xi.shape[0]
                if not fut.done():
                    fut.set_result({"logits": logits[start:start + k], "path": path[start:start + k],
                                    "queue_ms": (t0 - arrived) * 1e3, "compute_ms": (t1 - t0) * 1e3,
                                    "batch_size": int(x.shape[0]), "arrived": arrived})
                start += k


def _parse(body: Any, engine, max_batch: int) -> tuple[np.ndarray, bool]:
    if not isinstance(body, dict) or "inputs" not in body:
        raise RequestError(400, 'body must be a JSON object with "inputs": [C][H][W] or [B][C][H][W] numbers')
    return_path = body.get("return_path", True)
    if not isinstance(return_path, bool):
        raise RequestError(400, f'"return_path" must be true or false, got {return_path!r}')
    try:
        x = np.asarray(body["inputs"], dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(400, f'"inputs" is not a rectangular array of numbers: {exc}')
    shape = tuple(engine.input_shape)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise RequestError(422, f'"inputs" has shape {list(x.shape)}; expected {list(shape)} or [B, {", ".join(map(str, shape))}]')
    if x.shape[0] == 0:
        raise RequestError(422, '"inputs" holds no sample')
    if x.shape[0] > max_batch:
        raise RequestError(413, f'"inputs" holds {x.shape[0]} samples; this server takes at most {max_batch} per request')
    if not np.isfinite(x).all():
        raise RequestError(422, '"inputs" contains NaN or Infinity')
    return x, return_path


def make_app(engine, config: BatchConfig = BatchConfig(), max_body_mb: float = 64) -> web.Application:
    """The aiohttp application serving ``engine`` (a dyninfer.runtime.Model)."""
    app = web.Application(client_max_size=int(max_body_mb * 2**20))
    batcher = MicroBatcher(engine, config)
    app["batcher"] = batcher

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def predict(request: web.Request) -> web.Response:
        arrived = time.perf_counter()
        try:
            try:
                body = await request.json(loads=_loads)
            except web.HTTPRequestEntityTooLarge as exc:
                raise RequestError(413, f"request body too large: {exc.text}")
            except ValueError as exc:
                raise RequestError(400, f"body is not valid JSON: {exc}")
            x, return_path = _parse(body, engine, config.max_batch)
            batcher.stats["requests"] += 1
            batcher.stats["samples"] += x.shape[0]
            r = await batcher.submit(x)
        except RequestError as exc:
            return error(exc.status, str(exc))
        logits, path = r["logits"], r["path"]
        out = {"predictions": logits.reshape(len(logits), -1).argmax(1).tolist(), "logits": logits.tolist(),
               "density": path.mean(1).tolist() if path.shape[1] else [1.0] * logits.shape[0]}
        if return_path:
            out["path"] = [{name: np.flatnonzero(z[0]).tolist() for name, z in engine.split_path(p[None]).items()}
                           for p in path]
        out.update(queue_ms=r["queue_ms"], compute_ms=r["compute_ms"], batch_size=r["batch_size"],
                   latency_ms=(time.perf_counter() - arrived) * 1e3)
        return web.json_response(out, headers={"X-Latency-Ms": f"{out['latency_ms']:.3f}"})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def info(request: web.Request) -> web.Response:
        meta = {"source": engine.source, "sha256": engine.digest, "format": rt.FORMAT, "format_version": rt.FORMAT_VERSION}
        return web.json_response({"model": meta, "input_shape": list(engine.input_shape),
                                  "output_shape": list(engine.output_shape), "gates": engine.gates_mode,
                                  "gate_names": engine.gate_names, "gate_sizes": engine.gate_sizes,
                                  "isa": rt.isa(), "batching": asdict(config), "stats": batcher.stats})

    async def on_startup(app):
        batcher.start()

    async def on_cleanup(app):
        await batcher.stop()

    app.router.add_post("/predict", predict)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def _loads(text: str) -> Any:
    import json

    # NaN / Infinity literals are accepted by json and refused later with a 422 naming them
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artefact", help='file written by engine.save(path, format="runtime")')
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-batch", type=int, default=BatchConfig.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=BatchConfig.max_wait_ms)
    p.add_argument("--queue", type=int, default=BatchConfig.queue_size)
    p.add_argument("--threads", type=int, default=BatchConfig.threads, help="runtime threads per engine call")
    args = p.parse_args(argv)
    try:
        config = BatchConfig(args.max_batch, args.max_wait_ms, args.queue, args.threads)
        engine = rt.load(args.artefact)
    except ValueError as exc:  # rt.ArtefactError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {args.artefact} ({engine}) on http://{args.host}:{args.port} with {config}", flush=True)
    web.run_app(make_app(engine, config), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
