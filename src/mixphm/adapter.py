"""The MixPHM adapter: a shared PHM down-projection and a mixture of PHM up-projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixphm.config import MergeMode, MixPHMConfig
from mixphm.phm import PHMProjection, PHMRule
from mixphm.routing import ExpertRouter

MergedWeights = tuple[Tensor, Tensor, Tensor, Tensor]
"""(down Wᵀ (r, d), down b (r,), up Wᵀ (d, r), up b (d,)) of one adapter."""


class MixPHMAdapter(nn.Module):
    """h (..., d) → h_a (..., d) = up_e(dropout(f(down(h)))), f = GELU (``config.activation``).

    Training: the up-projection expert e is the router's choice for this layer and step.
    Evaluation: the experts merged by weight averaging, built from the current parameters
    in every forward (differentiably when gradients are on), so an output never differs
    from what the parameters define, whatever wrote them. For inference without that small
    cost, ``mixphm.deploy`` replaces each adapter by a ``DeployedAdapter`` holding its merge.
    """

    router_slot: Tensor

    def __init__(
        self,
        d_model: int,
        config: MixPHMConfig,
        rule: PHMRule | None,
        router: ExpertRouter,
        layer_index: int,
        owns_rule: bool = True,
    ) -> None:
        super().__init__()
        if d_model % config.reduction_factor:
            raise ValueError(
                f"hidden size {d_model} is not divisible by reduction_factor="
                f"{config.reduction_factor}"
            )
        bottleneck = d_model // config.reduction_factor
        rank = config.phm_rank
        # the shared rule is registered once per model: by the first adapter's down-projection
        self.down = PHMProjection(d_model, bottleneck, 1, config.phm_dim, rank, rule, owns_rule)
        experts = config.num_experts
        self.up = PHMProjection(
            bottleneck, d_model, experts, config.phm_dim, rank, rule, False, config.zero_init_up
        )
        self.dropout = nn.Dropout()
        self.merge_mode: MergeMode = config.merge
        """How experts merge for inference: "factors" (reference) or "products"."""
        self.approximate = "none"
        self.router = router
        # this adapter's index into the router's choices, as a tensor: an int attribute would
        # make torch.compile specialise (and recompile) the forward for every adapter
        self.register_buffer("router_slot", torch.tensor(layer_index), persistent=False)
        self.configure(config)

    def configure(self, config: MixPHMConfig) -> None:
        """Take ``config``'s settings that leave the weights' shapes alone: dropout, merge
        mode and nonlinearity (the routing seed is the router's)."""
        self.dropout.p = config.dropout
        self.approximate = "tanh" if config.activation == "gelu_new" else "none"
        self.merge_mode = config.merge

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            down_w, down_b = self.down.expert(0)
            choice = self.router.choices.index_select(0, self.router_slot.view(1))
            up_w, up_b = self.up.expert(choice)
        else:
            down_w, down_b, up_w, up_b = self.merged_weights()
        return bottleneck_forward(h, (down_w, down_b, up_w, up_b), self.approximate, self.dropout)

    def merged_weights(self) -> MergedWeights:
        """(down Wᵀ, down b, merged up Wᵀ, merged up b) of the current parameters."""
        down_w, down_b = self.down.merged(self.merge_mode)
        up_w, up_b = self.up.merged(self.merge_mode)
        return down_w, down_b, up_w, up_b


def bottleneck_forward(
    h: Tensor, weights: MergedWeights, approximate: str, dropout: nn.Module | None = None
) -> Tensor:
    """up(dropout(GELU(down(h)))) in the dtype of ``h`` (..., d)."""
    down_w, down_b, up_w, up_b = (w.to(h.dtype) for w in weights)
    hidden = F.gelu(F.linear(h, down_w, down_b), approximate=approximate)
    if dropout is not None:
        hidden = dropout(hidden)
    return F.linear(hidden, up_w, up_b)


class DeployedAdapter(nn.Module):
    """An adapter's merged weights as fixed buffers, for inference only: what
    ``mixphm.deploy`` puts in place of a ``MixPHMAdapter``. It has no parameters, so
    nothing can leave its weights stale; it refuses to enter training mode."""

    down_weight: Tensor
    down_bias: Tensor
    up_weight: Tensor
    up_bias: Tensor

    def __init__(self, adapter: MixPHMAdapter) -> None:
        super().__init__()
        with torch.no_grad():
            merged = adapter.merged_weights()
        for name, tensor in zip(
            ("down_weight", "down_bias", "up_weight", "up_bias"), merged, strict=True
        ):
            self.register_buffer(name, tensor.detach().clone())
        self.approximate = adapter.approximate
        self.training = False

    def forward(self, h: Tensor) -> Tensor:
        weights = (self.down_weight, self.down_bias, self.up_weight, self.up_bias)
        return bottleneck_forward(h, weights, self.approximate)

    def train(self, mode: bool = True) -> DeployedAdapter:
        if mode:
            raise RuntimeError(
                "this model's MixPHM adapters were deployed (mixphm.deploy): their experts are "
                "merged into fixed weights and their parameters are gone, so training cannot "
                "resume; load the adapter (mixphm.load_adapter) into a fresh model to train"
            )
        return super().train(False)
