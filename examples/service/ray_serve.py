"""Scale-out past one process: the artefact served by Ray Serve replicas (optional extra).

    pip install -e ".[ray]"
    python examples/service/ray_serve.py model.dyninfer --replicas 2     # HTTP on 127.0.0.1:8000/predict

Each replica loads the artefact (engine.save(path, format="runtime")) once with dyninfer.runtime
(verified; numpy only, no torch) and runs it on one thread; Ray Serve's @serve.batch does the micro-batching inside a replica and its router spreads
requests over replicas (on one machine or a Ray cluster: `ray start --head` on one node,
`ray start --address=HEAD:6379` on the others, then run this script on the head). The request and
answer bodies are those of examples/service/server.py (POST {"inputs": ..., "return_path": bool}).
"""
import argparse
import os
import sys
import time

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(ray_actor_options={"num_cpus": 1})
class DyninferReplica:
    def __init__(self, artefact: str, max_batch: int = 16):
        import dyninfer.runtime as rt

        self.engine = rt.load(artefact)
        self.max_batch = max_batch
        self.replica = f"{os.getpid()}"

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _run(self, xs: list[np.ndarray]) -> list[dict]:
        sizes = [x.shape[0] for x in xs]
        t0 = time.perf_counter()
        logits, path = self.engine.run(np.concatenate(xs), return_path=True, threads=1)
        compute_ms = (time.perf_counter() - t0) * 1e3
        out, start = [], 0
        for k in sizes:
            out.append({"logits": logits[start:start + k], "path": path[start:start + k], "compute_ms": compute_ms,
                        "batch_size": int(sum(sizes))})
            start += k
        return out

    async def predict(self, inputs, return_path: bool = True) -> dict:
        """The answer for one request; raises ValueError with a message for bad inputs."""
        t0 = time.perf_counter()
        try:
            x = np.asarray(inputs, dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f'"inputs" is not a rectangular array of numbers: {exc}') from None
        if x.ndim == 3:
            x = x[None]
        shape = list(self.engine.input_shape)
        if x.ndim != 4 or list(x.shape[1:]) != shape or not 1 <= x.shape[0] <= self.max_batch:
            raise ValueError(f'"inputs" has shape {list(x.shape)}; expected {shape} or [B <= {self.max_batch}, *{shape}]')
        if not np.isfinite(x).all():
            raise ValueError('"inputs" contains NaN or Infinity')
        r = await self._run(x)
        logits, path = r["logits"], r["path"]
        out = {"predictions": logits.reshape(len(logits), -1).argmax(1).tolist(), "logits": logits.tolist(),
               "density": path.mean(1).tolist() if path.shape[1] else [1.0] * logits.shape[0],
               "compute_ms": r["compute_ms"], "batch_size": r["batch_size"], "replica": self.replica}
        if return_path:
            out["path"] = [{n: np.flatnonzero(z[0]).tolist() for n, z in self.engine.split_path(p[None]).items()}
                           for p in path]
        out["latency_ms"] = (time.perf_counter() - t0) * 1e3
        return out

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"body is not valid JSON: {exc}"}, status_code=400)
        if not isinstance(body, dict) or "inputs" not in body:
            return JSONResponse({"error": 'body must be a JSON object with "inputs"'}, status_code=400)
        try:
            return JSONResponse(await self.predict(body["inputs"], bool(body.get("return_path", True))))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)


def build(artefact: str, replicas: int = 2, max_batch: int = 16):
    """The Ray Serve application: ``replicas`` copies of the engine."""
    return DyninferReplica.options(num_replicas=replicas).bind(os.path.abspath(artefact), max_batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artefact")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build(args.artefact, args.replicas), route_prefix="/predict", blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
