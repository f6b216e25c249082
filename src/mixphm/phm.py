"""Parameterized hypercomplex multiplication (PHM) weights, stacked over experts.

A PHM weight of shape (d_in, d_out) is a sum of n Kronecker products

    W = Σ_{i=1..n} S_i ⊗ B_i,    S_i ∈ R^{n×n},  B_i = T_i U_i ∈ R^{(d_in/n)×(d_out/n)}

with the rule tensor S = {S_i} shared by every PHM weight of a model. With n = 1 and no
rule the weight is the block itself: a plain dense projection.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def phm_weight_t(blocks: Tensor, rule: Tensor | None) -> Tensor:
    """The transposed weight Wᵀ = Σ_i S_iᵀ ⊗ B_iᵀ, laid out for ``F.linear``.

    blocks: (..., n, p, q) with p = d_in / n, q = d_out / n; rule: (n, n, n) or None (n = 1).
    Returns (..., d_out, d_in); leading dimensions (experts) broadcast.
    """
    *lead, n, p, q = blocks.shape
    if rule is None:
        return blocks.squeeze(-3).transpose(-1, -2)
    # W[a·p + x, b·q + y] = Σ_i S[i, a, b] · B[i, x, y]; emit it transposed as (b, y, a, x).
    weight_t = torch.einsum("iab,...ixy->...byax", rule.to(blocks.dtype), blocks)
    return weight_t.reshape(*lead, n * q, n * p)


def low_rank_blocks(left: Tensor, right: Tensor) -> Tensor:
    """B_i = T_i U_i. left: (..., n, p, r), right: (..., n, r, q) → (..., n, p, q)."""
    return left @ right


class PHMRule(nn.Module):
    """The rule tensor S (n, n, n), one per model, shared by all its PHM weights."""

    def __init__(self, n: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.S = nn.Parameter(torch.randn(n, n, n) * init_std)


class PHMProjection(nn.Module):
    """``num_experts`` PHM projections d_in → d_out stored stacked along a leading axis.

    Factors: ``left`` (E, n, d_in/n, r) and ``right`` (E, n, r, d_out/n) when low-rank,
    else ``blocks`` (E, n, d_in/n, d_out/n); ``bias`` (E, d_out). All experts start equal;
    ``zero_init`` starts ``right`` (or ``blocks``) at zero, so the weight starts at zero.

    The shared rule is a child module (``rule``) of one projection of a model only (the
    first adapter's down-projection); the others hold a plain reference to it, so that a
    state dict, and a safetensors file of it, has S once.

    ``routed`` (E,) bool records which experts entered a differentiable forward since the
    optimizer last stepped or zeroed gradients: ``ExpertAdamW`` updates those and leaves
    the others untouched.
    """

    routed: Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        num_experts: int,
        phm_dim: int,
        rank: int | None,
        rule: PHMRule | None,
        registers_rule: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if d_in % phm_dim or d_out % phm_dim:
            raise ValueError(
                f"PHM projection {d_in}→{d_out} needs both sizes divisible by phm_dim={phm_dim}"
            )
        if (rule is None) != (phm_dim == 1):
            raise ValueError("a rule tensor is needed exactly when phm_dim > 1")
        self.d_in, self.d_out, self.num_experts = d_in, d_out, num_experts
        if registers_rule:
            self.rule = rule
        else:  # a plain reference, so the shared S is one entry of a model's state dict
            object.__setattr__(self, "rule", rule)
        p, q = d_in // phm_dim, d_out // phm_dim
        if rank is None:
            self.blocks = nn.Parameter(self._init_block(num_experts, phm_dim, p, q))
        else:
            self.left = nn.Parameter(self._init_block(num_experts, phm_dim, p, rank))
            self.right = nn.Parameter(self._init_block(num_experts, phm_dim, rank, q))
        self.low_rank = rank is not None
        if zero_init:  # the product starts at zero; the factor left of it still gets gradients
            nn.init.zeros_(self.factors()[-1])
        self.bias = nn.Parameter(torch.zeros(num_experts, d_out))
        self.register_buffer("routed", torch.zeros(num_experts, dtype=torch.bool), persistent=False)

    def _init_block(self, num_experts: int, n: int, rows: int, cols: int) -> Tensor:
        """Expert 0's matrices, copied to every expert.

        PHM factors: Xavier-uniform with gain √2 per (rows × cols) matrix (reference code).
        Plain projections: N(0, 0.01²), the near-zero init of Houlsby et al.
        """
        if self.rule is None:
            one = torch.randn(n, rows, cols) * 0.01
        else:
            bound = math.sqrt(2.0) * math.sqrt(6.0 / (rows + cols))
            one = torch.empty(n, rows, cols).uniform_(-bound, bound)
        return one.unsqueeze(0).repeat(num_experts, 1, 1, 1)

    def _rule(self) -> Tensor | None:
        return None if self.rule is None else self.rule.S

    def factors(self) -> tuple[Tensor, ...]:
        return (self.left, self.right) if self.low_rank else (self.blocks,)

    def _blocks(self, factors: tuple[Tensor, ...]) -> Tensor:
        return low_rank_blocks(*factors) if self.low_rank else factors[0]

    def expert(self, index: Tensor | int) -> tuple[Tensor, Tensor]:
        """Weightᵀ (d_out, d_in) and bias (d_out,) of one expert.

        A routed ``index`` is a 0-dim long tensor on the parameters' device, so the choice
        never leaves the device and the graph is the same for every expert: the expert is
        gathered (``index_select``), never read as a Python int. A fixed int ``index`` (the
        shared down-projection's 0) is a plain view, whose backward is cheaper.
        """
        rows = torch.as_tensor(index, device=self.bias.device).view(1)
        if self.num_experts > 1 and torch.is_grad_enabled():
            self.routed.index_fill_(0, rows, True)
        if isinstance(index, int):
            chosen = tuple(f[index] for f in self.factors())
            bias = self.bias[index]
        else:
            chosen = tuple(f.index_select(0, rows).squeeze(0) for f in self.factors())
            bias = self.bias.index_select(0, rows).squeeze(0)
        return phm_weight_t(self._blocks(chosen), self._rule()), bias

    def merged(self, mode: str) -> tuple[Tensor, Tensor]:
        """Weightᵀ (d_out, d_in) and bias (d_out,) of the expert average.

        ``factors`` averages T, U (or B) and then builds one weight (reference code);
        ``products`` builds every expert's weight and averages those.
        """
        if torch.is_grad_enabled():
            self.routed.fill_(True)
        if mode == "factors":
            mean = tuple(f.mean(0) for f in self.factors())
            weight_t = phm_weight_t(self._blocks(mean), self._rule())
        else:
            weight_t = phm_weight_t(self._blocks(self.factors()), self._rule()).mean(0)
        return weight_t, self.bias.mean(0)
