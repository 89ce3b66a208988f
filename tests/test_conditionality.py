"""dyninfer.analysis.conditionality on hand-made gate patterns with known answers."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

import dyninfer
from dyninfer.analysis import PathSet, collect_paths
from dyninfer.analysis.conditionality import (conditionality, path_conditionality, static_accuracy,
                                              static_path_masks)

from test_analysis import images_of_means, tiny_gated


def pathset(bits, labels, preds=None, names=("a", "b"), sizes=None):
    bits = torch.as_tensor(bits, dtype=torch.uint8)
    sizes = sizes or [bits.shape[1] // 2, bits.shape[1] - bits.shape[1] // 2]
    labels = torch.as_tensor(labels)
    return PathSet(bits, labels, labels if preds is None else preds, list(names), sizes)


def brute_force_hamming(bits, labels):
    same, diff = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        d = (bits[i] != bits[j]).float().mean().item()
        (same if labels[i] == labels[j] else diff).append(d)
    return sum(same) / len(same), sum(diff) / len(diff)


def test_static_paths_are_not_conditional():
    bits = torch.tensor([[1, 0, 1, 1, 0, 0]] * 12)
    c = path_conditionality(pathset(bits, torch.arange(12) % 3))
    assert c.dynamic_share == 0.0 and c.path_entropy == 0.0 and c.path_entropy_per_filter == 0.0
    assert c.hamming_same == 0.0 and c.hamming_diff == 0.0
    assert c.always_on_share == pytest.approx(0.5) and c.always_off_share == pytest.approx(0.5)
    assert c.histogram == [3, 0, 0, 0, 0, 0, 0, 0, 0, 3] and c.density == pytest.approx(0.5)
    assert c.class_density == {0: 0.5, 1: 0.5, 2: 0.5}


def test_class_coded_paths_same_class_identical_other_classes_disjoint():
    """Two classes, each turns on its own half of the filters: every filter fires for half the
    inputs (dynamic, 1 bit of entropy), same-class paths are identical, other-class paths differ in
    every bit."""
    labels = torch.tensor([0, 1] * 5)
    bits = torch.stack([torch.tensor([1, 1, 1, 0, 0, 0]) if y == 0 else torch.tensor([0, 0, 0, 1, 1, 1])
                        for y in labels])
    c = path_conditionality(pathset(bits, labels))
    assert c.dynamic_share == 1.0 and c.path_entropy_per_filter == pytest.approx(1.0)
    assert c.path_entropy == pytest.approx(6.0)
    assert c.hamming_same == 0.0 and c.hamming_diff == 1.0
    assert c.layer_density == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    assert c.layer_dynamic_share == {"a": 1.0, "b": 1.0}


def test_per_class_density_and_rare_filters():
    """Class 0 keeps 1 of 4 filters, class 1 keeps 3 of 4; a filter on for 1 input of 40 is below
    the 0.05 bound and does not count as dynamic."""
    labels = torch.tensor([0] * 20 + [1] * 20)
    bits = torch.zeros(40, 4, dtype=torch.uint8)
    bits[:20, 0] = 1
    bits[20:, :3] = 1
    bits[5, 3] = 1  # rate 1/40 = 0.025 < 0.05
    c = path_conditionality(pathset(bits, labels))
    assert c.class_density[0] == pytest.approx((20 + 1) / 80) and c.class_density[1] == pytest.approx(0.75)
    assert c.firing_rate.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.025])
    assert c.dynamic_share == 0.5 and c.always_on_share == 0.25 and c.always_off_share == 0.25
    h = -(0.025 * math.log2(0.025) + 0.975 * math.log2(0.975))
    assert c.path_entropy == pytest.approx(2.0 + h)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hamming_from_counts_equals_all_pairs(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (23,), generator=g)
    bits = (torch.rand(23, 10, generator=g) < torch.rand(10, generator=g)).to(torch.uint8)
    c = path_conditionality(pathset(bits, labels))
    same, diff = brute_force_hamming(bits, labels)
    assert c.hamming_same == pytest.approx(same) and c.hamming_diff == pytest.approx(diff)


def test_static_path_masks_keep_the_most_frequent_filters_at_each_layers_density():
    rate = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.0, 0.7, 0.3])  # layer a: 4 filters, layer b: 3
    masks = static_path_masks(rate, ["a", "b"], [4, 3])
    assert masks["a"].tolist() == [True, False, True, False]  # density 0.5 -> 2; tie 0.5/0.5 -> lower index
    assert masks["b"].tolist() == [False, True, False]  # density 1/3 -> 1 filter
    forced = static_path_masks(rate, ["a", "b"], [4, 3], densities={"a": 0.25, "b": 1.0})
    assert forced["a"].sum() == 1 and forced["b"].all()
    with pytest.raises(ValueError, match="7 firing rates for gates of 8"):
        static_path_masks(rate, ["a", "b"], [4, 4])


def test_conditionality_of_a_hand_made_model_and_its_static_path():
    """tiny_gated: conv2's channel 0 fires iff the image mean exceeds THRESHOLD (4 of 8 images),
    the others are always on or off. The static path (same density) must keep it on or off for all."""
    x, y = images_of_means()
    model = tiny_gated()
    c = conditionality(model, x, y, batch_size=3)
    assert c.num_inputs == 8 and c.firing_rate[0] == pytest.approx(0.5)
    assert c.dynamic_share == pytest.approx(1 / 5)  # 1 of 5 gated filters
    assert c.hamming_same == 0.0  # labels follow the same threshold: one path per class
    assert c.hamming_diff == pytest.approx(1 / 5)
    masks = static_path_masks(c.firing_rate, c.gate_names, c.gate_sizes)
    frozen = copy.deepcopy(model)
    dyninfer.nn.freeze_static(dyninfer.gates(frozen), masks)
    frozen_paths = collect_paths(frozen, x, y).paths
    assert (frozen_paths == frozen_paths[0]).all()  # one path for every input
    assert frozen_paths[0].tolist() == torch.cat([masks["conv2_gate"], masks["conv3_gate"]]).to(torch.uint8).tolist()
    assert c.static_accuracy == pytest.approx(static_accuracy(model, [(x, y)], masks))
    assert c.static_drop == pytest.approx(100 * (c.accuracy - c.static_accuracy))
    assert not any(p.requires_grad for p in dyninfer.gates(frozen)["conv2_gate"].parameters())
    assert model.conv2_gate.fc1.weight.abs().sum() > 0  # the model itself is untouched
    json_ = c.to_json()
    assert json_["dynamic_share"] == c.dynamic_share and sum(json_["histogram"]) == 5
    assert "static majority path" in c.summary()


def test_rejects_empty_and_bad_bounds():
    with pytest.raises(ValueError, match="empty"):
        path_conditionality(pathset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(ValueError, match="low <= high"):
        path_conditionality(pathset(torch.ones(3, 4), torch.zeros(3, dtype=torch.int64)), low=0.9, high=0.1)
    with pytest.raises(ValueError, match="expected a mask of 3 channels"):
        dyninfer.gates(tiny_gated())["conv2_gate"].freeze_static(torch.ones(4, dtype=torch.bool))
