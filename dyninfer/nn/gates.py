"""Architecture controlling module and Improved SemHash (paper Sec. 3.1, Eq. 2-5).

A gate sees only the INPUT X of its conv unit, so the decision is known before the conv runs:

    s = GAP(X)                      (B, C)
    g = W2 · ReLU(W1 · s + b1) + b2 (B, N)        W1: (C/γ, C), W2: (N, C/γ)

Training uses Improved SemHash: s~ = g + α with α ~ N(0, 1),
    v1 = clamp(1.2·sigmoid(s~) − 0.1, 0, 1)   (saturating sigmoid, Eq. 3)
    v2 = 1(s~ > 0)                           (Eq. 4)
and a random half of the *samples* of the batch use v2 (forward) with the gradient of v1
(straight-through), the other half use v1. Evaluation uses z = 1(g > 0), no noise (Eq. 5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ArchitectureControl", "improved_semhash", "saturating_sigmoid", "GATE_INITS", "freeze_static", "CORE_MARGIN"]

# Gate initialisations (ArchitectureControl.reset_parameters):
#   "open":  W1 = 0, b1 = 1, W2 = 0, b2 = 1: g = 1 for every input (the published reference code's
#            initial state; its VGG keeps it). Every input gets the same logits until W2 moves, which
#            invites a static mask.
#   "input": W1 Kaiming-normal (fan-in, ReLU), b1 = 0, W2 PyTorch's default Linear init, b2 = 1: g
#            depends on the input from the first step (the reference code re-initialises W1 with Kaiming
#            for its CIFAR ResNets), and b2 = 1 keeps nearly every gate open on the dense init.
GATE_INITS = ("input", "open")

# logit of a static-core filter (ArchitectureControl.set_core) and of a frozen static gate
CORE_MARGIN = 10.0


def saturating_sigmoid(x: Tensor) -> Tensor:
    """Eq. 3: clamp(1.2·sigmoid(x) − 0.1, 0, 1); reaches exactly 0 and 1."""
    return torch.clamp(1.2 * torch.sigmoid(x) - 0.1, 0.0, 1.0)


def improved_semhash(g: Tensor, training: bool, generator: torch.Generator | None = None, hard: bool = False) -> Tensor:
    """Binary channel decisions from gate logits ``g`` of shape (B, N).

    In training a random half of the samples (exactly ``B // 2``, plus the middle one of an odd
    batch with probability 1/2) take the hard vector v2 with the gradient of v1; the rest take v1.
    ``hard=True`` (the end of a training run, TrainConfig.hard_gates_from): no noise and every sample
    takes the eval decision 1(g > 0), with the gradient of saturating_sigmoid(g), so the network
    finishes training on exactly the paths it will run at inference.
    """
    if g.dim() != 2:
        raise ValueError(f"improved_semhash: expected gate logits of shape (B, N), got {tuple(g.shape)}")
    if not training:
        return (g > 0).to(g.dtype)
    if hard:  # the eval decision 1(g > 0) in the forward pass, gradient of saturating_sigmoid(g)
        v1 = saturating_sigmoid(g)
        return v1 + ((g > 0).to(g.dtype) - v1).detach()
    noise = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
    noisy = g + noise
    v1 = saturating_sigmoid(noisy)
    v2 = (noisy > 0).to(g.dtype)
    hard = v1 + (v2 - v1).detach()  # value v2, gradient dv1 (straight-through)
    b = g.shape[0]
    perm = torch.randperm(b, generator=generator, device="cpu")
    n_hard = b // 2
    if b % 2 == 1 and torch.rand((), generator=generator).item() < 0.5:
        n_hard += 1
    pick = torch.zeros(b, dtype=torch.bool)
    pick[perm[:n_hard]] = True
    pick = pick.to(g.device).unsqueeze(1)  # (B, 1): whole samples, never channel ranges
    return torch.where(pick, hard, v1)


class ArchitectureControl(nn.Module):
    """Per-input filter selector of one conv unit.

    ``forward(x)`` returns z (B, N); ``forward(x, y)`` returns ``y * z`` with z broadcast over
    (H, W), where ``x`` is the unit's input (B, C, H, W) and ``y`` its output (B, N, H', W').
    After every forward the module keeps, without extra passes:
      * ``z``          (B, N) decisions (with autograd graph in training, for L_mi / L_kl),
      * ``logits``     (B, N) g before SemHash,
      * ``y_mean``     (B, N) GAP of the unit's output before gating (for L_kl), when y is given.
    All gates are open at initialisation: W1 = 0, b1 = 1, W2 = 0, b2 = 1, so g = 1 for every
    input (the recipe of the published reference code).
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"ArchitectureControl: channels must be positive, got in={in_channels}, out={out_channels}")
        if reduction < 1:
            raise ValueError(f"ArchitectureControl: reduction must be >= 1, got {reduction}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.reduction = reduction
        hidden = max(1, in_channels // reduction)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_channels)
        self.reset_open()
        self.z: Tensor | None = None
        self.logits: Tensor | None = None
        self.y_mean: Tensor | None = None
        # When not None, eval-mode decisions are overridden: keep this fraction of channels
        # (the highest logits). Used by density sweeps; never set during training.
        self.force_keep: float | None = None
        # Training-mode decisions are the eval ones (no noise, all samples hard); set by the
        # training loop for the last epochs (TrainConfig.hard_gates_from).
        self.hard = False
        # The gate reads its input without passing gradient back into it (set by the training loop,
        # TrainConfig.detach_gate_input): the decoupling losses and the straight-through gradient then
        # shape the gate's own parameters only, and the backbone trains on the task loss.
        self.detach_input = False
        # Boosted gates (feature boosting, as in Gao et al.'s FBS, ICLR 2019): a kept channel's output
        # is scaled by 2·σ(g), in (1, 2) since kept means g > 0, so the gate also says per input HOW
        # MUCH of each kept filter to use, and its logits get a direct gradient from the task loss
        # besides the straight-through one. Dropped channels stay exactly 0: MACs and paths are the
        # decisions z alone. Part of the model (saved in the checkpoint's model spec).
        self.boost = False
        # (N,) bool: the static core, filters that are on for every input (set_core), or None.
        # Not saved in the state dict: a core gate's parameters encode it (see set_core).
        self.core: Tensor | None = None
        # True once freeze_static made the gate a constant mask: its decisions depend on nothing, so the
        # decoupling losses skip it. Not saved: a frozen gate's parameters encode its mask.
        self.static = False

    def reset_open(self) -> None:
        self.reset_parameters("open")

    def reset_parameters(self, init: str = "open") -> None:
        """Initialise the two FCs as ``init`` (one of GATE_INITS, see there) says."""
        if init == "open":
            nn.init.zeros_(self.fc1.weight)
            nn.init.ones_(self.fc1.bias)
            nn.init.zeros_(self.fc2.weight)
        elif init == "input":
            nn.init.kaiming_normal_(self.fc1.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.fc1.bias)
            self.fc2.reset_parameters()
        else:
            raise ValueError(f"ArchitectureControl: unknown gate init {init!r}; one of {GATE_INITS}")
        nn.init.ones_(self.fc2.bias)

    def freeze_static(self, keep: Tensor, margin: float = CORE_MARGIN) -> None:
        """Make the gate a constant mask: z = keep (N,) bool for every input, in training too.

        W1 = W2 = 0, b1 = 0, b2 = ±margin, parameters frozen (requires_grad False). With margin 10 the
        training noise α ~ N(0, 1) flips a decision with probability Φ(−10) ≈ 8e-24, and the model
        still compiles and counts MACs like any gated model."""
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
        if keep.shape != (self.out_channels,):
            raise ValueError(f"ArchitectureControl.freeze_static: expected a mask of {self.out_channels} "
                             f"channels, got shape {tuple(keep.shape)}")
        with torch.no_grad():
            self.fc1.weight.zero_()
            self.fc1.bias.zero_()
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(torch.where(keep, margin, -margin).to(self.fc2.bias))
        for p in self.parameters():
            p.requires_grad_(False)
        self.core = None
        self.static = True

    def set_core(self, keep: Tensor | None, margin: float = CORE_MARGIN) -> None:
        """Make the filters of ``keep`` (N,) bool a static core: on for every input, while the gate
        keeps choosing among the others. Their rows of W2 are 0 and their b2 is ``margin``, so the
        logit is ``margin`` whatever the input: SemHash's noise cannot close them (Φ(−10) ≈ 8e-24),
        the saturating sigmoid is flat there (no gradient reaches the rows), and a compiled plan or
        FLOP count needs nothing new. ``apply_core`` restores the rows after an optimiser step.
        ``None`` removes the core (the parameters stay as they are)."""
        if keep is None:
            self.core = None
            return
        keep = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
        if keep.shape != (self.out_channels,):
            raise ValueError(f"ArchitectureControl.set_core: expected a mask of {self.out_channels} "
                             f"channels, got shape {tuple(keep.shape)}")
        self.core = keep.to(self.fc2.weight.device) if bool(keep.any()) else None  # an empty core is no core
        self._core_margin = float(margin)
        self.apply_core()

    def apply_core(self) -> None:
        """Write the core rows (W2 = 0, b2 = margin) again; a no-op without a core."""
        if self.core is None:
            return
        with torch.no_grad():
            self.fc2.weight[self.core] = 0.0
            self.fc2.bias[self.core] = self._core_margin

    def gate_logits(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ArchitectureControl: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.detach_input:
            x = x.detach()
        # GAP as adaptive_avg_pool2d (not x.mean) so that fvcore counts it like every other
        # global pool: 1 MAC per input element (dyninfer.flops relies on this).
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, C, 1, 1) -> (B, C)
        return self.fc2(F.relu(self.fc1(s)))  # (B, N)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        g = self.gate_logits(x)
        z = improved_semhash(g, self.training, hard=self.hard)
        if self.force_keep is not None and not self.training:
            z = topk_mask(g, self.force_keep)
        self.logits = g
        self.z = z
        if y is None:
            return z
        if y.dim() != 4 or y.shape[1] != self.out_channels:
            raise ValueError(
                f"ArchitectureControl: expected unit output (B, {self.out_channels}, H, W), got {tuple(y.shape)}")
        self.y_mean = y.mean(dim=(2, 3))
        return y * self.scale(z, g)[:, :, None, None]

    def scale(self, z: Tensor, g: Tensor) -> Tensor:
        """(B, N) multiplier of the unit's output channels: z, or z·2σ(g) when boosted."""
        return z * (2.0 * torch.sigmoid(g)) if self.boost else z

    def extra_repr(self) -> str:
        boost = ", boost=True" if self.boost else ""
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, reduction={self.reduction}{boost}"


def freeze_static(gates: dict[str, ArchitectureControl], masks: dict[str, Tensor]) -> None:
    """``ArchitectureControl.freeze_static`` on every gate of ``gates`` ({path: gate}) with
    ``masks[path]``; the two must name the same layers."""
    if set(gates) != set(masks):
        raise ValueError(f"freeze_static: masks for {sorted(set(masks) - set(gates))[:3]} name no gate, "
                         f"gates {sorted(set(gates) - set(masks))[:3]} have no mask")
    for path, g in gates.items():
        try:
            g.freeze_static(masks[path])
        except ValueError as exc:
            raise ValueError(f"gate '{path}': {exc}") from None


def topk_mask(g: Tensor, keep: float) -> Tensor:
    """(B, N) mask keeping round(keep·N) channels with the largest logits per sample."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"force_keep must lie in [0, 1], got {keep}")
    n = g.shape[1]
    k = int(round(keep * n))
    z = torch.zeros_like(g)
    if k > 0:
        # Stable sort: among equal logits the lower channel index wins, as in the C++ engine
        # (torch.topk leaves the order of ties unspecified; untrained gates tie everywhere).
        idx = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :k]
        z.scatter_(1, idx, 1.0)
    return z


class FollowGate(nn.Module):
    """Masks a depthwise unit's output with the decisions of the gate that produced its input.

    A depthwise conv computes output channel c from input channel c alone. After a gated unit the
    dropped input channels are zero, but the depthwise unit's BN shift (and activation) would turn
    each into a constant plane that every later layer has to read. Multiplying by the producer
    gate's z of the same forward makes a depthwise output channel exist exactly where its input
    channel does: the engine computes only those channels and the next conv skips the others.
    decouple() inserts one after every depthwise unit that reads a gated unit's output; it holds
    the gate by reference (not as a submodule: the gate's parameters stay where they are)."""

    def __init__(self, gate_path: str, gate: ArchitectureControl):
        super().__init__()
        self.gate_path = gate_path
        object.__setattr__(self, "_gate", gate)

    @property
    def gate(self) -> ArchitectureControl:
        return self._gate

    def forward(self, y: Tensor) -> Tensor:
        z = self._gate.z
        if z is None or z.shape != (y.shape[0], y.shape[1]):
            raise ValueError(f"FollowGate: gate '{self.gate_path}' has decisions of shape "
                             f"{None if z is None else tuple(z.shape)}, the depthwise output is {tuple(y.shape)}")
        return y * z[:, :, None, None].to(y.dtype)

    def extra_repr(self) -> str:
        return f"gate={self.gate_path!r}"
