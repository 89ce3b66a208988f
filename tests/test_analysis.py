"""dyninfer.analysis on hand-made tiny models whose gate decisions are known in advance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dyninfer
from dyninfer import analysis as A
from dyninfer.nn import decouple

torch.set_num_threads(1)

THRESHOLD = 0.1  # gate 'conv2' channel 0 is on iff the image mean exceeds this


class Tiny(nn.Module):
    """conv1 (ungated) -> conv2 (gated) -> conv3 (gated, 1x1) -> GAP -> fc; 1 x 8 x 8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.conv3 = nn.Conv2d(3, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


def _center_taps(conv: nn.Conv2d, pairs):
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.kernel_size[0] // 2
        for o, i in pairs:
            conv.weight[o, i, k, k] = 1.0


def tiny_dense() -> Tiny:
    torch.manual_seed(0)
    m = Tiny()
    _center_taps(m.conv1, [(0, 0)])  # channel 0 copies the image, channel 1 is 0
    _center_taps(m.conv2, [(0, 0), (1, 0), (2, 0)])
    return m.eval()  # BN at init: identity up to eps


def tiny_gated():
    """Gate of conv2: channel 0 on iff mean(image) > THRESHOLD (dynamic), channel 1 always on
    (energetic), channel 2 never on (silent). Gate of conv3: open (energetic)."""
    gm = decouple(tiny_dense())
    g = dyninfer.gates(gm)["conv2_gate"]
    with torch.no_grad():
        g.fc1.weight.copy_(torch.tensor([[1.0, 0.0]]))  # h = relu(GAP(x)[0]) = mean(relu(image))
        g.fc1.bias.zero_()
        g.fc2.weight.copy_(torch.tensor([[1.0], [0.0], [0.0]]))
        g.fc2.bias.copy_(torch.tensor([-THRESHOLD, 1.0, -1.0]))
    return gm.eval()


def patch_image(top=0, left=0, size=4, value=1.0):
    x = torch.zeros(1, 8, 8)
    x[:, top:top + size, left:left + size] = value
    return x


def images_of_means():
    """Images whose means straddle THRESHOLD: 4 above, 4 below."""
    xs = [patch_image(value=v) for v in (1.0, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.0)]  # means v/4
    return torch.stack(xs), torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])


# --- paths ----------------------------------------------------------------------------------------


def test_collect_paths_reads_the_hand_made_gates():
    x, y = images_of_means()
    ps = A.collect_paths(tiny_gated(), x, y)
    assert ps.gate_names == ["conv2_gate", "conv3_gate"] and ps.gate_sizes == [3, 2]
    expected_ch0 = (x.mean((1, 2, 3)) > THRESHOLD).to(torch.uint8)
    assert torch.equal(ps.paths[:, 0], expected_ch0)
    assert (ps.paths[:, 1] == 1).all() and (ps.paths[:, 2] == 0).all() and (ps.paths[:, 3:] == 1).all()
    assert torch.equal(ps.labels, y) and ps.predictions.shape == (8,)


def test_engine_paths_equal_pytorch_paths():
    model = tiny_gated()
    x, y = images_of_means()
    x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    engine = dyninfer.compile(model, input_shape=(1, 8, 8))
    pe, pt = A.collect_paths(engine, x, y), A.collect_paths(model, x, y)
    assert pe.source.startswith("engine")
    assert torch.equal(pe.paths, pt.paths) and torch.equal(pe.predictions, pt.predictions)
    with pytest.raises(ValueError, match=r"compiled for inputs \(1, 8, 8\)"):
        A.collect_paths(engine, torch.zeros(2, 1, 9, 9))


def test_collect_paths_rejects_bad_input():
    model = tiny_gated()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        A.collect_paths(model, torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="labels of shape"):
        A.collect_paths(model, torch.zeros(3, 1, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="no gates"):
        A.collect_paths(tiny_dense(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="training mode"):
        A.collect_paths(tiny_gated().train(), torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("bits", [5, 8, 13])
def test_path_file_round_trip(tmp_path, bits):
    g = torch.Generator().manual_seed(bits)
    ps = A.PathSet(torch.randint(0, 2, (7, bits), generator=g), torch.arange(7), torch.arange(7).flip(0),
                   ["a", "b"], [2, bits - 2], source="test", meta={"k": [1, 2]})
    out = A.save_paths(tmp_path / "p.safetensors", ps)
    back = A.load_paths(out)
    assert torch.equal(back.paths, ps.paths) and torch.equal(back.labels, ps.labels)
    assert torch.equal(back.predictions, ps.predictions)
    assert back.gate_names == ["a", "b"] and back.gate_sizes == [2, bits - 2] and back.meta == {"k": [1, 2]}
    assert out.stat().st_size < 7 * bits + 2000  # packed 8 bits per byte + header
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_path_file_errors_name_the_file(tmp_path):
    ps = A.PathSet(torch.ones(4, 10, dtype=torch.uint8), torch.zeros(4), torch.zeros(4), ["g"], [10])
    out = A.save_paths(tmp_path / "p.safetensors", ps)
    data = bytearray(out.read_bytes())
    with pytest.raises(A.PathFileError, match="does not exist"):
        A.load_paths(tmp_path / "missing.safetensors")
    bad = tmp_path / "flipped.safetensors"
    data[-3] ^= 0xFF  # a byte of the tensor data: the digest no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(A.PathFileError, match=r"flipped.safetensors is corrupt: sha256"):
        A.load_paths(bad)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(out.read_bytes()[:-10])
    with pytest.raises(A.PathFileError, match="cut.safetensors"):
        A.load_paths(cut)
    other = tmp_path / "ckpt.safetensors"
    dyninfer.checkpoint.save_checkpoint(other, tiny_dense().state_dict(), {"model": {}})
    with pytest.raises(A.PathFileError, match="not a dyninfer path file"):
        A.load_paths(other)


def test_pathset_validates_shapes():
    with pytest.raises(ValueError, match="only 0 and 1"):
        A.PathSet(torch.full((2, 3), 2), torch.zeros(2), torch.zeros(2), ["g"], [3])
    with pytest.raises(ValueError, match="do not split"):
        A.PathSet(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), ["g"], [4])
    with pytest.raises(ValueError, match="labels must have 2"):
        A.PathSet(torch.zeros(2, 3), torch.zeros(3), torch.zeros(2), ["g"], [3])


# --- filter states --------------------------------------------------------------------------------


def test_filter_states_energetic_silent_dynamic(tmp_path):
    x, y = images_of_means()
    fs = A.filter_states(A.collect_paths(tiny_gated(), x, y))
    c2, c3 = fs["conv2_gate"], fs["conv3_gate"]
    assert (c2.energetic, c2.dynamic, c2.silent) == (1, 1, 1)
    assert (c3.energetic, c3.dynamic, c3.silent) == (2, 0, 0)
    assert c2.on_rate.tolist() == [0.5, 1.0, 0.0]
    # channel 0 is on exactly for class 1 (the bright images)
    assert c2.class_on_rate[:, 0].tolist() == [0.0, 1.0]
    assert fs.totals() == {"channels": 5, "energetic": 3, "silent": 1, "dynamic": 1}
    assert fs.to_json()["layers"][0]["dynamic_channels"] == [0]
    png = A.plot_filter_states(fs, tmp_path / "fs.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_filter_states_of_one_input_has_no_dynamic_filter():
    ps = A.collect_paths(tiny_gated(), patch_image()[None])
    assert A.filter_states(ps).totals()["dynamic"] == 0


# --- dense baseline -------------------------------------------------------------------------------


def test_dense_activations_at_gate_positions_without_changing_the_model():
    dense = tiny_dense()
    x, _ = images_of_means()
    before = dense(x)
    acts, preds, names, sizes = A.collect_activations(dense, x)
    assert names == ["conv2_gate", "conv3_gate"] and sizes == [3, 2] and acts.shape == (8, 5)
    assert not dyninfer.gates(dense)  # the caller's model got no gates
    with torch.no_grad():
        h = F.relu(dense.bn1(dense.conv1(x)))
        y2 = F.relu(dense.bn2(dense.conv2(h)))
    torch.testing.assert_close(acts[:, :3], y2.mean((2, 3)))
    assert torch.equal(preds, before.argmax(1))
    th = A.activation_thresholds(acts, "median")
    bits = A.binarize(acts, th)
    assert bits.dtype == torch.uint8 and bits.shape == (8, 5)
    assert bits[:, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # above the median of 8 distinct values
    with pytest.raises(ValueError, match="rule"):
        A.activation_thresholds(acts, "mean")
    with pytest.raises(ValueError, match="already has gates"):
        A.collect_activations(tiny_gated(), x)


# --- embedding / k-NN -----------------------------------------------------------------------------


def test_knn_class_accuracy_separates_class_coded_bits_from_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    noise = torch.randint(0, 2, (200, 40), generator=g)
    coded = noise.clone()
    coded[:, :12] = F.one_hot(labels, 4).repeat(1, 3)  # 12 bits that name the class
    tr, te = slice(0, 120), slice(120, 200)
    assert A.knn_class_accuracy(coded[tr], labels[tr], coded[te], labels[te]) == 1.0
    assert A.knn_class_accuracy(noise[tr], labels[tr], noise[te], labels[te]) < 0.5
    with pytest.raises(ValueError, match="same D"):
        A.knn_class_accuracy(coded[tr], labels[tr], coded[te, :5], labels[te])


def test_tsne_embedding_and_constant_paths(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    feats = torch.randint(0, 2, (60, 30), generator=g)
    feats[:, :9] = F.one_hot(labels, 3).repeat(1, 3)
    emb = A.embed_tsne(feats, seed=0)
    assert emb.shape == (60, 2) and np.isfinite(emb).all()
    png = A.plot_embeddings({"toy": (emb, labels.numpy())}, tmp_path / "t.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="same features"):
        A.embed_tsne(torch.ones(10, 5))


# --- occlusion ------------------------------------------------------------------------------------


def test_occluding_the_region_that_feeds_a_filter_turns_it_off():
    model = tiny_gated()
    img = patch_image(top=0, left=0, size=4)  # mean 0.25 > THRESHOLD: conv2 channel 0 on
    res = A.occlusion_effect(model, img, (0, 0, 4, 4), fill=0.0)
    assert res.switched_off == [("conv2_gate", 0)] and res.switched_on == []
    # an occlusion of the empty part of the image changes nothing
    res2 = A.occlusion_effect(model, img, (4, 4, 8, 8), fill=0.0)
    assert res2.switched_off == [] and res2.switched_on == []
    # occluding half of the patch keeps the mean above the threshold (0.125 > 0.1)
    assert A.occlusion_effect(model, img, (0, 0, 2, 4)).switched_off == []


def test_receptive_field_of_switched_off_filter_lies_on_the_patch(tmp_path):
    model = tiny_gated()
    img = patch_image(top=2, left=3, size=3, value=1.0)  # mean 9/64 > THRESHOLD
    res = A.occlusion_effect(model, img, (2, 3, 5, 6))
    assert res.switched_off == [("conv2_gate", 0)]
    [(erf, box)] = A.filter_receptive_fields(model, img, res.switched_off)
    assert erf.shape == (8, 8) and erf.max() == 1
    assert erf[2:5, 3:6].sum() == erf.sum()  # only patch pixels reach the active outputs
    assert 2 <= box.top < box.bottom <= 5 and 3 <= box.left < box.right <= 6
    png = A.plot_occlusion(img[0], res.region, res, [(erf, box)], tmp_path / "o.png")
    assert png.stat().st_size > 1000


def test_occlusion_rejects_bad_regions_and_images():
    img = patch_image()
    with pytest.raises(ValueError, match=r"outside the 8x8 image"):
        A.occlude(img, (6, 6, 10, 10))
    with pytest.raises(ValueError, match="empty or outside"):
        A.occlude(img, (3, 3, 3, 5))
    with pytest.raises(ValueError, match=r"\(top, left, bottom, right\)"):
        A.occlude(img, (1, 2, 3))
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        A.occlude(img[None], (0, 0, 2, 2))
    with pytest.raises(ValueError, match="unknown filters"):
        A.filter_receptive_fields(tiny_gated(), img, [("conv9_gate", 0)])


# --- adversarial ----------------------------------------------------------------------------------


def _linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()


def test_fgsm_and_pgd_stay_in_budget_and_raise_the_loss():
    model = _linear_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g)
    y = model(x).argmax(1)
    eps = 0.05
    for adv in (A.fgsm(model, x, y, eps, 0.0, 1.0), A.pgd(model, x, y, eps, steps=5, lo=0.0, hi=1.0)):
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="training mode"):
        A.fgsm(model.train(), x, y, eps)


def test_attacks_get_gradients_through_a_gated_model():
    model = tiny_gated()
    x, _ = images_of_means()
    y = model(x).argmax(1)
    for adv in (A.fgsm(model, x, y, 0.5), A.pgd(model, x, y, eps=0.5, steps=5)):
        assert (adv - x)[:7].abs().amax((1, 2, 3)).min() > 0.1  # every image but the black one (dead ReLUs) moved
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def _toy_features(separable: bool, n_train=40, n_test=200, d=16):
    g = np.random.default_rng(0)
    ct, at = g.integers(0, 2, (n_train, d)), g.integers(0, 2, (n_train, d))
    ce, ae = g.integers(0, 2, (n_test, d)), g.integers(0, 2, (n_test, d))
    if separable:  # bits 0-7 are 0 for clean and 1 for adversarial inputs
        ct[:, :8], ce[:, :8], at[:, :8], ae[:, :8] = 0, 0, 1, 1
    return ct, at, np.arange(n_train) % 4, ce, ae


@pytest.mark.parametrize("clf", A.CLASSIFIERS)
def test_detection_auc_on_separable_and_indistinguishable_toys(clf):
    ct, at, lab, ce, ae = _toy_features(True)
    aucs = A.detection_auc(ct, at, lab, ce, ae, n_per_class=1, classifier=clf, seeds=range(3))
    assert len(aucs) == 3 and min(aucs) > 0.99
    ct, at, lab, ce, ae = _toy_features(False)
    aucs = A.detection_auc(ct, at, lab, ce, ae, n_per_class=5, classifier=clf, seeds=range(3))
    assert 0.35 < np.mean(aucs) < 0.65


def test_detection_rejects_bad_input():
    ct, at, lab, ce, ae = _toy_features(True)
    with pytest.raises(ValueError, match="class 0 has 10 training samples, 11 per class"):
        A.detection_auc(ct, at, lab, ce, ae, n_per_class=11)
    with pytest.raises(ValueError, match="columns"):
        A.detection_auc(ct, at, lab, ce[:, :4], ae, n_per_class=1)
    with pytest.raises(ValueError, match="unknown classifier"):
        A.detection_auc(ct, at, lab, ce, ae, n_per_class=1, classifier="svm")
    rows = A.detection_table({"toy": (ct, at, ce, ae)}, lab, (1, 2), ("random_forest",), range(2))
    assert [r["n_per_class"] for r in rows] == [1, 2] and all(r["auc_mean"] > 0.99 for r in rows)


def test_detection_on_identical_features_scores_chance():
    ct = np.zeros((40, 6))
    aucs = A.detection_auc(ct, ct, np.arange(40) % 4, ct[:10], ct[:10] + 1, n_per_class=2, classifier="adaboost",
                           seeds=range(2))
    assert aucs == [0.5, 0.5]  # nothing to learn from: a constant score


# --- dyninfer analyze -----------------------------------------------------------------------------


def test_analyze_command_end_to_end(tmp_path):
    """Random-init gated ResNet-20 (gates open at init: every filter energetic) and a dense one."""
    from dyninfer.cli import main

    gated, dense = dyninfer.create_model("resnet20"), dyninfer.create_model("resnet20", gated=False)
    dyninfer.checkpoint.save_checkpoint(tmp_path / "g", gated, {"train": {"dataset": "digits"}})
    dyninfer.checkpoint.save_checkpoint(tmp_path / "d", dense, {"train": {"dataset": "digits"}})
    out = tmp_path / "out"
    code = main(["analyze", "--checkpoint", str(tmp_path / "g.safetensors"), "--dense-checkpoint",
                 str(tmp_path / "d.safetensors"), "--out-dir", str(out), "--train-limit", "200", "--test-limit", "20",
                 "--pgd-steps", "1", "--seeds", "1", "--occlusion-images", "1", "--occlusion-box", "16",
                 "--threads", "1", "--quiet"])
    assert code == 0
    r = json.loads((out / "analysis.json").read_text())
    t = r["filter_states"]["test"]["totals"]
    assert t["dynamic"] == 0 and t["energetic"] == t["channels"] == r["paths"]["bits"]
    assert r["paths"]["engine_vs_pytorch_bits_differing"] == 0
    assert any("same features" in n for n in r["tsne_notes"])  # gated paths are constant: no t-SNE
    assert len(r["adversarial"]["detection"]) == 2 * 2 * 3 * 3
    for name in ("filter_states.png", "path_tsne.png", "occlusion.png", "report.md"):
        assert (out / name).stat().st_size > 500
    assert A.load_paths(out / "paths_test.safetensors").paths.shape == (20, r["paths"]["bits"])
    # a missing checkpoint ends with a one-line error naming it, exit status 2
    assert main(["analyze", "--checkpoint", str(tmp_path / "nope.safetensors"), "--quiet"]) == 2


def test_shipped_dense_baseline_asset():
    from dyninfer.analysis.report import DEFAULT_DENSE_CHECKPOINT
    from dyninfer.data import load_dataset

    meta = dyninfer.checkpoint.read_metadata(DEFAULT_DENSE_CHECKPOINT)
    assert meta["config"]["model"] == {"name": "resnet56", "num_classes": 10, "gated": False, "reduction": 4}
    dense = dyninfer.checkpoint.load_model(DEFAULT_DENSE_CHECKPOINT)
    x, y = A.stack_dataset(load_dataset("digits", split="test", augment=False), limit=48)
    acts, preds, names, sizes = A.collect_activations(dense, x)
    gated = dyninfer.create_model("resnet56")
    assert names == list(dyninfer.gates(gated)) and sum(sizes) == acts.shape[1] == 2016
    assert (preds == y).float().mean() > 0.9  # a trained model, not a placeholder
