"""Training loop: a short gated digits run must learn and move the gate density toward R;
config validation and the CLI plumbing."""
from __future__ import annotations

import json

import pytest
import torch

from torch.utils.data import DataLoader, Subset

from dyninfer.checkpoint import CheckpointError, load_model, read_metadata
from dyninfer.cli import main
from dyninfer.models import create_model
from dyninfer.nn import gates as dyninfer_gates
from dyninfer.data import load_dataset
from dyninfer.train import TrainConfig, evaluate, load_init_weights, train


def test_short_gated_run_learns_and_sparsifies(tmp_path):
    """Dense pre-training (3 short epochs) then 2 gated epochs with R = 0.5, through train()'s own
    dense->gated path. A loop that did not step, dropped the CE gradient or cut the gates out of
    the graph fails one of the asserts below."""
    cfg = TrainConfig(model="resnet20", dataset="digits", gated=True, epochs=2, dense_epochs=3, batch_size=32,
                      lr=0.05, dense_lr=0.1, milestones=(1.0,), train_subset=384, test_subset=128,
                      lambda_mi=0.01, lambda_kl=0.0, lambda_s=0.05, target_ratio=0.5, threads=1,
                      hard_gates_from=None, rt_decay=None,  # 2 epochs: SemHash and every term in both
                      macs_samples=32, progress=False, out_dir=str(tmp_path / "run"))
    result = train(cfg)
    dense, h = result.dense.history, result.history
    assert len(dense) == 3 and len(h) == 2
    # learning: the untrained net starts at chance (CE ~ 2.3); 36 dense SGD steps must cut it down
    assert dense[0]["train_loss"] > 2.0
    assert dense[-1]["train_loss"] < 0.8 * dense[0]["train_loss"], [e["train_loss"] for e in dense]
    assert "density_mean" not in dense[-1] and dense[-1]["macs_effective"] == dense[-1]["macs_dense"]
    # the gated model starts from the dense weights with every gate open: density 1, effective = dense MACs
    start_model = create_model("resnet20", gated=True)
    assert load_init_weights(start_model, result.dense.last_path) == "dense->gated"
    test = Subset(load_dataset("digits", split="test"), range(128))
    start = evaluate(start_model, DataLoader(test, batch_size=128), macs_samples=32)
    assert start["density_mean"] == 1.0 and start["macs_effective"] == start["macs_dense"]
    assert start["test_acc"] == dense[-1]["test_acc"]
    # sparsity: density moves from 1.0 toward R = 0.5 without collapsing; MACs fall with it
    assert 0.1 < h[-1]["density_mean"] < 0.85, h[-1]["density"]
    assert h[-1]["macs_effective"] < 0.9 * h[-1]["macs_dense"]
    assert set(h[-1]["train_parts"]) == {"ce", "mi", "kl", "sparsity", "bs", "rt"}
    cond = h[-1]["conditionality"]  # conditionality figures logged every epoch
    assert cond["density"] == h[-1]["density_mean"] and 0.0 <= cond["dynamic_share"] <= 1.0
    assert cond["static_accuracy"] is not None and sum(cond["histogram"]) == 672  # ResNet-20: 6 x (16 + 32 + 64) gated filters
    assert h[-1]["train_parts"]["sparsity"] < 0.8 * h[0]["train_parts"]["sparsity"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["train_parts"]["ce"] < 2.5  # the classifier survives the gating

    # outputs: log lines, config, loadable checkpoints holding the final weights
    run = tmp_path / "run"
    lines = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [1, 2] and lines[-1]["test_acc"] == h[-1]["test_acc"]
    meta = json.loads((run / "config.json").read_text())
    assert meta["loss"]["target_ratio"] == 0.5 and meta["init"] == "dense->gated"
    last = load_model(result.last_path)
    x = torch.stack([test[i][0] for i in range(8)])
    torch.testing.assert_close(last(x), result.model.eval()(x), rtol=0, atol=0)
    assert read_metadata(result.best_path)["metrics"]["test_acc"] == result.best["test_acc"]


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="TrainConfig.model: unknown model 'resnet7'"):
        TrainConfig(model="resnet7")
    with pytest.raises(ValueError, match="TrainConfig.epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(milestones=(0.75, 0.5))
    with pytest.raises(ValueError, match="gated training only"):
        TrainConfig(gated=False, lambda_s=0.1)
    with pytest.raises(ValueError, match="data_root"):
        TrainConfig(dataset="cifar10")
    with pytest.raises(ValueError, match="unknown loss preset"):
        TrainConfig(preset="nope")
    cfg = TrainConfig(preset="resnet56", lambda_s=0.5, target_ratio=0.5)
    lc = cfg.loss_config()
    assert (lc.lambda_mi, lc.lambda_s, lc.target_ratio) == (0.01, 0.5, 0.5)


def test_cli_train_dense_smoke(tmp_path, capsys):
    rc = main(["train", "--no-gated", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
               "--test-subset", "32", "--threads", "1", "--macs-samples", "8", "--no-progress",
               "--milestones", "1.0", "--out-dir", str(tmp_path / "cli")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "done in" in out
    assert load_model(tmp_path / "cli" / "last").dyninfer_name == "resnet20"
    assert main(["train", "--epochs", "0", "--out-dir", str(tmp_path / "x")]) == 2


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, monkeypatch):
    """A gated run stopped during epoch 3 (after epoch 2's state was saved) and resumed with
    resume=True ends with exactly the weights, W_cla and log of a run that was never stopped:
    the optimiser, scheduler, global RNG (gate noise, augmentation) and sampler order are restored."""
    import dyninfer.train as train_mod

    dense = train(TrainConfig(model="resnet20", dataset="digits", gated=False, epochs=1, batch_size=32,
                              train_subset=96, test_subset=32, threads=1, macs_samples=8, progress=False,
                              out_dir=str(tmp_path / "dense")))
    common = dict(model="resnet20", dataset="digits", gated=True, epochs=3, batch_size=32, lr=0.05,
                  milestones=(0.5,), train_subset=96, test_subset=32, threads=1, macs_samples=8,
                  progress=False, init_checkpoint=str(dense.last_path))
    full = train(TrainConfig(**common, out_dir=str(tmp_path / "full")))

    real_evaluate = train_mod.evaluate
    calls = {"n": 0}

    def stop_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated stop")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**common, out_dir=str(tmp_path / "cut")))
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    cut = tmp_path / "cut"
    assert [json.loads(s)["epoch"] for s in (cut / "log.jsonl").read_text().splitlines()] == [1, 2]
    resumed = train(TrainConfig(**common, out_dir=str(cut), resume=True))
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in full.criterion.state_dict().items():
        assert torch.equal(v, resumed.criterion.state_dict()[k]), k
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]
    assert [json.loads(s)["epoch"] for s in (cut / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    # a finished run resumes to nothing; other settings are refused, naming the field
    again = train(TrainConfig(**common, out_dir=str(cut), resume=True))
    assert len(again.history) == 3 and torch.equal(again.model.state_dict()["fc.weight"], b["fc.weight"])
    with pytest.raises(ValueError, match="lr=0.05 \\(now 0.1\\)"):
        train(TrainConfig(**{**common, "lr": 0.1}, out_dir=str(cut), resume=True))
    (cut / "resume.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="resume.pt cannot be read"):
        train(TrainConfig(**common, out_dir=str(cut), resume=True))


def test_static_baseline_freezes_the_most_frequent_filters(tmp_path):
    """benchmarks/train_dynamic.py end to end on a few digits: dense, dynamic gated, and its static
    baseline, whose gates are one constant mask at the gated model's per-layer training-split density."""
    import importlib.util

    from dyninfer.analysis.conditionality import conditionality
    from dyninfer.train import static_masks_from

    spec = importlib.util.spec_from_file_location("train_dynamic", "benchmarks/train_dynamic.py")
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    out = tmp_path / "dyn"
    td.main(["--model", "resnet20", "--dense-epochs", "1", "--epochs", "2", "--batch-size", "32", "--train-subset",
             "96", "--test-subset", "64", "--threads", "1", "--no-progress", "--out-dir", str(out),
             "--ship", "0.5", str(tmp_path / "shipped.safetensors")])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"gated_r0.5", "static_r0.5"} and (out / "acc_vs_macs.png").stat().st_size > 0
    static = load_model(out / "static_r0.5" / "last.safetensors")
    train_ds = load_dataset("digits", split="train")
    subset = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(0))[:96].tolist()  # as train() draws it
    expect = static_masks_from(out / "gated_r0.5" / "last.safetensors", Subset(train_ds, subset), static)
    for name, g in dyninfer_gates(static).items():
        assert torch.all(g.fc2.weight == 0) and torch.equal(g.fc2.bias > 0, expect["masks"][name]), name
    test = load_dataset("digits", split="test")
    x, y = torch.stack([test[i][0] for i in range(64)]), torch.tensor([test[i][1] for i in range(64)])
    c = conditionality(static, x, y)
    assert c.dynamic_share == 0.0 and c.static_accuracy == c.accuracy  # one path for every input
    assert c.density == pytest.approx(expect["density"], abs=1e-6)
    meta = read_metadata(tmp_path / "shipped.safetensors")
    assert meta["metrics"]["static_baseline"]["macs_ratio"] == pytest.approx(summary["runs"]["static_r0.5"]["macs_ratio"])
    assert "dynamic_share" in meta["metrics"]["conditionality"]


def test_distillation_and_response_target_decay(tmp_path):
    """distillation_loss is 0 exactly when the student matches the teacher and grows with the gap;
    a gated run with a teacher logs the 'kd' part; a bad teacher or weight is refused by name."""
    from dyninfer.train import distillation_loss

    t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    assert distillation_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    near, far = distillation_loss(t + torch.tensor([0.5, 0, 0]), t), distillation_loss(t.flip(1), t)
    assert 0 < near.item() < far.item()
    with pytest.raises(ValueError, match="needs a teacher"):
        TrainConfig(distill=1.0)
    with pytest.raises(ValueError, match="teacher needs distill"):
        TrainConfig(teacher_checkpoint="x.safetensors")

    common = dict(model="resnet20", dataset="digits", batch_size=32, train_subset=64, test_subset=32, threads=1,
                  macs_samples=8, progress=False, milestones=(1.0,))
    dense = train(TrainConfig(gated=False, epochs=1, out_dir=str(tmp_path / "dense"), **common))
    run = train(TrainConfig(gated=True, epochs=1, init_checkpoint=str(dense.last_path), distill=1.0,
                            teacher_checkpoint=str(dense.last_path), out_dir=str(tmp_path / "kd"), **common))
    kd = run.history[-1]["train_parts"]["kd"]
    assert kd > 0 and run.history[-1]["train_loss"] > run.history[-1]["train_parts"]["ce"]
    # rt_decay: lambda_rt's scale falls linearly to 0 at that fraction of the epochs (here after epoch 1 of 2)
    with pytest.raises(ValueError, match="TrainConfig.rt_decay"):
        TrainConfig(rt_decay=0.0)
    decayed = train(TrainConfig(gated=True, epochs=2, init_checkpoint=str(dense.last_path), rt_decay=0.5,
                                out_dir=str(tmp_path / "rt"), **common))
    rt = [e["train_parts"]["rt"] for e in decayed.history]
    assert decayed.criterion.rt_scale == 0.0 and rt[0] > 0 and rt[1] == 0.0  # a zero-weight term is not computed
    with pytest.raises(CheckpointError, match="does not fit model"):  # a gated checkpoint is no dense teacher
        train(TrainConfig(gated=True, epochs=1, init_checkpoint=str(dense.last_path), distill=1.0,
                          teacher_checkpoint=str(run.last_path), out_dir=str(tmp_path / "bad"), **common))


def test_freeze_gates_from(tmp_path):
    """freeze_gates_from: from that fraction of the epochs on, the gate parameters stop changing, every
    decoupling term is off (only L_ce trains); the other weights still train."""
    with pytest.raises(ValueError, match="TrainConfig.freeze_gates_from"):
        TrainConfig(freeze_gates_from=1.5)
    common = dict(model="resnet20", dataset="digits", batch_size=32, train_subset=64, test_subset=32, threads=1,
                  macs_samples=8, progress=False, milestones=(1.0,))
    dense = train(TrainConfig(gated=False, epochs=1, out_dir=str(tmp_path / "dense"), **common))
    one = train(TrainConfig(gated=True, epochs=1, init_checkpoint=str(dense.last_path), out_dir=str(tmp_path / "a"),
                            **common))
    # the same run for 2 epochs, frozen from epoch 2 on: epoch 1 is identical, so compare against `one`
    two = train(TrainConfig(gated=True, epochs=2, init_checkpoint=str(dense.last_path), freeze_gates_from=0.5,
                            milestones=(1.0,), **{k: v for k, v in common.items() if k != "milestones"},
                            out_dir=str(tmp_path / "b")))
    first, second = two.history[0]["train_parts"], two.history[1]["train_parts"]
    assert first["mi"] > 0 and first["sparsity"] > 0
    assert all(second[k] == 0.0 for k in ("mi", "kl", "sparsity", "bs", "rt"))
    assert two.history[1]["train_loss"] == pytest.approx(second["ce"])
    g1, g2 = one.model.state_dict(), two.model.state_dict()
    gate_keys = [k for k in g1 if "_gate." in k]
    conv_keys = [k for k in g1 if k.endswith("conv1.weight") and "_gate" not in k]
    assert gate_keys and conv_keys
    assert all(torch.equal(g1[k], g2[k]) for k in gate_keys)  # epoch 2 left the gates as epoch 1 made them
    assert any(not torch.equal(g1[k], g2[k]) for k in conv_keys)  # ... and trained the convs


def test_core_ratio_keeps_a_static_core(tmp_path):
    """core_ratio: in every gate the round(c·N) filters with the largest mean response of the init model
    are on for every input, and stay so through training (weight decay on the gates included); the
    other filters stay gated."""
    from dyninfer.train import core_masks
    with pytest.raises(ValueError, match="core_ratio"):
        TrainConfig(core_ratio=0.6)  # not below R = 0.5
    with pytest.raises(ValueError, match="core_ratio"):
        TrainConfig(core_ratio=0.2, gated=False)
    common = dict(model="resnet20", dataset="digits", batch_size=32, train_subset=64, test_subset=32, threads=1,
                  macs_samples=8, progress=False, milestones=(1.0,), static_eval=False)
    dense = train(TrainConfig(gated=False, epochs=1, out_dir=str(tmp_path / "dense"), **common))
    run = train(TrainConfig(gated=True, epochs=1, init_checkpoint=str(dense.last_path), core_ratio=0.25,
                            gate_weight_decay=0.1, out_dir=str(tmp_path / "core"), **common))
    # the core the run chose, recomputed from the same init: the strongest mean responses
    init = create_model("resnet20", num_classes=10, gated=True)
    load_init_weights(init, dense.last_path)
    full = load_dataset("digits", split="train", augment=False)
    train_ds = Subset(full, torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:64].tolist())
    masks = core_masks(init, train_ds, 0.25)
    for path, g in dyninfer_gates(init).items():
        g.force_keep = 1.0
    init.eval()
    x = torch.stack([train_ds[i][0] for i in range(64)])
    with torch.no_grad():
        init(x)
    for path, g in dyninfer_gates(init).items():
        mean, keep = g.y_mean.mean(0), masks[path]
        assert int(keep.sum()) == max(1, round(0.25 * g.out_channels))
        assert mean[keep].min() >= mean[~keep].max()
    trained = dyninfer_gates(run.model)
    test_x = torch.stack([load_dataset("digits", split="test")[i][0] for i in range(32)])
    with torch.no_grad():
        run.model.eval()(test_x)
    for path, g in trained.items():
        keep = masks[path]
        assert torch.equal(g.fc2.weight[keep], torch.zeros(int(keep.sum()), g.fc2.in_features))
        assert torch.equal(g.fc2.bias[keep], torch.full((int(keep.sum()),), 10.0))
        assert bool(g.z[:, keep].all())
    meta = json.loads((tmp_path / "core" / "config.json").read_text())
    assert meta["core"]["ratio"] == 0.25 and meta["core"]["filters"] == sum(int(m.sum()) for m in masks.values())


def test_static_layers_freeze_their_gates_to_the_strongest_filters(tmp_path):
    """static_layers: the gates under the named prefixes keep round(R·N) filters of strongest mean
    response for every input through training, the decoupling loss skips them, and the other gates
    stay dynamic with their core."""
    from dyninfer.losses import DecouplingLoss, LossConfig
    from dyninfer.train import core_masks, static_layer_masks
    with pytest.raises(ValueError, match="static_layers"):
        TrainConfig(static_layers="layer1", gated=False)
    with pytest.raises(ValueError, match="static_layers"):
        TrainConfig(static_layers=" , ")
    common = dict(model="resnet20", dataset="digits", batch_size=32, train_subset=64, test_subset=32, threads=1,
                  macs_samples=8, progress=False, milestones=(1.0,), static_eval=False)
    dense = train(TrainConfig(gated=False, epochs=1, out_dir=str(tmp_path / "dense"), **common))
    init = create_model("resnet20", num_classes=10, gated=True)
    load_init_weights(init, dense.last_path)
    full = load_dataset("digits", split="train", augment=False)
    train_ds = Subset(full, torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:64].tolist())
    with pytest.raises(ValueError, match="layer9"):
        static_layer_masks(init, train_ds, ["layer1", "layer9"], 0.5)
    masks = static_layer_masks(init, train_ds, ["layer1"], 0.5)
    assert set(masks) == {k for k in dyninfer_gates(init) if k.startswith("layer1.")}
    ranked = core_masks(init, train_ds, 0.5)
    assert all(torch.equal(masks[k], ranked[k]) for k in masks)
    run = train(TrainConfig(gated=True, epochs=1, init_checkpoint=str(dense.last_path), static_layers="layer1",
                            core_ratio=0.2, out_dir=str(tmp_path / "st"), **common))
    trained = dyninfer_gates(run.model)
    test_x = torch.stack([load_dataset("digits", split="test")[i][0] for i in range(32)])
    with torch.no_grad():
        run.model.eval()(test_x)
    for path, g in trained.items():
        if path in masks:
            assert g.static and g.core is None
            assert bool((g.z == masks[path].to(g.z)).all())  # the same mask for every input
        else:
            assert not g.static and g.core is not None
    # the loss skips the frozen gates: removing their z changes nothing
    crit = DecouplingLoss(run.model, 10, LossConfig(lambda_mi=0.05, lambda_kl=0.0, lambda_s=0.02, target_ratio=0.5))
    run.model.train()
    logits = run.model(test_x)
    labels = torch.arange(32) % 10
    before = crit(logits, labels)[0]
    for path in masks:
        trained[path].z = None
    assert torch.equal(crit(logits, labels)[0], before)
    meta = json.loads((tmp_path / "st" / "config.json").read_text())
    assert meta["static_layers"]["gates"] == len(masks) == 6


def test_detached_gate_input_keeps_decoupling_losses_out_of_the_backbone(tmp_path):
    """detach_gate_input: after one step from the same init, the backbone's weights do not depend on
    the decoupling losses' weights (only the gates' do); without it they do."""
    common = dict(model="resnet20", dataset="digits", batch_size=32, train_subset=32, test_subset=8, threads=1,
                  macs_samples=4, progress=False, epochs=1, static_eval=False, augment=False)
    dense = train(TrainConfig(gated=False, out_dir=str(tmp_path / "dense"), **common))
    runs = {}
    for detach in (False, True):
        for aux in (0.0, 1.0):
            run = train(TrainConfig(
                gated=True, init_checkpoint=str(dense.last_path), detach_gate_input=detach, lambda_bs=aux,
                lambda_rt=aux, lambda_mi=0.05 * aux, lambda_s=0.02 * aux,
                out_dir=str(tmp_path / f"g{int(detach)}{aux:g}"), **common))
            assert not any(g.detach_input for g in dyninfer_gates(run.model).values())  # reset for the caller
            runs[detach, aux] = run.model.state_dict()

    def split(state):
        gate = {k: v for k, v in state.items() if "_gate." in k}
        return gate, {k: v for k, v in state.items() if "_gate." not in k and v.is_floating_point()}

    for detach in (False, True):
        gate0, body0 = split(runs[detach, 0.0])
        gate1, body1 = split(runs[detach, 1.0])
        assert any(not torch.equal(gate0[k], gate1[k]) for k in gate0)
        same_body = all(torch.equal(body0[k], body1[k]) for k in body0)
        assert same_body == detach, f"detach_gate_input={detach}: backbone {'differs' if detach else 'unchanged'}"


def test_static_mask_costs_the_dynamic_models_macs():
    """Equal per-layer density is not equal MACs (kept-in x kept-out is correlated along a per-input
    path): static_masks_from scales the densities until the static path costs at least the gated
    model's mean effective MACs, and only by the step the integer keep counts need."""
    from dyninfer.train import static_masks_from

    path = "dyninfer/assets/resnet56_digits_dynamic.safetensors"
    model = load_model(path)
    ds = Subset(load_dataset("digits", split="train"), range(256))
    plain = static_masks_from(path, ds, model, match_macs=False)
    assert plain["macs_static"] is None and plain["density_scale"] is None
    matched = static_masks_from(path, ds, model, macs_samples=256)
    assert matched["macs_static"] >= matched["macs_dynamic"] > 0
    assert matched["macs_static"] <= 1.01 * matched["macs_dynamic"]  # one keep-count step, not a bigger mask
    assert matched["density_scale"] > 1.0 and matched["density"] > plain["density"]
    for name, keep in plain["masks"].items():  # the matched mask only adds the next most frequent filters
        assert torch.all(matched["masks"][name] | ~keep), name
