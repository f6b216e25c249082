"""Where adapters go in a transformers model, found from its structure, not from its classes.

A *token mixer* is a sub-module that mixes positions: attention (its name says attention, or
its class name does and no sub-module of its own does: Zamba2's ``AttentionDecoderLayer``
holds attention and a feed-forward) or a convolution or state-space scan (it holds an
``nn.Conv1d`` over the sequence: the Mamba mixers of Bamba, Zamba2, Falcon-H1 and
Nemotron-H, a short convolution). A *stack* is an outermost ``nn.ModuleList`` in which
some element holds a token mixer; its elements are its *blocks*. That is every uniform
stack of transformer blocks (T5's ``encoder.block``, BERT's ``encoder.layer``, Llama's
``layers``, Florence-2's stages of DaViT blocks) and every hybrid one, whose blocks mix
tokens by attention, by a scan, by both or not at all (Nemotron-H's feed-forward layers).
A *linear layer* is an
``nn.Linear`` or transformers' ``Conv1D`` (GPT-2 and its kin: the same map, its weight
stored transposed). Inside a block:

- the *hidden size* is the residual width: the most common size of its norms outside its
  token mixers, leaving out a feed-forward's inner width (what its output linears read
  and no widening linear reads), which a sub-LN (Magneto) feed-forward normalises between
  its two linears; without such a norm, the output size its contracting linears share;
- the *feed-forward outputs* are the linear layers outside token mixers that map a wider
  input back to the hidden size (T5's ``wo``, BERT's ``output.dense``, BART's ``fc2``,
  Llama's ``down_proj``, GPT-2's ``mlp.c_proj``); a Mamba mixer's ``out_proj`` is not one;
- the *attention outputs* are, per outermost attention sub-module, its last linear layer
  that returns to the hidden size (T5's ``o``, BERT's ``attention.output.dense``);
- the *attention projections* are its query, key and value linears, by name (LoRA, IA3).

A block without what is searched for is skipped (a Mamba layer has no feed-forward, a
Nemotron-H feed-forward layer no attention); a model is refused when no block has it, or
when a block has it in a form that cannot be adapted: a mixture of experts fused in 3-D
weights, a contracting linear that does not return to the hidden size, attention without
the projections named. Stacks of 2-D convolutional stages (an image tokenizer or VAE, such
as the VQ tokenizers of Emu3 and Janus, whose down-sampling stages hold attention over
feature maps but no linear layer outside it) are not transformer blocks: never searched.
Stacks under a vision tower or a vision-to-text bridge (a path part containing one of
``VISION_MARKERS``) belong to the vision side, searched only when asked. A user can always
name the layers instead (``target_modules``, peft's convention: module-name suffixes, or
one regular expression matched against whole module names); ``mixphm.describe_placement``
shows the plan, skipped blocks included.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

VISION_MARKERS = ("vision", "visual", "image", "qformer", "connector", "resampler", "projector")
"""A stack whose path has a part containing one of these is on the vision side."""
ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
QUERY_VALUE = {"q", "v", "query", "value", "q_proj", "v_proj"}
KEY_VALUE = {"k", "v", "key", "value", "k_proj", "v_proj"}
FUSED_QKV = {"qkv", "qkv_proj", "query_key_value", "c_attn", "wqkv", "in_proj"}
"""Names of one linear that projects queries, keys and values together."""
SCAN = "a convolution or state-space scan"
"""How a token mixer that is not attention mixes positions, as messages name it."""


LINEAR_LAYERS = "linear layers (nn.Linear or transformers' Conv1D)"
"""What placement and ``target_modules`` accept, as error messages name it."""


class PlacementError(ValueError):
    """Nothing to adapt was found, or what was found cannot be adapted."""


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

    @property
    def widens(self) -> bool:
        """Whether it maps to more features than it reads (a feed-forward input does)."""
        return self.in_features < self.out_features


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


@dataclass(frozen=True)
class Block:
    """One block of a stack: its path, module and hidden size (None: it has no norm and no
    contracting linear layer to read it from)."""

    path: str
    module: nn.Module
    hidden: int | None


@dataclass(frozen=True)
class Stack:
    """One stack: its path, blocks, side, and whether it is a stack of 2-D convolutional
    stages (an image tokenizer or VAE), never searched."""

    path: str
    blocks: tuple[Block, ...]
    vision: bool
    convolutional: bool


CONVOLUTIONAL = (
    "2-D convolutional stages (an image tokenizer or VAE: attention over feature maps, no "
    "linear layer outside it), not transformer blocks"
)
VISION_SIDE = "the vision side, searched only with vision_tower=True"


def is_attention(name: str, module: nn.Module) -> bool:
    """Whether the sub-module ``name`` is attention: its name says so, or its class name does
    and no sub-module of its own says so (Zamba2's ``AttentionDecoderLayer`` is a layer
    around attention and a feed-forward, not attention)."""
    if ATTENTION.search(name):
        return True
    return bool(ATTENTION.search(type(module).__name__)) and not any(
        ATTENTION.search(n) or ATTENTION.search(type(m).__name__)
        for n, m in module.named_modules()
        if n
    )


def scans(module: nn.Module) -> bool:
    """Whether ``module`` mixes positions by a convolution or state-space scan: it holds a
    1-D convolution over the sequence (Mamba's, before its scan; a short convolution)."""
    return any(isinstance(child, nn.Conv1d) for child in module.children())


def mixer_kind(name: str, module: nn.Module) -> str | None:
    """How the sub-module ``name`` mixes positions ("attention" or SCAN); None when it is
    no token mixer."""
    if is_attention(name.rpartition(".")[2], module):
        return "attention"
    return SCAN if scans(module) else None


def on_vision_side(path: str) -> bool:
    return any(marker in part.lower() for part in path.split(".") for marker in VISION_MARKERS)


def block_lists(model: nn.Module) -> Iterator[tuple[str, nn.ModuleList]]:
    """(path, list) of the outermost module lists in which some element holds a token
    mixer."""
    taken: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(prefix + ".") for prefix in taken):
            continue
        if isinstance(module, nn.ModuleList) and any(
            any(mixer_kind(n, m) for n, m in element.named_modules() if n) for element in module
        ):
            taken.append(path)
            yield path, module


def sub_modules(block: nn.Module) -> Iterator[tuple[str, nn.Module, str | None]]:
    """(relative path, module, mixer kind) of every module of ``block`` outside its token
    mixers, kind None, and of its outermost token mixers, with their kind."""
    inside: list[str] = []
    for name, module in block.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in inside):
            continue
        kind = mixer_kind(name, module)
        if kind is not None:
            inside.append(name)
        yield name, module, kind


def outside_mixers(block: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(relative path, module) of every module of ``block`` not inside a token mixer."""
    return ((name, module) for name, module, kind in sub_modules(block) if kind is None)


def token_mixers(block: nn.Module) -> list[tuple[str, str]]:
    """(relative path, kind) of the block's outermost token mixers."""
    return [(name, kind) for name, _, kind in sub_modules(block) if kind is not None]


def attention_modules(block: Block) -> Iterator[tuple[str, nn.Module]]:
    """(relative path, module) of the block's outermost attention sub-modules."""
    for name, module, kind in sub_modules(block.module):
        if kind == "attention":
            yield name, module


def hidden_size(block: nn.Module) -> int | None:
    """The block's residual width: the most common size of its norms outside token mixers,
    leaving out a feed-forward's inner width (what its contracting linears read and no
    widening one reads: the width a sub-LN normalises); else the output size its contracting
    linears share; None when it has neither."""
    outside = list(outside_mixers(block))
    linears = [linear for _, linear in linear_maps(outside)]
    inner = {linear.in_features for linear in linears if linear.contracts} - {
        linear.in_features for linear in linears if linear.widens
    }
    norm_sizes = [
        int(weight.shape[0])
        for _, module in outside
        if "norm" in type(module).__name__.lower()
        and isinstance(weight := getattr(module, "weight", None), nn.Parameter)
        and weight.dim() == 1
    ]
    sizes = Counter(size for size in norm_sizes if size not in inner)
    if not sizes:
        sizes = Counter(linear.out_features for linear in linears if linear.contracts)
    return sizes.most_common(1)[0][0] if sizes else None


def is_convolutional(blocks: Sequence[Block]) -> bool:
    """Whether ``blocks`` are 2-D convolutional stages: some holds a 2-D or 3-D convolution
    and none a linear layer outside its token mixers."""
    convolves = any(
        isinstance(module, nn.Conv2d | nn.Conv3d)
        for block in blocks
        for module in block.module.modules()
    )
    linear = any(next(linear_maps(outside_mixers(block.module)), None) for block in blocks)
    return convolves and not linear


def stacks(model: nn.Module) -> list[Stack]:
    """Every stack of ``model``, in module order."""
    found = []
    for list_path, elements in block_lists(model):
        vision = on_vision_side(list_path)
        blocks = []
        for index, element in enumerate(elements):
            path = f"{list_path}.{index}" if list_path else str(index)
            blocks.append(Block(path, element, hidden_size(element)))
        found.append(Stack(list_path, tuple(blocks), vision, is_convolutional(blocks)))
    return found


def not_searched(stack: Stack, vision_tower: bool) -> str | None:
    """Why ``stack`` is not searched for adapter places; None when it is."""
    if stack.convolutional:
        return CONVOLUTIONAL
    return VISION_SIDE if stack.vision and not vision_tower else None


@dataclass(frozen=True)
class Search:
    """What placement looks for in each block: ``find`` gives the relative paths of the
    linear layers, ``obstacles`` (path, why) where a block that has none holds that kind of
    sub-layer in a form that cannot be adapted (none: the block lacks it and is skipped)."""

    what: str
    missing: str
    find: Callable[[Block], list[str]]
    obstacles: Callable[[Block], list[tuple[str, str]]]


def feedforward_outputs(block: Block) -> list[str]:
    """Relative paths of the block's feed-forward output linears; none where the
    feed-forward is a mixture of fused experts, whose shared expert (Llama 4's) would carry
    only part of its output."""
    if any(holds_fused_experts(module) for module in block.module.modules()):
        return []
    return [
        name
        for name, linear in linear_maps(outside_mixers(block.module))
        if linear.contracts and linear.out_features == block.hidden
    ]


def feedforward_obstacles(block: Block) -> list[tuple[str, str]]:
    """The block's fused experts, and contracting linears outside its token mixers that do
    not return to its hidden size (a feed-forward placement cannot tell apart)."""
    fused = [
        (f"{block.path}.{name}", FUSED_EXPERTS)
        for name, module in block.module.named_modules()
        if holds_fused_experts(module)
    ]
    stray = [
        (
            f"{block.path}.{name}",
            f"maps {linear.in_features} features to {linear.out_features}, not back to the "
            f"block's hidden size {block.hidden}",
        )
        for name, linear in linear_maps(outside_mixers(block.module))
        if linear.contracts and linear.out_features != block.hidden
    ]
    return fused or stray


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


def query_value(block: Block) -> list[str]:
    return attention_projections(block, QUERY_VALUE)


def key_value(block: Block) -> list[str]:
    return attention_projections(block, KEY_VALUE)


def attention_obstacles(what: str) -> Callable[[Block], list[tuple[str, str]]]:
    """The block's attention sub-modules, each lacking ``what``."""
    return lambda block: [
        (f"{block.path}.{name}", f"attention without {what}")
        for name, _ in attention_modules(block)
    ]


FEEDFORWARD = Search(
    "a feed-forward output",
    "no feed-forward output",
    feedforward_outputs,
    feedforward_obstacles,
)
ATTENTION_OUTPUTS = Search(
    "an attention output",
    "no attention output",
    attention_outputs,
    attention_obstacles("a linear layer back to the hidden size"),
)
QUERY_VALUE_PROJECTIONS = Search(
    "query/value projections",
    "no query/value projections",
    query_value,
    attention_obstacles("query/value projections named so"),
)
KEY_VALUE_PROJECTIONS = Search(
    "key/value projections",
    "no key/value projections",
    key_value,
    attention_obstacles("key/value projections named so"),
)


def skip_reason(block: Block, searches: Sequence[Search]) -> str:
    """Why ``block`` has no place for any of ``searches``: what it lacks, and how it mixes
    tokens instead ("no feed-forward output; mixes tokens by attention (mixer)")."""
    lacks = " and ".join(search.missing for search in searches)
    mixers = token_mixers(block.module)
    if not mixers:
        return f"{lacks}; holds no token mixer"
    return f"{lacks}; mixes tokens by " + ", ".join(f"{kind} ({name})" for name, kind in mixers)


def searched_stacks(model: nn.Module, vision_tower: bool) -> list[Stack]:
    """The stacks placement searches: the language side's (and the vision side's with
    ``vision_tower``), never an image tokenizer's. Raises PlacementError when there is
    none."""
    found = stacks(model)
    searched = [stack for stack in found if not_searched(stack, vision_tower) is None]
    if not searched:
        left_out = "; ".join(f"{s.path}: {not_searched(s, vision_tower)}" for s in found[:3])
        raise PlacementError(
            f"{type(model).__name__}: found no transformer blocks to search (module lists in "
            f"which some element holds a token mixer: attention, or {SCAN})"
            + (f"; not searched: {left_out}" if left_out else "")
            + NAME_THEM
        )
    return searched


def per_block(model: nn.Module, vision_tower: bool, search: Search) -> list[tuple[str, LinearMap]]:
    """(path, linear) of the layers ``search`` finds in the blocks searched, in module order,
    skipping blocks without one. Raises PlacementError when no stack is searched or no block
    has one, or when a block holds one in a form that cannot be adapted."""
    searched = searched_stacks(model, vision_tower)
    blocks = [block for stack in searched for block in stack.blocks]
    found = {block.path: search.find(block) for block in blocks}
    obstacles = [o for block in blocks if not found[block.path] for o in search.obstacles(block)]
    if obstacles:
        shown = "; ".join(f"{block.path}: {found[block.path] or 'none'}" for block in blocks[:6])
        raise PlacementError(
            f"{type(model).__name__}: not every transformer block has {search.what} ({shown})"
            + obstacles_note(obstacles)
            + NAME_THEM
        )
    if not any(found.values()):
        lists = ", ".join(stack.path for stack in searched)
        shown = "; ".join(f"{block.path}: {skip_reason(block, [search])}" for block in blocks[:6])
        raise PlacementError(
            f"{type(model).__name__}: no block of {lists} has {search.what} ({shown})" + NAME_THEM
        )
    modules = dict(model.named_modules())
    return [
        (f"{path}.{name}", linear_at(modules, f"{path}.{name}"))
        for path, names in found.items()
        for name in names
    ]


def obstacles_note(obstacles: list[tuple[str, str]]) -> str:
    """ ". path, path: why" per distinct reason among ``obstacles``, naming three paths."""
    by_reason: dict[str, list[str]] = {}
    for path, why in obstacles:
        by_reason.setdefault(why, []).append(path)
    return "".join(f". {', '.join(paths[:3])}: {why}" for why, paths in by_reason.items())


def linear_at(modules: dict[str, nn.Module], path: str) -> LinearMap:
    linear = linear_map(modules[path])
    assert linear is not None, path
    return linear


def lora_targets(model: nn.Module) -> list[str]:
    """LoRA (Hu et al. 2021): the query and value projections of the language blocks."""
    return [path for path, _ in per_block(model, False, QUERY_VALUE_PROJECTIONS)]


def ia3_attention_targets(model: nn.Module) -> list[str]:
    """IA3 (Liu et al. 2022) rescales keys and values ..."""
    return [path for path, _ in per_block(model, False, KEY_VALUE_PROJECTIONS)]


def feedforward_targets(model: nn.Module) -> list[str]:
    """... and the inner activations of the language blocks' feed-forwards (the input of
    their output linears, peft's ``feedforward_modules``)."""
    return [path for path, _ in per_block(model, False, FEEDFORWARD)]


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
