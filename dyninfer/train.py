"""Training loop for dense and decoupled (gated) models, single process or torchrun/DDP.

    result = train(TrainConfig(model="resnet20", dataset="digits", gated=True, preset=...))

Recipe (the paper's): SGD momentum 0.9, lr ÷10 at 50% and 75% of the epochs, weight decay
1e-4 on the network. Gate parameters (``*_gate.*``) and the loss's auxiliary classifiers W_cla get
NO weight decay (``gate_weight_decay=0``): decay would pull every gate logit toward its threshold
0 and so fight the sparsity target R that L_s alone is meant to set. A gated run without
``init_checkpoint`` first trains the dense model (``dense_epochs``) and initialises the gated one
from it, as the paper initialises from a dense pre-trained network.

Distributed: under ``torchrun --nproc-per-node N`` (detected from WORLD_SIZE/RANK) the same entry
point uses DistributedDataParallel with the gloo backend on CPU. The DDP-wrapped module holds both
the network and the DecouplingLoss (whose W_cla are parameters) and computes the loss inside its
forward, so every trainable tensor is all-reduced; BatchNorm buffers are broadcast from rank 0 after
every epoch so all ranks hold identical state. ``batch_size`` is the global batch (each rank takes
batch_size / N). Rank 0 alone prints, writes the JSON-lines log and the checkpoints.

Outputs in ``out_dir``: config.json, log.jsonl (one JSON object per epoch), best.safetensors,
last.safetensors (dyninfer.checkpoint format); a dense pre-training run writes to out_dir/dense.

Reported per epoch: train loss and each loss part (batch means), train and test accuracy, the
eval-mode gate density of every gated layer (mean of z over the test set and channels), the
overall density (kept channels / gated channels, all layers pooled), MACs per sample from
dyninfer.flops.count_macs (dense and effective, averaged over ``macs_samples`` test images), and
for gated models the conditionality figures of dyninfer.analysis.conditionality (share of dynamic
filters, path entropy, same/other-class Hamming distance, static-majority-path accuracy), which
the checkpoints' metrics keep too.

Resume: after every epoch the run writes ``out_dir/resume.pt`` (weights, W_cla, optimiser,
scheduler, RNG and sampler state, the log so far) atomically; ``resume=True`` continues from it, and
a single-process run resumed this way ends with the weights of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import checkpoint as ckpt
from .data import list_datasets, load_dataset
from .models import create_model, list_models
from .nn import gates

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "load_init_weights", "available_cpus"]


_LOSS_FIELDS = ("lambda_mi", "lambda_kl", "lambda_s", "lambda_bs", "lambda_rt", "target_ratio", "kl_reduction",
                "budget")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; validated on construction (errors name the field)."""

    model: str = "resnet20"
    dataset: str = "digits"
    data_root: str | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of ``epochs`` where lr is multiplied by gamma
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gate_weight_decay: float = 0.0  # on *_gate.* params and the loss's W_cla (see module docstring)
    gated: bool = True
    reduction: int = 4  # gate bottleneck γ
    # Loss (gated only): a named preset from dyninfer.losses, then any field given here overrides it.
    preset: str | None = None
    lambda_mi: float | None = None
    lambda_kl: float | None = None
    lambda_s: float | None = None
    lambda_bs: float | None = None
    lambda_rt: float | None = None
    target_ratio: float | None = None
    kl_reduction: str | None = None
    budget: str | None = None  # "sample" | "batch": where the keep ratio binds (LossConfig.budget)
    gate_init: str = "input"  # gates of a dense-initialised gated model (dyninfer.nn.GATE_INITS)
    freeze_gates: bool = False  # gate parameters are not trained
    # static-mask baseline: every gate frozen to ONE mask, the filters that fire most often for this
    # gated checkpoint on the training split, at its per-layer densities scaled until the mask costs
    # the checkpoint's mean MACs (see static_masks_from; static_match_macs=False: densities unscaled)
    static_from: str | None = None
    static_match_macs: bool = True
    # batch-shaping weight decays linearly from lambda_bs to 0 over this fraction of the epochs
    # (Bejnordi et al. anneal it likewise); None: constant
    bs_decay: float | None = 0.75
    # the response-target weight lambda_rt decays likewise over this fraction of the epochs, so that
    # the last epochs fit the gates to the task loss alone (with hard_gates_from = 0.5: from the moment
    # the gates run their inference decisions); None: constant
    rt_decay: float | None = 0.5
    # from this fraction of the epochs on, gates train on their eval decisions 1(g > 0) (no SemHash
    # noise, no soft half), so the last epochs fit the weights and BN statistics to the paths that
    # inference runs; None: SemHash to the end (the paper)
    hard_gates_from: float | None = 0.5
    # from this fraction of the epochs on, the gate parameters are frozen and every decoupling term is
    # off: the weights and BN statistics fit the task loss (and distillation, if on) on the fixed
    # per-input paths, as the static baseline's weights do on its fixed mask. Gates are hard then.
    # None: the gates train to the end
    freeze_gates_from: float | None = None
    # static core: in every gated layer this share of the filters (those with the largest mean response
    # of the init model on the training split) is on for every input, and the gates choose among the
    # rest at the rate that keeps the target ratio R overall (ArchitectureControl.set_core). Lowers
    # path entropy: the core filters train on every input. None: every filter is gated
    core_ratio: float | None = None
    # static layers: the gates whose paths start with one of these comma-separated prefixes (e.g.
    # "layer1" or "layer1,layer2") are frozen for the whole run to one mask of round(R·N) filters, those
    # with the largest mean response of the init model (as the core is chosen); the gates elsewhere
    # stay dynamic. For networks whose early gates, fed shallow features, are worth nothing per input
    # and only cost their filters half of the data. None: every gate is dynamic
    static_layers: str | None = None
    # the gates read their inputs detached (ArchitectureControl.detach_input): no gradient of the
    # decoupling losses or of the gates' straight-through estimator reaches the backbone's weights,
    # which train on the task loss (and distillation) alone, as a static mask's do
    detach_gate_input: bool = False
    # boosted gates (ArchitectureControl.boost): kept channels scaled per input by 2·σ(g)
    boost_gates: bool = False
    autocast: str = "off"  # "bf16": train under CPU bf16 autocast (fast where the CPU has AMX / AVX512_BF16); eval is FP32
    static_eval: bool = True  # each epoch, also the accuracy on the static majority path (one more test pass)
    resume: bool = False  # continue from out_dir/resume.pt (written after every epoch) when it exists
    init_checkpoint: str | None = None
    # knowledge distillation: a dense checkpoint of the same model whose logits the student also fits
    # (weight distill, temperature KD_TEMPERATURE); the static baselines of benchmarks/train_dynamic.py
    # get the same teacher, so the comparison stays at equal budget
    teacher_checkpoint: str | None = None
    distill: float = 0.0
    dense_epochs: int | None = None  # dense pre-training when gated without init_checkpoint; None = epochs
    dense_lr: float | None = None  # lr of that pre-training; None = lr
    out_dir: str = "runs/train"
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None  # torch threads per process; None = available cores / processes
    train_subset: int | None = None  # use a seeded random subset of this many training samples
    test_subset: int | None = None  # evaluate on the first this many test samples
    augment: bool = True
    image_size: int = 224  # imagefolder only
    macs_samples: int = 256  # test images whose effective MACs are counted each epoch
    progress: bool = True  # tqdm bar (rank 0)

    def __post_init__(self):
        if self.model not in list_models():
            raise ValueError(f"TrainConfig.model: unknown model '{self.model}'; registered: {', '.join(list_models())}")
        if self.dataset not in list_datasets():
            raise ValueError(f"TrainConfig.dataset: unknown dataset '{self.dataset}'; available: "
                             f"{', '.join(list_datasets())}")
        for name in ("epochs", "batch_size", "reduction", "image_size", "macs_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dense_epochs", "train_subset", "test_subset", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {v}")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        for name in ("lr", "gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.dense_lr is not None and not self.dense_lr > 0:
            raise ValueError(f"TrainConfig.dense_lr must be > 0, got {self.dense_lr}")
        for name in ("momentum", "weight_decay", "gate_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if any(not 0 < m <= 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"TrainConfig.milestones: increasing fractions of the epochs in (0, 1], "
                             f"got {self.milestones}")
        if self.target_ratio is not None and not 0 <= self.target_ratio <= 1:
            raise ValueError(f"TrainConfig.target_ratio must lie in [0, 1], got {self.target_ratio}")
        for name in ("lambda_mi", "lambda_kl", "lambda_s", "lambda_bs", "lambda_rt"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {v}")
        if not self.gated and self.has_loss_settings():
            raise ValueError("TrainConfig: preset/lambda_*/target_ratio/kl_reduction/budget apply to gated training only "
                             "(gated=False)")
        from .nn import GATE_INITS

        if self.autocast not in ("off", "bf16"):
            raise ValueError(f"TrainConfig.autocast: 'off' or 'bf16', got {self.autocast!r}")
        if self.hard_gates_from is not None and not 0 <= self.hard_gates_from <= 1:
            raise ValueError(f"TrainConfig.hard_gates_from: a fraction of the epochs in [0, 1], got {self.hard_gates_from}")
        if self.distill < 0 or (self.distill > 0) != (self.teacher_checkpoint is not None):
            raise ValueError(f"TrainConfig.distill/teacher_checkpoint: a positive distill weight needs a teacher "
                             f"checkpoint and a teacher needs distill > 0, got distill={self.distill}, "
                             f"teacher_checkpoint={self.teacher_checkpoint!r}")
        if self.freeze_gates_from is not None and not 0 <= self.freeze_gates_from <= 1:
            raise ValueError(f"TrainConfig.freeze_gates_from: a fraction of the epochs in [0, 1], got {self.freeze_gates_from}")
        for name in ("bs_decay", "rt_decay"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise ValueError(f"TrainConfig.{name}: a fraction of the epochs in (0, 1], got {v}")
        if self.core_ratio is not None:
            if not self.gated or self.static_from is not None:
                raise ValueError("TrainConfig.core_ratio: a static core belongs to a dynamic gated run "
                                 "(gated=True, static_from=None)")
            r = self.loss_config().target_ratio
            if not 0 < self.core_ratio < r:
                raise ValueError(f"TrainConfig.core_ratio: a share of the filters in (0, R) with R = {r} the "
                                 f"target ratio, got {self.core_ratio}")
        if self.static_layers is not None:
            if not self.gated or self.static_from is not None:
                raise ValueError("TrainConfig.static_layers: static layers belong to a dynamic gated run "
                                 "(gated=True, static_from=None)")
            if not self.static_layer_prefixes():
                raise ValueError(f"TrainConfig.static_layers: comma-separated gate path prefixes such as "
                                 f"'layer1,layer2', got {self.static_layers!r}")
        if self.static_from is not None and not self.gated:
            raise ValueError("TrainConfig.static_from: a static-mask baseline is a gated model (gated=True)")
        if self.gate_init not in GATE_INITS:
            raise ValueError(f"TrainConfig.gate_init: one of {GATE_INITS}, got {self.gate_init!r}")
        if self.dataset not in ("digits", "fashion_mnist") and self.data_root is None:
            raise ValueError(f"TrainConfig.data_root: dataset '{self.dataset}' is read from a local folder; "
                             f"pass its path (only 'digits' is embedded)")
        if self.gated:
            self.loss_config()  # unknown presets and bad values fail now, not after dense pre-training

    def has_loss_settings(self) -> bool:
        return any(getattr(self, n) is not None for n in ("preset",) + _LOSS_FIELDS)

    def loss_config(self):
        """The dyninfer.losses.LossConfig of this run: ``preset`` (or LossConfig's defaults) with the
        lambda_* / target_ratio fields given here replacing the preset's."""
        from .losses import LossConfig, preset

        overrides = {n: getattr(self, n) for n in _LOSS_FIELDS if getattr(self, n) is not None}
        if self.preset is not None:
            return dataclasses.replace(preset(self.preset), **overrides)
        try:
            return LossConfig(**overrides)
        except TypeError as exc:
            raise ValueError(f"TrainConfig: without a preset give lambda_mi, lambda_kl, lambda_s and "
                             f"target_ratio ({exc})") from exc

    def static_layer_prefixes(self) -> list[str]:
        """The prefixes of ``static_layers`` (empty when None)."""
        return [p.strip() for p in (self.static_layers or "").split(",") if p.strip()]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


@dataclass
class TrainResult:
    config: TrainConfig
    model: nn.Module  # final weights (rank 0's == every rank's), eval mode
    history: list[dict[str, Any]]  # one entry per epoch (what log.jsonl holds)
    final: dict[str, Any]  # last epoch's entry
    best: dict[str, Any]  # entry of the epoch with the highest test accuracy
    best_path: Path | None  # None on ranks != 0
    last_path: Path | None
    seconds: float
    dense: "TrainResult | None" = None  # the dense pre-training run, when one was done
    loss_config: Any = None
    criterion: nn.Module | None = None  # the DecouplingLoss (holds the trained W_cla) of a gated run
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# distributed context


@dataclass(frozen=True)
class _Dist:
    world: int = 1
    rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_dist() -> tuple[_Dist, bool]:
    """(context, whether we created the process group). Uses torchrun's env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), False
    rank = int(os.environ.get("RANK", "0"))
    created = False
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun "
                                   f"--nproc-per-node {world} (or set MASTER_ADDR/MASTER_PORT)")
        dist.init_process_group("gloo", rank=rank, world_size=world)
        created = True
    return _Dist(dist.get_world_size(), dist.get_rank()), created


# ---------------------------------------------------------------------------------------------
# model + loss in one module (what DDP wraps)


class _CrossEntropy(nn.Module):
    def forward(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(logits, labels)
        return ce, {"ce": ce.detach()}


KD_TEMPERATURE = 4.0  # Hinton et al.'s CIFAR setting; the T² factor keeps the gradient scale of CE


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float = KD_TEMPERATURE) -> Tensor:
    """T²·KL(softmax(teacher/T) || softmax(student/T)), batch mean (Hinton et al., 2015)."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                    log_target=True, reduction="batchmean") * (t * t)


class _TrainStep(nn.Module):
    """forward(x, y) -> (total loss, parts, logits). The loss runs inside forward so DDP sees and
    synchronises its parameters (W_cla) together with the network's. With a ``teacher`` (a frozen
    dense model, TrainConfig.teacher_checkpoint) the loss adds ``distill`` × distillation_loss."""

    def __init__(self, model: nn.Module, criterion: nn.Module, teacher: nn.Module | None = None,
                 distill: float = 0.0):
        super().__init__()
        self.model = model
        self.criterion = criterion
        # a plain attribute, not a submodule: the teacher is neither trained, saved nor synchronised
        self.__dict__["teacher"] = teacher
        self.distill = distill

    def forward(self, x: Tensor, y: Tensor):
        logits = self.model(x)
        total, parts = self.criterion(logits, y)
        teacher = self.__dict__["teacher"]
        if teacher is not None and self.distill > 0:
            with torch.no_grad():
                target = teacher(x)
            kd = distillation_loss(logits, target)
            total = total + self.distill * kd
            parts = {**parts, "kd": kd.detach()}
        return total, parts, logits


def _param_groups(model: nn.Module, criterion: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    net, gate = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (gate if "_gate." in name else net).append(p)
    seen = {id(p) for p in model.parameters()}
    aux = [p for p in criterion.parameters() if id(p) not in seen and p.requires_grad]  # W_cla
    groups = [{"params": net, "weight_decay": cfg.weight_decay}]
    if gate or aux:
        groups.append({"params": gate + aux, "weight_decay": cfg.gate_weight_decay})
    return groups


# ---------------------------------------------------------------------------------------------
# data


def _datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, int]:
    train_ds = load_dataset(cfg.dataset, cfg.data_root, "train", augment=cfg.augment, image_size=cfg.image_size)
    test_ds = load_dataset(cfg.dataset, cfg.data_root, "test", augment=False, image_size=cfg.image_size)
    num_classes = train_ds.num_classes
    if cfg.train_subset is not None and cfg.train_subset < len(train_ds):
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(train_ds), generator=g)[: cfg.train_subset].tolist()
        train_ds = Subset(train_ds, idx)
    if cfg.test_subset is not None and cfg.test_subset < len(test_ds):
        test_ds = Subset(test_ds, list(range(cfg.test_subset)))
    return train_ds, test_ds, num_classes


def _train_loader(ds: Dataset, cfg: TrainConfig, d: _Dist):
    if cfg.batch_size % d.world:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} (global) must be divisible by the "
                         f"{d.world} processes")
    per_rank = cfg.batch_size // d.world
    if d.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
        n = math.ceil(len(ds) / d.world)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed))
        n = len(ds)
    # a final batch of one sample breaks BatchNorm in train mode: drop it in that case only
    drop_last = n % per_rank == 1
    return DataLoader(ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers, drop_last=drop_last)


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, macs_samples: int = 256, static_eval: bool = True) -> dict[str, Any]:
    """Eval-mode test accuracy, per-layer gate density (mean of z over samples and channels), overall
    density (kept / total gated channels, layers pooled), MACs per sample on the first
    ``macs_samples`` images (dense and effective, dyninfer.flops.count_macs) and, for a gated model,
    the conditionality figures of dyninfer.analysis.conditionality under "conditionality" (with the
    static majority path's accuracy when ``static_eval``: one more pass over ``loader``)."""
    from .analysis.conditionality import path_conditionality, static_accuracy, static_path_masks
    from .analysis.paths import PathSet
    from .flops import count_macs
    from .nn import calculation_path

    model.eval()
    gate_map = gates(model)
    correct, n, loss_sum = 0, 0, 0.0
    macs_x: list[Tensor] = []
    paths, labels, preds = [], [], []
    n_macs = 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += y.shape[0]
        if gate_map:
            paths.append(calculation_path(model).to(torch.uint8))  # (B, Σ N_l)
            labels.append(y)
            preds.append(logits.argmax(1))
        if n_macs < macs_samples:
            macs_x.append(x[: macs_samples - n_macs])
            n_macs += macs_x[-1].shape[0]
    out: dict[str, Any] = {"test_acc": correct / max(n, 1), "test_loss": loss_sum / max(n, 1)}
    if gate_map:
        ps = PathSet(torch.cat(paths), torch.cat(labels), torch.cat(preds), list(gate_map),
                     [g.out_channels for g in gate_map.values()])
        cond = path_conditionality(ps)
        out["density"] = cond.layer_density
        out["density_mean"] = cond.density
        if static_eval:
            masks = static_path_masks(cond.firing_rate, cond.gate_names, cond.gate_sizes)
            cond.static_accuracy = static_accuracy(model, loader, masks)
        out["conditionality"] = {k: v for k, v in cond.to_json().items() if k not in ("layer_density",)}
    report = count_macs(model, torch.cat(macs_x))
    out["macs_dense"] = float(report.dense)
    out["macs_effective"] = float(torch.as_tensor(report.effective, dtype=torch.float64).mean())
    model.eval()
    return out


# ---------------------------------------------------------------------------------------------
# initialisation


def load_init_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load a checkpoint into ``model``. A dense checkpoint initialises a gated model (only the
    ``*_gate.*`` parameters stay as built: all gates open); otherwise names must match exactly.
    Returns 'dense->gated' or 'exact'."""
    state, _ = ckpt.load_checkpoint(path)
    result = model.load_state_dict(state, strict=False)
    missing_non_gate = [k for k in result.missing_keys if "_gate." not in k]
    if result.unexpected_keys or missing_non_gate:
        raise ckpt.CheckpointError(
            f"init checkpoint {path} does not fit model: unexpected {result.unexpected_keys[:5]}, "
            f"missing {missing_non_gate[:5]}")
    return "dense->gated" if result.missing_keys else "exact"


@contextlib.contextmanager
def _augmentation_off(train_ds: Dataset):
    """Within the block, the dataset under ``train_ds`` (through any Subset) serves unaugmented images."""
    ds = train_ds
    while isinstance(ds, Subset):
        ds = ds.dataset
    saved, ds.augment = getattr(ds, "augment", None), None
    try:
        yield
    finally:
        ds.augment = saved


def static_masks_from(path: str | os.PathLike, train_ds: Dataset, model: nn.Module,
                      batch_size: int = 256, match_macs: bool = True, macs_samples: int = 512) -> dict[str, Any]:
    """The static path of a gated checkpoint: its firing rates over ``train_ds`` (augmentation off),
    then in each layer the round(density_l · N_l) most frequent filters, density_l being that layer's
    mean density (dyninfer.analysis.conditionality.static_path_masks).

    Equal per-layer density is not equal MACs: a conv's cost is kept-in × kept-out, and the per-input
    paths keep correlated channels in consecutive layers, so E[in · out] > E[in] · E[out] and the
    static mask costs a few % fewer MACs than the paths it comes from. With ``match_macs`` every
    layer's density is scaled by the smallest s ≥ 1 (bisection) at which the static path costs at
    least the gated model's mean effective MACs over the first ``macs_samples`` images of
    ``train_ds``; the static baseline then never runs on fewer MACs than the dynamic model.

    Returns {"masks", "layer_density", "density", "macs_static", "macs_dynamic", "density_scale"}
    (MACs per image, dyninfer.flops.count_macs; the last three None without ``match_macs``). The
    training split, not the test split, chooses the mask."""
    from .analysis.conditionality import path_conditionality, static_path_masks
    from .analysis.paths import PathSet
    from .flops import count_macs
    from .nn import calculation_path, freeze_static

    source = ckpt.load_model(path)
    src_gates, own = gates(source), gates(model)
    if [(k, g.out_channels) for k, g in src_gates.items()] != [(k, g.out_channels) for k, g in own.items()]:
        raise ValueError(f"TrainConfig.static_from: {path} has gates {[(k, g.out_channels) for k, g in src_gates.items()][:3]}…, "
                         f"the model being trained {[(k, g.out_channels) for k, g in own.items()][:3]}…")
    paths, macs_x = [], []
    n_macs = 0
    source.eval()
    with _augmentation_off(train_ds), torch.no_grad():
        for x, _ in DataLoader(train_ds, batch_size=batch_size, shuffle=False):
            source(x)
            paths.append(calculation_path(source).to(torch.uint8))
            if n_macs < macs_samples:
                macs_x.append(x[: macs_samples - n_macs])
                n_macs += macs_x[-1].shape[0]
    bits = torch.cat(paths)
    n = bits.shape[0]
    ps = PathSet(bits, torch.full((n,), -1), torch.full((n,), -1), list(src_gates),
                 [g.out_channels for g in src_gates.values()])
    cond = path_conditionality(ps)
    base = dict(zip(cond.gate_names, (float(r.mean()) for r in torch.split(
        torch.as_tensor(cond.firing_rate, dtype=torch.float64).reshape(-1), list(cond.gate_sizes)))))

    def masks_at(scale: float) -> dict[str, Tensor]:
        return static_path_masks(cond.firing_rate, cond.gate_names, cond.gate_sizes,
                                 {k: min(1.0, d * scale) for k, d in base.items()})

    masks = masks_at(1.0)
    macs_static = macs_dynamic = scale = None
    if match_macs:
        with torch.no_grad():
            macs_dynamic = float(torch.as_tensor(count_macs(source, torch.cat(macs_x)).effective,
                                                 dtype=torch.float64).mean())
            frozen = copy.deepcopy(source).eval()
            one = macs_x[0][:1]

            def static_cost(m: dict[str, Tensor]) -> float:
                freeze_static(gates(frozen), m)
                return float(torch.as_tensor(count_macs(frozen, one).effective, dtype=torch.float64).mean())

            positive = [d for d in base.values() if d > 0]  # a layer at density 0 stays at 0 whatever s
            lo, hi = 1.0, 1.0 / min(positive) if positive else 1.0  # at hi every other layer is fully on
            macs_static = static_cost(masks)
            if macs_static < macs_dynamic:
                for _ in range(24):  # keep counts are integers: stop once the bracket holds one step
                    mid = 0.5 * (lo + hi)
                    if static_cost(masks_at(mid)) >= macs_dynamic:
                        hi = mid
                    else:
                        lo = mid
                    if hi - lo < 1e-4:
                        break
                masks = masks_at(hi)
                macs_static = static_cost(masks)
                scale = hi
            else:
                scale = 1.0
    return {"masks": masks, "layer_density": {k: float(m.float().mean()) for k, m in masks.items()},
            "density": float(torch.cat(list(masks.values())).float().mean()),
            "macs_static": macs_static, "macs_dynamic": macs_dynamic, "density_scale": scale}


@torch.no_grad()
def core_masks(model: nn.Module, train_ds: Dataset, ratio: float, samples: int = 2048,
               batch_size: int = 256) -> dict[str, Tensor]:
    """Static core of every gate of ``model``: {gate path: (N,) bool} with the round(ratio · N) filters
    (at least 1) whose unit output has the largest mean global-average-pooled response over the first
    ``samples`` images of ``train_ds`` (augmentation off), every gate open while measuring. The
    response is the one the response targets rank (before gating); deterministic for a given model."""
    own = gates(model)
    was_training = model.training
    saved_keep = {k: g.force_keep for k, g in own.items()}
    sums: dict[str, Tensor] = {}
    seen = 0
    try:
        model.eval()
        for g in own.values():
            g.force_keep = 1.0
        n = min(samples, len(train_ds))
        with _augmentation_off(train_ds):
            for x, _ in DataLoader(Subset(train_ds, range(n)), batch_size=batch_size, shuffle=False):
                model(x)
                for k, g in own.items():
                    sums[k] = sums.get(k, 0) + g.y_mean.double().sum(0)
                seen += x.shape[0]
    finally:
        for k, g in own.items():
            g.force_keep = saved_keep[k]
        model.train(was_training)
    masks = {}
    for k, total in sums.items():
        mean = total / max(seen, 1)
        keep = torch.zeros(mean.numel(), dtype=torch.bool)
        keep[torch.sort(mean, descending=True, stable=True).indices[:max(1, int(round(ratio * mean.numel())))]] = True
        masks[k] = keep
    return masks


def static_layer_masks(model: nn.Module, train_ds: Dataset, prefixes: list[str], ratio: float) -> dict[str, Tensor]:
    """{gate path: (N,) bool} for the gates whose path is one of ``prefixes`` or lies under one
    (TrainConfig.static_layers): the round(ratio · N) filters of strongest mean response, as
    ``core_masks`` ranks them. A prefix that names no gate is an error naming the gates there are."""
    own = list(gates(model))
    under = {p: [k for k in own if k == p or k.startswith(p + ".")] for p in prefixes}
    missing = [p for p, ks in under.items() if not ks]
    if missing:
        raise ValueError(f"TrainConfig.static_layers: {missing} name no gate of the model; its gates are "
                         f"{own[:4]} ... ({len(own)} in all)")
    chosen = {k for ks in under.values() for k in ks}
    return {k: m for k, m in core_masks(model, train_ds, ratio).items() if k in chosen}


# ---------------------------------------------------------------------------------------------
# the loop


def _fmt_macs(v: float) -> str:
    return f"{v / 1e6:.2f}M"


def _epoch_line(e: dict[str, Any], epochs: int) -> str:
    parts = " ".join(f"{k} {v:.4g}" for k, v in e["train_parts"].items())
    s = (f"epoch {e['epoch']:>3}/{epochs} lr {e['lr']:.3g} loss {e['train_loss']:.4f} ({parts}) "
         f"train_acc {e['train_acc']:.4f} test_acc {e['test_acc']:.4f}")
    if "density_mean" in e:
        s += f" density {e['density_mean']:.3f}"
        c = e["conditionality"]
        s += f" dynamic {100 * c['dynamic_share']:.1f}% H {c['path_entropy_per_filter']:.3f}"
        if c["static_accuracy"] is not None:
            s += f" static_path_acc {c['static_accuracy']:.4f}"
    s += f" MACs {_fmt_macs(e['macs_effective'])}/{_fmt_macs(e['macs_dense'])} {e['seconds']:.1f}s"
    return s


RESUME_FILE = "resume.pt"
# TrainConfig fields that may differ between a run and its resumption
_RESUME_FREE = {"resume", "progress", "threads", "num_workers", "out_dir"}


# fields that only a gated run reads: a dense run's resume state ignores them
_GATED_ONLY = {"preset", *_LOSS_FIELDS, "gate_init", "freeze_gates", "static_from", "static_match_macs", "bs_decay", "rt_decay",
               "hard_gates_from", "freeze_gates_from", "core_ratio", "static_layers", "detach_gate_input", "boost_gates",
               "static_eval"}


def _resume_config(cfg: TrainConfig) -> dict[str, Any]:
    skip = _RESUME_FREE | (set() if cfg.gated else _GATED_ONLY)
    return {k: v for k, v in cfg.to_json().items() if k not in skip}


def _save_resume(path: Path, cfg: TrainConfig, epoch: int, model: nn.Module, criterion: nn.Module, opt, sched,
                 loader: DataLoader, history: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """Everything the next epoch depends on, written atomically: weights, W_cla, optimiser and
    scheduler state, the global RNG and the sampler's generator (so a resumed single-process run
    draws the same batches, noise and augmentation as an uninterrupted one), the log so far."""
    import io

    from ._io import atomic_write_bytes

    gen = getattr(loader.sampler, "generator", None)
    state = {"format": "dyninfer-resume", "version": 1, "epoch": epoch,
             "config": json.dumps(_resume_config(cfg), sort_keys=True),
             "model": model.state_dict(), "criterion": criterion.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
             "sampler_rng": gen.get_state() if gen is not None else None,
             "history": json.dumps(history), "best": json.dumps(best)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_resume(path: Path, cfg: TrainConfig, model: nn.Module, criterion: nn.Module, opt, sched,
                 loader: DataLoader) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    """Restore what ``_save_resume`` wrote; returns (completed epochs, history, best entry)."""
    try:
        state = torch.load(path, weights_only=True)  # tensors and plain containers only: no code runs
        if state.get("format") != "dyninfer-resume" or state.get("version") != 1:
            raise ValueError(f"format {state.get('format')!r} version {state.get('version')!r}, "
                             f"expected 'dyninfer-resume' version 1")
        saved = json.loads(state["config"])
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    except Exception as exc:  # torch.load raises many types on a corrupt file
        raise ckpt.CheckpointError(f"resume state {path} cannot be read ({type(exc).__name__}: {exc}); "
                                   f"delete it to start the run afresh") from None
    mine = _resume_config(cfg)
    ignored = _RESUME_FREE | (set() if cfg.gated else _GATED_ONLY)
    gone = sorted(k for k in saved if k not in defaults)
    if gone:
        print(f"[dyninfer] --resume: {path} names settings this version no longer has: {', '.join(gone)}", flush=True)
    saved = {k: v for k, v in saved.items() if k not in ignored and k in defaults}
    # a field added to TrainConfig after the state was written counts as equal at its default
    differ = sorted(k for k in set(saved) | set(mine) if saved.get(k, defaults.get(k)) != mine.get(k))
    assumed = sorted(k for k in mine if k not in saved and not differ)
    if assumed:
        print(f"[dyninfer] --resume: {path} predates the settings {', '.join(assumed)}; taken at their defaults "
              f"({', '.join(f'{k}={mine[k]!r}' for k in assumed)}) for the epochs still to run", flush=True)
    if differ:
        raise ValueError(f"--resume: {path} was written by a run with other settings: "
                         + ", ".join(f"{k}={saved.get(k)!r} (now {mine.get(k)!r})" for k in differ[:6])
                         + "; resume with the same settings, or use another --out-dir")
    try:
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ckpt.CheckpointError(f"resume state {path} does not fit the model: {exc}") from None
    torch.set_rng_state(state["torch_rng"])
    gen = getattr(loader.sampler, "generator", None)
    if gen is not None and state["sampler_rng"] is not None:
        gen.set_state(state["sampler_rng"])
    return int(state["epoch"]), json.loads(state["history"]), json.loads(state["best"])


def _sync_buffers(model: nn.Module) -> None:
    for b in model.buffers():
        dist.broadcast(b, src=0)


def _run(cfg: TrainConfig, d: _Dist) -> TrainResult:
    t0 = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    train_ds, test_ds, num_classes = _datasets(cfg)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model = create_model(cfg.model, num_classes=num_classes, gated=cfg.gated, reduction=cfg.reduction)
    init = None
    if cfg.init_checkpoint is not None:
        init = load_init_weights(model, cfg.init_checkpoint)
    if cfg.gated and init != "exact":  # fresh gates: the chosen initialisation
        for g in gates(model).values():
            g.reset_parameters(cfg.gate_init)
    static = None
    if cfg.static_from is not None:
        static = static_masks_from(cfg.static_from, train_ds, model, match_macs=cfg.static_match_macs)
        from .nn import freeze_static

        freeze_static(gates(model), static["masks"])
    core = None
    if cfg.core_ratio is not None:
        core = core_masks(model, train_ds, cfg.core_ratio)
        for k, g in gates(model).items():
            g.set_core(core[k])
    static_layers = None
    if cfg.static_layers is not None:
        static_layers = static_layer_masks(model, train_ds, cfg.static_layer_prefixes(),
                                           cfg.loss_config().target_ratio)
        own = gates(model)
        for k, keep in static_layers.items():
            own[k].freeze_static(keep)  # also drops the core there
    core_gates = [g for g in gates(model).values() if g.core is not None]
    for g in gates(model).values():  # for the whole run; the returned model's gates are reset below
        g.detach_input = cfg.detach_gate_input
        g.boost = cfg.boost_gates
    if cfg.freeze_gates:
        for g in gates(model).values():
            g.requires_grad_(False)
    loss_cfg = None
    if cfg.gated:
        from .losses import DecouplingLoss

        loss_cfg = cfg.loss_config()
        criterion = DecouplingLoss(model, num_classes, loss_cfg)
    else:
        criterion = _CrossEntropy()
    teacher = None
    if cfg.teacher_checkpoint is not None:
        teacher = create_model(cfg.model, num_classes=num_classes, gated=False, reduction=cfg.reduction)
        if load_init_weights(teacher, cfg.teacher_checkpoint) != "exact":
            raise ckpt.CheckpointError(f"teacher checkpoint {cfg.teacher_checkpoint}: not a dense {cfg.model}")
        teacher.eval().requires_grad_(False)
    step_module = _TrainStep(model, criterion, teacher, cfg.distill)
    groups = _param_groups(model, criterion, cfg)
    torch.manual_seed(cfg.seed + 1 + d.rank)  # gate noise / augmentation differ between ranks
    wrapped: nn.Module = step_module
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # find_unused_parameters: with lambda_* = 0 a loss part (and its W_cla) may not take part
        wrapped = DDP(step_module, find_unused_parameters=cfg.gated)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    milestones = sorted({max(1, int(round(m * cfg.epochs))) for m in cfg.milestones if m < 1})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    train_loader = _train_loader(train_ds, cfg, d)
    test_loader = DataLoader(test_ds, batch_size=max(cfg.batch_size, 128), shuffle=False,
                             num_workers=cfg.num_workers)

    log_path = out_dir / "log.jsonl"
    meta = {"train": cfg.to_json(), "num_classes": num_classes, "world_size": d.world,
            "loss": asdict(loss_cfg) if loss_cfg is not None else None, "init": init}
    if static is not None:
        meta["static_masks"] = {"from": cfg.static_from, **{k: static[k] for k in (
            "layer_density", "density", "macs_static", "macs_dynamic", "density_scale")}}
    if core is not None:
        meta["core"] = {"ratio": cfg.core_ratio, "filters": sum(int(m.sum()) for m in core.values()),
                        "of": sum(m.numel() for m in core.values())}
    if static_layers is not None:
        meta["static_layers"] = {"prefixes": cfg.static_layer_prefixes(), "gates": len(static_layers),
                                 "filters": sum(m.numel() for m in static_layers.values()),
                                 "of": sum(g.out_channels for g in gates(model).values())}
    resume_path = out_dir / RESUME_FILE
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start = 0
    if cfg.resume and resume_path.exists():
        start, history, best = _load_resume(resume_path, cfg, model, criterion, opt, sched, train_loader)
        if d.enabled:  # rank 0's generator state was saved: give every rank its own stream again
            torch.manual_seed(cfg.seed + 1 + d.rank + 1000 * start)
        if d.main:
            print(f"[dyninfer] resuming {resume_path} after epoch {start} of {cfg.epochs}", flush=True)
    if d.main:
        (out_dir / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        log_path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in history))
        kind = "gated" if cfg.gated else "dense"
        print(f"[dyninfer] training {kind} {cfg.model} on {cfg.dataset} ({len(train_ds)} train / "
              f"{len(test_ds)} test) for {cfg.epochs} epochs, {d.world} process(es) x "
              f"{torch.get_num_threads()} threads" + (f", loss {loss_cfg}" if loss_cfg else "")
              + (f", init {cfg.init_checkpoint} ({init})" if init else ""), flush=True)

    from tqdm import tqdm

    best_path = out_dir / ("best" + ckpt.SUFFIX) if best is not None else None
    last_path = out_dir / ("last" + ckpt.SUFFIX) if history else None
    for epoch in range(start + 1, cfg.epochs + 1):
        te = time.perf_counter()
        if d.enabled:
            train_loader.sampler.set_epoch(epoch)
        wrapped.train()
        if cfg.gated and cfg.bs_decay is not None:  # epoch e of E: 1 - (e-1)/(bs_decay*E), floored at 0
            criterion.bs_scale = max(0.0, 1.0 - (epoch - 1) / (cfg.bs_decay * cfg.epochs))
        if cfg.gated and cfg.rt_decay is not None:
            criterion.rt_scale = max(0.0, 1.0 - (epoch - 1) / (cfg.rt_decay * cfg.epochs))
        if cfg.gated:  # epoch e (1-based) is hard when e - 1 >= hard_gates_from * E
            frozen = cfg.freeze_gates_from is not None and epoch - 1 >= cfg.freeze_gates_from * cfg.epochs
            hard = frozen or (cfg.hard_gates_from is not None and epoch - 1 >= cfg.hard_gates_from * cfg.epochs)
            for g in gates(model).values():
                g.hard = hard
                if frozen:  # no grad -> SGD skips them (no momentum, no weight decay)
                    g.requires_grad_(False)
            criterion.aux_scale = 0.0 if frozen else 1.0
        lr = opt.param_groups[0]["lr"]
        sums: dict[str, float] = {}
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=not (cfg.progress and d.main))
        for x, y in bar:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
                total, parts, logits = wrapped(x, y)
            if not torch.isfinite(total):
                raise FloatingPointError(f"epoch {epoch}: loss is {total.item()} (lr {lr}); lower the lr")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for g in core_gates:  # the core rows stay what set_core wrote (weight decay may be on)
                g.apply_core()
            b = y.shape[0]
            loss_sum += total.item() * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) * b
            correct += (logits.detach().argmax(1) == y).sum().item()
            seen += b
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        sched.step()
        if d.enabled:
            _sync_buffers(model)  # BN running stats: rank 0's everywhere
            stats = torch.tensor([loss_sum, float(correct), float(seen)] + [sums[k] for k in sorted(sums)],
                                 dtype=torch.float64)
            dist.all_reduce(stats)
            loss_sum, correct, seen = stats[0].item(), int(stats[1].item()), int(stats[2].item())
            sums = {k: stats[3 + i].item() for i, k in enumerate(sorted(sums))}
        entry: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen,
                                 "train_parts": {k: v / seen for k, v in sums.items()},
                                 "train_acc": correct / seen}
        # every rank evaluates the full test set (identical weights -> identical numbers; no barrier)
        entry.update(evaluate(model, test_loader, cfg.macs_samples, static_eval=cfg.static_eval))
        entry["seconds"] = time.perf_counter() - te
        history.append(entry)
        is_best = best is None or entry["test_acc"] >= best["test_acc"]
        if is_best:
            best = entry
        if d.main:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            tqdm.write(_epoch_line(entry, cfg.epochs))
            metrics = {k: entry[k] for k in ("epoch", "test_acc", "test_loss", "macs_dense", "macs_effective")}
            if "density_mean" in entry:
                metrics["density_mean"] = entry["density_mean"]
                metrics["conditionality"] = {k: v for k, v in entry["conditionality"].items()
                                             if k not in ("layer_dynamic_share", "class_density")}
            last_path = ckpt.save_checkpoint(out_dir / "last", model, meta, metrics)
            if is_best:
                best_path = ckpt.save_checkpoint(out_dir / "best", model, meta, metrics)
            _save_resume(resume_path, cfg, epoch, model, criterion, opt, sched, train_loader, history, best)
    for g in gates(model).values():
        g.hard = False  # the returned model trains with SemHash again if trained further
        g.detach_input = False
    model.eval()
    return TrainResult(config=cfg, model=model, history=history, final=history[-1], best=best,
                       best_path=best_path, last_path=last_path, seconds=time.perf_counter() - t0,
                       loss_config=loss_cfg, criterion=criterion if cfg.gated else None)


def train(cfg: TrainConfig) -> TrainResult:
    """Train as ``cfg`` says; under torchrun (WORLD_SIZE > 1) with DDP/gloo. A gated run without
    ``init_checkpoint`` first trains the dense model into ``out_dir/dense`` and starts from its last epoch."""
    d, created = _init_dist()
    threads = cfg.threads or max(1, available_cpus() // d.world)
    torch.set_num_threads(threads)
    try:
        dense = None
        if cfg.gated and cfg.init_checkpoint is None:
            dense_cfg = dataclasses.replace(
                cfg, gated=False, preset=None, **{n: None for n in _LOSS_FIELDS}, freeze_gates=False,
                epochs=cfg.dense_epochs or cfg.epochs, lr=cfg.dense_lr or cfg.lr,
                out_dir=str(Path(cfg.out_dir) / "dense"))
            dense = _run(dense_cfg, d)
            init_path = Path(dense_cfg.out_dir) / ("last" + ckpt.SUFFIX)
            if d.enabled:
                dist.barrier()  # rank 0 has written the dense checkpoint
            cfg = dataclasses.replace(cfg, init_checkpoint=str(init_path))
        result = _run(cfg, d)
        result.dense = dense
        for r in (result, dense):
            if r is not None:
                r.extra["threads"] = threads
                r.extra["world_size"] = d.world
        return result
    finally:
        if created:
            dist.destroy_process_group()
