"""Typed configuration of the MixPHM adapter family and presets for its named members."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

MergeMode = Literal["factors", "products"]
Activation = Literal["gelu_new", "gelu"]
"""The adapter nonlinearity: GELU's tanh approximation (the reference code's) or exact GELU."""

PRESETS = ("mixphm", "compacter", "adamix", "pfeiffer", "houlsby")


def has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (an int is a float, a bool is no int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(has_type(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(has_type(item, args[0]) for item in value)
    if origin is not None:
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass(frozen=True)
class MixPHMConfig:
    """One adapter after every feed-forward block (and, optionally, every attention block).

    Each adapter maps the sub-layer output h (..., d) to h + up(dropout(f(down(h)))):
    a shared down-projection d → d / reduction_factor and ``num_experts`` up-projections
    back to d. Every projection is a PHM weight W = Σ_i S_i ⊗ (T_i U_i) with the rule
    tensor S shared by the whole model; ``phm_dim=1`` gives plain dense projections.

    The defaults are the paper's MixPHM (n = 4, d_k = 8, reduction 12, 4 experts).
    """

    reduction_factor: int = 12
    """Bottleneck width is d / reduction_factor (64 for d = 768)."""
    num_experts: int = 4
    """Up-projection experts per adapter; 1 disables routing and merging."""
    phm_dim: int = 4
    """n, the number of Kronecker products per weight. 1 means a plain dense projection."""
    phm_rank: int | None = 8
    """d_k, the rank of each block T_i U_i; None learns full-rank blocks B_i."""
    dropout: float = 0.5
    """Dropout on the bottleneck activations (the reference code's value)."""
    activation: Activation = "gelu_new"
    """The bottleneck nonlinearity: ``gelu_new`` (tanh approximation, the reference code's)
    or exact ``gelu`` (what adapters saved before this field existed were trained with)."""
    rule_per_layer: bool = False
    """One rule tensor S per adapter (shared by its projections and experts) instead of the
    paper's one S for the whole model (an ablation)."""
    rule_init_std: float = 0.01
    """S starts as N(0, rule_init_std²) (the reference code's 0.01)."""
    zero_init_up: bool = False
    """Start every up-projection at zero (its right factor, or its blocks, at zero), so the
    adapter starts as the identity; the reference starts it near zero through S instead."""
    weight_decay: bool = True
    """Whether the recipe's AdamW weight decay applies to the adapter's tensors (the
    reference's trainer decays all of them, S included)."""
    merge: MergeMode = "factors"
    """How experts merge for inference: average the factors (reference) or the products."""
    attention_adapters: bool = False
    """Also insert an adapter after every attention block (Houlsby)."""
    vision_tower: bool = False
    """Also adapt the vision side (vision tower, Q-Former, resampler) of models that have
    one; the language model (a dual encoder's text tower) is adapted by default."""
    routing_seed: int = 0
    """Seed of the stochastic routing; equal on every rank of a distributed run."""
    target_modules: list[str] | str | None = None
    """The output linears to adapt, named as in peft: module-name suffixes (``["wo"]``,
    ``["mlp.down_proj"]``) or one regular expression matched against whole module names.
    None: found from the model's structure (``mixphm.placement``)."""

    def __post_init__(self) -> None:
        for name, hint in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if not has_type(value, hint):
                expected = hint.__name__ if isinstance(hint, type) else str(hint)
                expected = expected.replace("typing.", "")
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        checks = [
            (
                self.reduction_factor >= 1,
                f"reduction_factor must be ≥ 1, got {self.reduction_factor}",
            ),
            (self.num_experts >= 1, f"num_experts must be ≥ 1, got {self.num_experts}"),
            (self.phm_dim >= 1, f"phm_dim must be ≥ 1, got {self.phm_dim}"),
            (
                self.phm_rank is None or self.phm_rank >= 1,
                f"phm_rank must be ≥ 1 or None, got {self.phm_rank}",
            ),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (
                self.rule_init_std > 0,
                f"rule_init_std must be > 0, got {self.rule_init_std}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MixPHMConfig:
        """The named member of the family, with any field overridden.

        - ``mixphm``: the paper's method (defaults above).
        - ``compacter``: one PHM expert, rank 1, shared S (Karimi Mahabadi et al., 2021).
        - ``adamix``: four plain bottleneck experts, routing and averaging (Wang et al., 2022).
        - ``pfeiffer``: one plain bottleneck after each FFN (Pfeiffer et al., 2021).
        - ``houlsby``: plain bottlenecks after each attention and FFN (Houlsby et al., 2019).
        """
        plain = {"phm_dim": 1, "phm_rank": None, "dropout": 0.0}
        presets: dict[str, dict[str, Any]] = {
            "mixphm": {},
            "compacter": {"num_experts": 1, "phm_rank": 1, "dropout": 0.0},
            "adamix": {**plain, "reduction_factor": 16},
            "pfeiffer": {**plain, "num_experts": 1, "reduction_factor": 16},
            "houlsby": {
                **plain,
                "num_experts": 1,
                "reduction_factor": 16,
                "attention_adapters": True,
            },
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MixPHMConfig:
        """The config ``to_dict`` wrote; files older than the ``activation`` field were
        trained with exact GELU and load with it."""
        values = {"activation": "gelu", **values}
        if values.pop("extra_ffn_classes", None):
            raise ValueError(
                "extra_ffn_classes is no longer read: name the output linears with "
                "target_modules (module-name suffixes or a regular expression)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MixPHMConfig fields: {', '.join(unknown)}")
        return cls(**values)
