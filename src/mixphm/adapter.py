"""The MixPHM adapter: a shared PHM down-projection and a mixture of PHM up-projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixphm.config import MixPHMConfig
from mixphm.phm import PHMProjection, PHMRule
from mixphm.routing import ExpertRouter

MergedWeights = tuple[Tensor, Tensor, Tensor, Tensor]


class MixPHMAdapter(nn.Module):
    """h (..., d) → h_a (..., d) = up_e(dropout(f(down(h)))), f = GELU (``config.activation``).

    Training: the up-projection expert e is the router's choice for this layer and step.
    Evaluation: the experts merged by weight averaging. Under ``torch.no_grad`` the merged
    weights are built once and cached until a parameter changes; with gradients enabled
    they are rebuilt differentiably on each call.
    """

    router_slot: Tensor

    def __init__(
        self,
        d_model: int,
        config: MixPHMConfig,
        rule: PHMRule | None,
        router: ExpertRouter,
        layer_index: int,
    ) -> None:
        super().__init__()
        if d_model % config.reduction_factor:
            raise ValueError(
                f"hidden size {d_model} is not divisible by reduction_factor="
                f"{config.reduction_factor}"
            )
        bottleneck = d_model // config.reduction_factor
        rank = config.phm_rank
        self.down = PHMProjection(d_model, bottleneck, 1, config.phm_dim, rank, rule)
        self.up = PHMProjection(bottleneck, d_model, config.num_experts, config.phm_dim, rank, rule)
        self.dropout = nn.Dropout(config.dropout)
        self.merge_mode = config.merge
        self.approximate = "tanh" if config.activation == "gelu_new" else "none"
        self.router = router
        # this adapter's index into the router's choices, as a tensor: an int attribute would
        # make torch.compile specialise (and recompile) the forward for every adapter
        self.register_buffer("router_slot", torch.tensor(layer_index), persistent=False)
        self._cache: MergedWeights | None = None
        self._cache_versions: tuple[int, ...] = ()

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            down_w, down_b = self.down.expert(0)
            up_w, up_b = self.up.expert(self.router.choices[self.router_slot])
        else:
            down_w, down_b, up_w, up_b = self.merged_weights()
        dtype = h.dtype
        hidden = F.gelu(
            F.linear(h, down_w.to(dtype), down_b.to(dtype)), approximate=self.approximate
        )
        return F.linear(self.dropout(hidden), up_w.to(dtype), up_b.to(dtype))

    def merged_weights(self) -> MergedWeights:
        """(down Wᵀ, down b, merged up Wᵀ, merged up b) for inference."""
        if torch.is_grad_enabled():
            return self._build_merged()
        versions = self._versions()
        if self._cache is None or versions != self._cache_versions:
            self._cache = tuple(t.detach() for t in self._build_merged())  # type: ignore[assignment]
            self._cache_versions = versions
        assert self._cache is not None
        return self._cache

    def merge(self) -> None:
        """Build and cache the merged weights now (no-op when the cache is current)."""
        with torch.no_grad():
            self.merged_weights()

    def _build_merged(self) -> MergedWeights:
        down_w, down_b = self.down.merged(self.merge_mode)
        up_w, up_b = self.up.merged(self.merge_mode)
        return down_w, down_b, up_w, up_b

    def _versions(self) -> tuple[int, ...]:
        """In-place updates (optimizer steps, loading) bump the version; moves change storage."""
        return tuple(v for p in self.parameters() for v in (p._version, p.data_ptr()))
