"""A procedurally generated image-text corpus: multi-object scenes and captions from their
scene graphs. Nothing comes from easy-VQA: its own renderer, 1–3 objects per scene, five
shapes, ten colours, two sizes, spatial relations; captions, never questions.

Every example is a fill-in task whose answer replaces the [MASK] of the prompt:
- concept: a caption with one word masked ("a [MASK] circle above a small blue square",
  answer "red");
- matching: a true or corrupted caption followed by the mask ("… square ? [MASK]",
  answer "yes" or "no"), i.e. image-text matching expressed through the text side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 64
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
    "teal": (30, 150, 150),
    "orange": (245, 140, 20),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle", "rectangle", "diamond")
SIZES = {"small": 9, "large": 16}
NUMBERS = {2: "two", 3: "three"}
RELATIONS = ("left of", "right of", "above", "below")
VOCABULARY = (
    *COLORS,
    *SHAPES,
    *SIZES,
    *NUMBERS.values(),
    "left",
    "right",
    "above",
    "below",
    "yes",
    "no",
)
"""Every answer a pretraining example can have: the candidate set of pretraining."""


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: int
    y: int

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Example:
    scene: int
    text: str
    """Prompt text with one [MASK] where the answer goes."""
    answer: str


def draw(objects: list[SceneObject], background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), background)
    pen = ImageDraw.Draw(image)
    for o in objects:
        r, fill = SIZES[o.size], COLORS[o.color]
        if o.shape == "circle":
            pen.ellipse((o.x - r, o.y - r, o.x + r, o.y + r), fill=fill)
        elif o.shape == "square":
            pen.rectangle((o.x - r, o.y - r, o.x + r, o.y + r), fill=fill)
        elif o.shape == "rectangle":
            pen.rectangle((o.x - r, o.y - r // 2, o.x + r, o.y + r // 2), fill=fill)
        elif o.shape == "triangle":
            pen.polygon([(o.x, o.y - r), (o.x - r, o.y + r), (o.x + r, o.y + r)], fill=fill)
        else:
            pen.polygon([(o.x, o.y - r), (o.x + r, o.y), (o.x, o.y + r), (o.x - r, o.y)], fill=fill)
    return image


def relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def random_scene(rng: np.random.Generator) -> tuple[list[SceneObject], tuple[int, int, int]]:
    count = int(rng.integers(1, 4))
    slots = rng.permutation([(16, 16), (48, 16), (16, 48), (48, 48), (32, 32)])[:count]
    same = count > 1 and rng.random() < 0.25  # "two red circles"
    first = (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES))))
    objects: list[SceneObject] = []
    for x, y in slots:
        shape, color, size = (
            first
            if same or not objects
            else (
                str(rng.choice(SHAPES)),
                str(rng.choice(list(COLORS))),
                str(rng.choice(list(SIZES))),
            )
        )
        objects.append(SceneObject(shape, color, size, int(x), int(y)))
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    return objects, background  # type: ignore[return-value]


def caption_words(objects: list[SceneObject]) -> list[str]:
    """The caption as words; concepts are single words so any can be masked."""
    if len(objects) > 1 and len({(o.shape, o.color, o.size) for o in objects}) == 1:
        o = objects[0]
        return [NUMBERS[len(objects)], o.size, o.color, f"{o.shape}s"]
    if len(objects) == 2:
        a, b = objects
        return [*a.phrase().split(), *relation(a, b).split(), *b.phrase().split()]
    words: list[str] = []
    for i, o in enumerate(objects):
        if i:
            words.append("and" if i == len(objects) - 1 else ",")
        words.extend(o.phrase().split())
    return words


def concept_of(word: str) -> tuple[str, bool] | None:
    """(concept, is_plural) for a word of the vocabulary ("circles" → ("circle", True))."""
    if word in VOCABULARY:
        return word, False
    if word.endswith("s") and word[:-1] in SHAPES:
        return word[:-1], True
    return None


def concept_example(scene: int, words: list[str], rng: np.random.Generator) -> Example:
    maskable = [i for i, w in enumerate(words) if concept_of(w) is not None]
    i = int(rng.choice(maskable))
    answer, _ = concept_of(words[i])  # type: ignore[misc]
    return Example(scene, " ".join([*words[:i], "[MASK]", *words[i + 1 :]]), answer)


def corrupt(words: list[str], rng: np.random.Generator) -> list[str]:
    """Swap one colour or shape word for another: a caption the image does not match."""
    options = [
        i for i, w in enumerate(words) if (c := concept_of(w)) and c[0] in (*COLORS, *SHAPES)
    ]
    i = int(rng.choice(options))
    current, plural = concept_of(words[i])  # type: ignore[misc]
    pool = list(COLORS) if current in COLORS else list(SHAPES)
    replacement = str(rng.choice([p for p in pool if p != current]))
    return [*words[:i], replacement + ("s" if plural else ""), *words[i + 1 :]]


def generate(num_scenes: int, seed: int) -> tuple[list[Image.Image], list[Example]]:
    """``num_scenes`` images and three examples each (two concept fills, one matching)."""
    rng = np.random.default_rng(seed)
    images: list[Image.Image] = []
    examples: list[Example] = []
    for scene in range(num_scenes):
        objects, background = random_scene(rng)
        images.append(draw(objects, background))
        words = caption_words(objects)
        examples.extend(concept_example(scene, words, rng) for _ in range(2))
        matches = bool(rng.random() < 0.5)
        shown = words if matches else corrupt(words, rng)
        examples.append(Example(scene, " ".join(shown) + " ? [MASK]", "yes" if matches else "no"))
    return images, examples
