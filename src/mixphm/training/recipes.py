"""Named, versioned training recipes: everything about how a run trains except the method's
own learning rate (and its method-specific extras, ``configs/methods.toml``).

- ``paper-v1``: the MixPHM reference recipe (its VQA v2 script and trainer), item by item:
  AdamW eps 1e-6 with weight decay 0.01 by the reference's parameter-name rule, batch 16,
  5% linear warm-up over the 1000-epoch cap then linear decay to 0, clipping at 5, a dev
  evaluation every 10 epochs and after the last, ``>=`` replacing the best checkpoint (ties
  keep the later one), early stopping after 20 evaluations (OK-VQA: 10; GQA: never)
  without an improvement above 0.01 points, ``gelu_new`` in the adapters, and the whole
  test split.
- ``quick-v1``: the project's short recipe before ``paper-v1`` existed (the committed
  ``results/easy-vqa`` table): a dev evaluation after every epoch, patience 20 epochs, a
  200-epoch cap, ``>`` keeping the earliest of equal dev scores, AdamW eps 1e-8 without
  weight decay, exact GELU, a fixed 2,000-question test sample. For quick runs and tests.

A recipe's name is recorded in every checkpoint, ``result.json``, run folder and
``runs.csv`` row; runs of different recipes never resume into each other or share a table.
A changed recipe gets a new version, never an edit of an existing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mixphm.config import Activation


@dataclass(frozen=True)
class Recipe:
    name: str
    max_epochs: int
    """The epoch cap; warm-up and decay are laid over it."""
    eval_every: int
    """Dev evaluation every this many epochs (and always after the last epoch)."""
    patience: int | None
    """Dev evaluations without an improvement above ``min_delta`` before stopping (None:
    never stop early), unless ``patience_by_dataset`` names the dataset."""
    min_delta: float
    """An evaluation improves (resets the patience) when dev accuracy exceeds the best
    counted so far by more than this many points."""
    ties_keep_later: bool
    """True: a dev score equal to the best replaces the kept checkpoint (``>=``)."""
    adam_eps: float
    weight_decay: float
    """AdamW weight decay on the decayed group (``mixphm.optim.decays``)."""
    warmup: float
    """Share of all steps (steps per epoch × ``max_epochs``) spent warming up linearly."""
    grad_clip: float
    batch_size: int
    adapter_activation: Activation
    """The nonlinearity of the MixPHM-family adapters."""
    test_limit: int | None
    """Test questions of the offline default: a fixed seeded sample, or None for all."""
    patience_by_dataset: Mapping[str, int | None] = field(default_factory=dict)

    def patience_for(self, dataset: str) -> int | None:
        return self.patience_by_dataset.get(dataset, self.patience)

    def evaluates_after(self, epoch: int, max_epochs: int) -> bool:
        """Whether the dev split is scored after ``epoch`` (0-based) of a run capped at
        ``max_epochs``."""
        return (epoch + 1) % self.eval_every == 0 or epoch + 1 == max_epochs


PAPER = Recipe(
    name="paper-v1",
    max_epochs=1000,
    eval_every=10,
    patience=20,
    min_delta=0.01,
    ties_keep_later=True,
    adam_eps=1e-6,
    weight_decay=0.01,
    warmup=0.05,
    grad_clip=5.0,
    batch_size=16,
    adapter_activation="gelu_new",
    test_limit=None,
    patience_by_dataset=MappingProxyType({"ok-vqa": 10, "gqa": None}),
)

QUICK = Recipe(
    name="quick-v1",
    max_epochs=200,
    eval_every=1,
    patience=20,
    min_delta=0.0,
    ties_keep_later=False,
    adam_eps=1e-8,
    weight_decay=0.0,
    warmup=0.05,
    grad_clip=5.0,
    batch_size=16,
    adapter_activation="gelu",
    test_limit=2000,
)

RECIPES = {recipe.name: recipe for recipe in (PAPER, QUICK)}
DEFAULT_RECIPE = PAPER.name
LEGACY_RECIPE = QUICK.name
"""The recipe of run records written before recipes were recorded."""


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
