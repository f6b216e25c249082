"""Where adapters go in a transformers model, found from its structure, not from its classes.

A *block list* is an ``nn.ModuleList`` whose every element holds an attention sub-module
(a module whose name or class name says attention); the outermost such lists are the
model's stacks of transformer blocks (T5's ``encoder.block``, BERT's ``encoder.layer``,
Llama's ``layers``, Florence-2's stages of DaViT blocks). A *linear layer* is an
``nn.Linear`` or transformers' ``Conv1D`` (GPT-2 and its kin: the same map, its weight stored
transposed). Inside a block:

- the *feed-forward outputs* are the linear layers outside attention that map a wider
  input back to the block's hidden size (T5's ``wo``, BERT's ``output.dense``, BART's
  ``fc2``, Llama's ``down_proj``, GPT-2's ``mlp.c_proj``); the hidden size is read off the
  block's norms;
- the *attention outputs* are, per outermost attention sub-module, its last linear layer
  that returns to the hidden size (T5's ``o``, BERT's ``attention.output.dense``);
- the *attention projections* are its query, key and value linears, by name (LoRA, IA3).

Block lists under a vision tower or a vision-to-text bridge (a path part containing one of
``VISION_MARKERS``) belong to the vision side, which is adapted only when asked. A user can
always name the layers instead (``target_modules``, peft's convention: module-name suffixes,
or one regular expression matched against whole module names).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

VISION_MARKERS = ("vision", "visual", "image", "qformer", "connector", "resampler", "projector")
"""A block list whose path has a part containing one of these is on the vision side."""
ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
QUERY_VALUE = {"q", "v", "query", "value", "q_proj", "v_proj"}
KEY_VALUE = {"k", "v", "key", "value", "k_proj", "v_proj"}
FUSED_QKV = {"qkv", "qkv_proj", "query_key_value", "c_attn", "wqkv", "in_proj"}
"""Names of one linear that projects queries, keys and values together."""


LINEAR_LAYERS = "linear layers (nn.Linear or transformers' Conv1D)"
"""What placement and ``target_modules`` accept, as error messages name it."""


class PlacementError(ValueError):
    """Nothing to adapt was found, or what was found is inconsistent."""


@dataclass(frozen=True)
class LinearMap:
    """A linear layer, (..., in_features) → (..., out_features): an ``nn.Linear``, whose
    ``weight`` is (out_features, in_features), or a transformers ``Conv1D``, whose ``weight``
    is ``transposed``: (in_features, out_features)."""

    module: nn.Module
    weight: Tensor
    in_features: int
    out_features: int
    transposed: bool

    @property
    def contracts(self) -> bool:
        """Whether it maps to fewer features than it reads (a feed-forward output does)."""
        return self.in_features > self.out_features


def linear_map(module: nn.Module) -> LinearMap | None:
    """``module`` as a LinearMap, or None when it is not a linear layer."""
    if isinstance(module, nn.Linear):
        return LinearMap(
            module, module.weight, module.in_features, module.out_features, transposed=False
        )
    if isinstance(module, Conv1D):
        return LinearMap(module, module.weight, module.nx, module.nf, transposed=True)
    return None


def linear_maps(named: Iterable[tuple[str, nn.Module]]) -> Iterator[tuple[str, LinearMap]]:
    """(name, linear map) of the linear layers among the (name, module) pairs ``named``."""
    for name, module in named:
        if (linear := linear_map(module)) is not None:
            yield name, linear


def holds_fused_experts(module: nn.Module) -> bool:
    """Whether ``module`` keeps a mixture of experts fused in 3-D weights, (experts, out,
    in) per projection (Mixtral's ``mlp.experts``), rather than in linear layers. A 1-D
    convolution's weight is 3-D too, and is not one."""
    return not isinstance(module, nn.Conv1d | nn.ConvTranspose1d) and any(
        p.dim() == 3 for p in module.parameters(recurse=False)
    )


FUSED_EXPERTS = (
    "fused experts (a mixture of experts kept in 3-D weights, one slice per expert) hold no "
    "linear layer, and MixPHM does not adapt them, nor a shared expert beside them alone"
)


def fused_experts_note(blocks: Iterable[Block]) -> str:
    """A refusal's note naming the fused experts in ``blocks``; "" when they hold none."""
    fused = [
        f"{block.path}.{name}"
        for block in blocks
        for name, module in block.module.named_modules()
        if holds_fused_experts(module)
    ]
    return f". {', '.join(fused[:3])}: {FUSED_EXPERTS}" if fused else ""


@dataclass(frozen=True)
class Block:
    """One transformer block: its path, module, hidden size and side."""

    path: str
    module: nn.Module
    hidden: int
    vision: bool


def is_attention(name: str, module: nn.Module) -> bool:
    return bool(ATTENTION.search(name) or ATTENTION.search(type(module).__name__))


def on_vision_side(path: str) -> bool:
    return any(marker in part.lower() for part in path.split(".") for marker in VISION_MARKERS)


def block_lists(model: nn.Module) -> Iterator[tuple[str, nn.ModuleList]]:
    """(path, list) of the outermost module lists whose every element holds attention."""
    taken: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(prefix + ".") for prefix in taken):
            continue
        if (
            isinstance(module, nn.ModuleList)
            and len(module)
            and all(
                any(is_attention(n, m) for n, m in element.named_modules() if n)
                for element in module
            )
        ):
            taken.append(path)
            yield path, module


def outside_attention(block: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(relative path, module) of every module of ``block`` not inside an attention one."""
    inside: list[str] = []
    for name, module in block.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if is_attention(name.rpartition(".")[2], module):
            inside.append(name)
            continue
        yield name, module


def hidden_size(block: nn.Module, path: str) -> int:
    """The block's hidden size: the most common size of its norms outside attention, or
    else the output size its contracting linears share."""
    norm_weights = [
        weight
        for _, module in outside_attention(block)
        if "norm" in type(module).__name__.lower()
        and isinstance(weight := getattr(module, "weight", None), nn.Parameter)
    ]
    sizes = Counter(int(w.shape[0]) for w in norm_weights if w.dim() == 1)
    if not sizes:
        sizes = Counter(
            linear.out_features
            for _, linear in linear_maps(outside_attention(block))
            if linear.contracts
        )
    if not sizes:
        raise PlacementError(f"{path}: no norm and no contracting linear layer to size it by")
    return sizes.most_common(1)[0][0]


def transformer_blocks(model: nn.Module, vision_tower: bool) -> list[Block]:
    """Every block of the language side (and of the vision side with ``vision_tower``)."""
    blocks = []
    for list_path, blocks_list in block_lists(model):
        vision = on_vision_side(list_path)
        if vision and not vision_tower:
            continue
        for index, element in enumerate(blocks_list):
            path = f"{list_path}.{index}" if list_path else str(index)
            blocks.append(Block(path, element, hidden_size(element, path), vision))
    return blocks


def feedforward_outputs(block: Block) -> list[str]:
    """Relative paths of the block's feed-forward output linears; none where the
    feed-forward is a mixture of fused experts, whose shared expert (Llama 4's) would carry
    only part of its output."""
    if any(holds_fused_experts(module) for module in block.module.modules()):
        return []
    return [
        name
        for name, linear in linear_maps(outside_attention(block.module))
        if linear.contracts and linear.out_features == block.hidden
    ]


def attention_modules(block: Block) -> Iterator[tuple[str, nn.Module]]:
    """(relative path, module) of the block's outermost attention sub-modules."""
    inside: list[str] = []
    for name, module in block.module.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if is_attention(name.rpartition(".")[2], module):
            inside.append(name)
            yield name, module


def attention_outputs(block: Block) -> list[str]:
    """Relative paths of each attention sub-module's output linear."""
    outputs = []
    for name, attention in attention_modules(block):
        linears = [
            n
            for n, linear in linear_maps(attention.named_modules())
            if linear.out_features == block.hidden
        ]
        if linears:
            outputs.append(f"{name}.{linears[-1]}")
    return outputs


def attention_projections(block: Block, names: set[str]) -> list[str]:
    """Relative paths of the attention linears called one of ``names`` (or a fused QKV)."""
    found = []
    for name, attention in attention_modules(block):
        for n, _ in linear_maps(attention.named_modules()):
            last = n.rpartition(".")[2].lower()
            if last in names or last in FUSED_QKV:
                found.append(f"{name}.{n}")
    return found


def per_block(
    model: nn.Module, vision_tower: bool, finder: Callable[[Block], list[str]], what: str
) -> list[tuple[str, LinearMap]]:
    """(path, linear) of the layers ``finder`` names in every block, in module order;
    raises PlacementError when no block is found or a block has none of them."""
    blocks = transformer_blocks(model, vision_tower)
    if not blocks:
        raise PlacementError(
            f"{type(model).__name__}: found no transformer blocks (module lists whose every "
            "element holds an attention sub-module)" + NAME_THEM
        )
    found = {block.path: finder(block) for block in blocks}
    if not all(found.values()):
        shown = "; ".join(f"{path}: {names or 'none'}" for path, names in list(found.items())[:6])
        without = [block for block in blocks if not found[block.path]]
        raise PlacementError(
            f"{type(model).__name__}: not every transformer block has {what} ({shown})"
            + fused_experts_note(without)
            + NAME_THEM
        )
    modules = dict(model.named_modules())
    return [
        (f"{path}.{name}", linear_at(modules, f"{path}.{name}"))
        for path, names in found.items()
        for name in names
    ]


def linear_at(modules: dict[str, nn.Module], path: str) -> LinearMap:
    linear = linear_map(modules[path])
    assert linear is not None, path
    return linear


def lora_targets(model: nn.Module) -> list[str]:
    """LoRA (Hu et al. 2021): the query and value projections of every language block."""
    return [path for path, _ in per_block(model, False, query_value, "query/value projections")]


def ia3_attention_targets(model: nn.Module) -> list[str]:
    """IA3 (Liu et al. 2022) rescales keys and values ..."""
    return [path for path, _ in per_block(model, False, key_value, "key/value projections")]


def feedforward_targets(model: nn.Module) -> list[str]:
    """... and the inner activations of every language block's feed-forward (the input of
    its output linear, peft's ``feedforward_modules``)."""
    found = per_block(model, False, feedforward_outputs, "a feed-forward output")
    return [path for path, _ in found]


def query_value(block: Block) -> list[str]:
    return attention_projections(block, QUERY_VALUE)


def key_value(block: Block) -> list[str]:
    return attention_projections(block, KEY_VALUE)


NAME_THEM = (
    ". Name the layers instead: MixPHMConfig(target_modules=[...]) with module-name "
    "suffixes of the output linears (e.g. ['mlp.down_proj']) or one regular expression "
    "matched against whole module names"
)


def named_linears(
    model: nn.Module, target_modules: Sequence[str] | str
) -> list[tuple[str, LinearMap]]:
    """(path, linear) of the modules ``target_modules`` names, in module order: a regular
    expression matched against whole names, or suffixes matched at a name boundary."""

    def named(path: str) -> bool:
        if isinstance(target_modules, str):
            return re.fullmatch(target_modules, path) is not None
        return any(path == s or path.endswith("." + s) for s in target_modules)

    modules = dict(model.named_modules())
    chosen = [path for path in modules if path and named(path)]
    others = [path for path in chosen if linear_map(modules[path]) is None]
    if others:
        fused = any(holds_fused_experts(modules[path]) for path in others)
        raise PlacementError(
            f"target_modules={target_modules!r} names modules that are not {LINEAR_LAYERS}: "
            + ", ".join(others[:5])
            + (f"; {FUSED_EXPERTS}" if fused else "")
        )
    if not chosen:
        raise PlacementError(
            f"target_modules={target_modules!r} names no module of {type(model).__name__}"
        )
    return [(path, linear_at(modules, path)) for path in chosen]
