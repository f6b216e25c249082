"""The MixPHM adapter: a shared PHM down-projection and a mixture of PHM up-projections."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixphm.config import MergeMode, MixPHMConfig
from mixphm.phm import PHMProjection, PHMRule
from mixphm.routing import ExpertRouter

MergedWeights = tuple[Tensor, Tensor, Tensor, Tensor]


class MixPHMAdapter(nn.Module):
    """h (..., d) → h_a (..., d) = up_e(dropout(f(down(h)))), f = GELU (``config.activation``).

    Training: the up-projection expert e is the router's choice for this layer and step.
    Evaluation: the experts merged by weight averaging. With gradients enabled the merged
    weights are built differentiably on each call; without, the forward reads the merged
    weights held in this module's buffers, which are rebuilt (``merge``) when the adapter
    enters eval mode (``model.eval()``), when its weights are loaded (``load_state_dict``,
    ``load_adapter``), when ``merge_mode`` changes, and by ``merge_experts(model)``. The
    forward never decides whether to rebuild, so it is one static graph; a write to the
    weights while the model stays in eval mode (an optimizer step, an EMA through
    ``.data``) takes effect at the next of those events.
    """

    router_slot: Tensor
    merged_down_weight: Tensor
    merged_down_bias: Tensor
    merged_up_weight: Tensor
    merged_up_bias: Tensor

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
        self._merge_mode: MergeMode = config.merge
        self.approximate = "none"
        self.router = router
        # this adapter's index into the router's choices, as a tensor: an int attribute would
        # make torch.compile specialise (and recompile) the forward for every adapter
        self.register_buffer("router_slot", torch.tensor(layer_index), persistent=False)
        shapes = {
            "merged_down_weight": (bottleneck, d_model),
            "merged_down_bias": (bottleneck,),
            "merged_up_weight": (d_model, bottleneck),
            "merged_up_bias": (d_model,),
        }
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(shape), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.merge())
        self.configure(config)

    def configure(self, config: MixPHMConfig) -> None:
        """Take ``config``'s settings that leave the weights' shapes alone: dropout, merge
        mode and nonlinearity (the routing seed is the router's)."""
        self.dropout.p = config.dropout
        self.approximate = "tanh" if config.activation == "gelu_new" else "none"
        self.merge_mode = config.merge

    @property
    def merge_mode(self) -> MergeMode:
        """How experts merge for inference ("factors" or "products"); setting it re-merges."""
        return self._merge_mode

    @merge_mode.setter
    def merge_mode(self, mode: MergeMode) -> None:
        self._merge_mode = mode
        self.merge()

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            down_w, down_b = self.down.expert(0)
            choice = self.router.choices.index_select(0, self.router_slot.view(1))
            up_w, up_b = self.up.expert(choice)
        elif torch.is_grad_enabled():
            down_w, down_b, up_w, up_b = self._build_merged()
        else:
            down_w, down_b, up_w, up_b = self.merged_weights()
        dtype = h.dtype
        hidden = F.linear(h, down_w.to(dtype), down_b.to(dtype))
        hidden = F.gelu(hidden, approximate=self.approximate)
        return F.linear(self.dropout(hidden), up_w.to(dtype), up_b.to(dtype))

    def merged_weights(self) -> MergedWeights:
        """(down Wᵀ, down b, merged up Wᵀ, merged up b) of the last ``merge``."""
        return (
            self.merged_down_weight,
            self.merged_down_bias,
            self.merged_up_weight,
            self.merged_up_bias,
        )

    @torch.no_grad()
    def merge(self) -> None:
        """Rebuild the merged weights from the current parameters (nothing to build while
        any of them is on the meta device, without data)."""
        merged = self._build_merged()
        if any(tensor.is_meta for tensor in merged):
            return
        for buffer, built in zip(self.merged_weights(), merged, strict=True):
            buffer.copy_(built)

    def train(self, mode: bool = True) -> MixPHMAdapter:
        super().train(mode)
        if not mode:
            self.merge()
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> MixPHMAdapter:
        """After a move or cast (``.to``, ``.double``), merge in the new device and dtype."""
        super()._apply(fn, recurse)
        self.merge()
        return self

    def _build_merged(self) -> MergedWeights:
        down_w, down_b = self.down.merged(self._merge_mode)
        up_w, up_b = self.up.merged(self._merge_mode)
        return down_w, down_b, up_w, up_b
