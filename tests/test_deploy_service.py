"""The example HTTP service (examples/service, numpy + dyninfer.runtime, no torch): predictions equal
the torch engine's bit for bit, micro-batching
joins concurrent requests, bad requests get 4xx with a message and the server keeps serving, a
full queue answers 503, and the bounded loopback load test ends with zero errors."""
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dyninfer
import dyninfer.runtime

aiohttp = pytest.importorskip("aiohttp", reason="the service example needs the 'serve' extra (aiohttp)")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

SERVICE = Path(__file__).resolve().parents[1] / "examples" / "service"
sys.path.insert(0, str(SERVICE))
import server  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    from test_deploy import randomize

    engine = dyninfer.compile(randomize(dyninfer.create_model("resnet20"), seed=21), input_shape=(3, 16, 16))
    return engine.save(tmp_path_factory.mktemp("svc") / "r20.dyninfer", format="runtime")


def serve(artefact, config, scenario, **app_kw):
    """Run ``scenario(client, engine)`` against an in-process server on a loopback port."""
    engine = dyninfer.runtime.load(artefact)

    async def main():
        async with TestClient(TestServer(server.make_app(engine, config, **app_kw), host="127.0.0.1")) as client:
            return await scenario(client, engine)

    return asyncio.run(main())


def test_predictions_paths_and_batching(artefact):
    xs = [torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(24)]

    async def scenario(client, engine):
        async def one(x):
            r = await client.post("/predict", json={"inputs": x.tolist()})
            assert r.status == 200, await r.text()
            return await r.json()

        answers = await asyncio.gather(*(one(x) for x in xs))  # 24 at once: batched
        return answers, engine

    answers, _ = serve(artefact, server.BatchConfig(max_batch=8, max_wait_ms=20), scenario)
    engine = dyninfer.load(artefact)  # the torch engine on the same file
    logits, path = engine(torch.stack(xs), return_path=True)
    for i, a in enumerate(answers):
        assert torch.equal(torch.tensor(a["logits"][0], dtype=torch.float32), logits[i])  # float32 → JSON → exact
        assert a["predictions"] == [int(logits[i].argmax())]
        kept = engine.split_path(path[i:i + 1])
        assert a["path"][0] == {k: v[0].nonzero().flatten().tolist() for k, v in kept.items()}
        assert a["density"][0] == pytest.approx(path[i].mean().item())
        assert a["latency_ms"] >= a["compute_ms"] >= 0 and 1 <= a["batch_size"] <= 8
    assert max(a["batch_size"] for a in answers) > 1  # concurrent requests shared engine calls


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "body is not valid JSON"),
    (b'{"x": 1}', 400, 'must be a JSON object with "inputs"'),
    (b'[1, 2]', 400, 'must be a JSON object with "inputs"'),
    (b'{"inputs": [[1, 2], [3]]}', 400, "not a rectangular array of numbers"),
    (b'{"inputs": "abc"}', 400, "not a rectangular array of numbers"),
    (b'{"inputs": [1, 2, 3]}', 422, "has shape [3]; expected [3, 16, 16]"),
    (json.dumps({"inputs": torch.zeros(3, 8, 8).tolist()}).encode(), 422, "has shape [1, 3, 8, 8]"),
    (json.dumps({"inputs": torch.zeros(5, 3, 16, 16).tolist()}).encode(), 413, "at most 4 per request"),
    (json.dumps({"inputs": torch.full((3, 16, 16), float("nan")).tolist()}).encode(), 422, "NaN or Infinity"),
    (json.dumps({"inputs": torch.zeros(3, 16, 16).tolist(), "return_path": "yes"}).encode(), 400, '"return_path" must be'),
    (b'{"inputs": []}', 422, "has shape [0]"),
])
def test_bad_requests_get_4xx_and_server_survives(artefact, body, status, message):
    async def scenario(client, engine):
        r = await client.post("/predict", data=body, headers={"Content-Type": "application/json"})
        got = (r.status, (await r.json())["error"])
        ok = await client.post("/predict", json={"inputs": torch.zeros(3, 16, 16).tolist(), "return_path": False})
        assert ok.status == 200 and "path" not in await ok.json()
        return got

    got_status, got_message = serve(artefact, server.BatchConfig(max_batch=4), scenario)
    assert got_status == status and message in got_message, got_message


def test_oversized_body_413_and_full_queue_503(artefact):
    async def scenario(client, engine):
        big = await client.post("/predict", data=b"[" + b"0," * 600_000 + b"0]",
                                headers={"Content-Type": "application/json"})
        assert big.status == 413
        x = torch.zeros(3, 16, 16).tolist()
        rs = await asyncio.gather(*(client.post("/predict", json={"inputs": x}) for _ in range(40)))
        statuses = [r.status for r in rs]
        busy = [await r.json() for r in rs if r.status == 503]
        info = await (await client.get("/info")).json()
        return statuses, busy, info

    statuses, busy, info = serve(artefact, server.BatchConfig(max_batch=1, max_wait_ms=0, queue_size=2), scenario,
                                 max_body_mb=1)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    assert "server busy" in busy[0]["error"]
    assert info["stats"]["rejected_queue_full"] == statuses.count(503)


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_batch"):
        server.BatchConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        server.BatchConfig(max_wait_ms=-1)


def test_bounded_load_test_has_zero_errors(artefact, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(SERVICE / "loadtest.py"), "--spawn", str(artefact), "--requests", "300",
                           "--concurrency", "8", "--timeout", "30", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] == 300 and report["errors"] == 0
    assert report["client_ms"]["p50"] <= report["client_ms"]["p99"]
    assert report["mean_batch_size"] >= 1
