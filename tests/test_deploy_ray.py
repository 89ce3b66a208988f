"""Ray Serve replicas of one artefact (optional extra: skipped without ray[serve]). Two replicas
on a local Ray instance must both serve, with the engine's own logits and paths."""
import sys
from pathlib import Path

import pytest
import torch

import dyninfer

ray = pytest.importorskip("ray", reason="Ray Serve replicas need the optional extra: pip install -e '.[ray]'")
serve = pytest.importorskip("ray.serve")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "service"))
import ray_serve  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def test_two_replicas_serve_the_engines_results(tmp_path):
    from test_deploy import randomize

    engine = dyninfer.compile(randomize(dyninfer.create_model("resnet20"), seed=31), input_shape=(3, 16, 16))
    art = engine.save(tmp_path / "r20.dyninfer", format="runtime")
    xs = [torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(24)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        handle = serve.run(ray_serve.build(str(art), replicas=2), name="dyninfer", route_prefix=None)
        answers = [r.result(timeout_s=120) for r in [handle.predict.remote(x.tolist()) for x in xs]]
        with pytest.raises(ValueError, match=r"has shape \[1, 3, 8, 8\]"):
            handle.predict.remote(torch.zeros(3, 8, 8).tolist()).result(timeout_s=60)
        after_error = handle.predict.remote(xs[0].tolist()).result(timeout_s=60)
    finally:
        serve.shutdown()
        ray.shutdown()
    logits, path = engine(torch.stack(xs), return_path=True)
    for i, a in enumerate(answers):
        assert torch.equal(torch.tensor(a["logits"][0]), logits[i])
        kept = {k: v[0].nonzero().flatten().tolist() for k, v in engine.split_path(path[i:i + 1]).items()}
        assert a["path"][0] == kept
    assert len({a["replica"] for a in answers}) == 2  # both replicas answered
    assert after_error["logits"] == answers[0]["logits"]  # a bad request did not break its replica
