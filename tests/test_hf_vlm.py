"""HFVisionQA on tiny random models of every supported family, with their real processor
classes: prompts carry the image tokens, only answer tokens are scored, a few MixPHM steps
lower the loss, and generation returns one string per question."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import BUILDERS
from tiny_processors import PROCESSORS

from mixphm import MixPHMConfig, add_mixphm
from mixphm.backbones.generation import IGNORED, Decoding, score_weighted_answer_loss
from mixphm.backbones.hf_vlm import ANSWER_DECODERS, SUFFIX_TOKEN_TYPE, VISION_TOWERS, HFVisionQA
from mixphm.inject import mixphm_adapters
from mixphm.regularization import RedundancyConfig, RedundancyRegularizer, adapter_stacks

FAMILIES = sorted(PROCESSORS)
DECODER_FAMILIES = ["blip", "blip2-flan-t5", "florence2"]
"""Families whose answer has a decoder of its own."""
QUESTIONS = ["what color is the shape ?", "is the shape a circle ?"]
ANSWERS = ["red", "yes"]


def images(count: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")) for _ in range(count)]


def tiny(family: str, vision_tower: bool = False) -> HFVisionQA:
    torch.manual_seed(0)
    model = BUILDERS[family]().model
    config = MixPHMConfig(reduction_factor=4, phm_dim=2, dropout=0.0, vision_tower=vision_tower)
    add_mixphm(model, config)
    return HFVisionQA(model, PROCESSORS[family]())


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_answer_tokens_are_scored(family):
    vqa = tiny(family)
    inputs = vqa.training_inputs(images(), QUESTIONS, ANSWERS)
    tokenizer = vqa.tokenizer
    for row, answer in enumerate(ANSWERS):
        scored = inputs["labels"][row][inputs["labels"][row] != -100].tolist()
        expected = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert scored[:-1] == expected  # then eos (BLIP's sep)
    if family != "blip":
        image_token = vqa.model.config.image_token_id
        assert (inputs["input_ids"] == image_token).sum(1).min() > 0
        assert (inputs["labels"] == image_token).sum() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_mixphm_steps_lower_the_loss_and_answers_are_strings(family):
    vqa = tiny(family)
    trainable = [p for p in vqa.model.parameters() if p.requires_grad]
    assert trainable and all(
        ".mixphm." in n for n, p in vqa.model.named_parameters() if p.requires_grad
    )
    optimizer = torch.optim.AdamW(trainable, lr=2e-2)

    def loss_without_dropout() -> float:  # the tiny T5 and BART train with dropout 0.1
        vqa.model.eval()
        with torch.no_grad():
            loss, _ = vqa.training_loss(vqa.model, images(), QUESTIONS, ANSWERS, torch.ones(2))
        return loss.item()

    before = loss_without_dropout()
    vqa.model.train()
    for _ in range(10):
        loss, masks = vqa.training_loss(vqa.model, images(), QUESTIONS, ANSWERS, torch.ones(2))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert set(masks) == set(adapter_stacks(vqa.model).values())
    after = loss_without_dropout()  # leaves the model in eval mode
    assert after < before - 1e-3, (before, after)  # tiny random BLIP learns slowest
    for decoding in (Decoding(max_new_tokens=3), Decoding(max_new_tokens=3, num_beams=2)):
        answers = vqa.answer(images(), QUESTIONS, decoding)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


@pytest.mark.parametrize("family", ["gemma3", "mllama", "paligemma", "qwen2_vl"])
def test_answer_tokens_get_the_per_token_inputs_of_their_family(family):
    """Appended answer tokens are PaliGemma's suffix, text for Gemma 3 and Qwen2-VL, and see
    the image through Mllama's cross-attention as the prompt's last token does."""
    vqa = tiny(family)
    inputs = vqa.training_inputs(images(), QUESTIONS, ANSWERS)
    ((key, value),) = SUFFIX_TOKEN_TYPE[vqa.family].items()
    for row, answer in enumerate(inputs["labels"] != IGNORED):
        last_prompt_token = inputs[key][row, answer.nonzero()[0] - 1]
        expected = last_prompt_token if value is None else torch.tensor(value)
        if value is None:
            assert expected.any()
        assert (inputs[key][row][answer] == expected).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_leaves_each_answer_as_it_is_alone(family):
    """Decoder-only prompts are padded on the left, encoders' on the right; BLIP's are not
    padded (its generate ignores the question mask)."""
    vqa = tiny(family)
    vqa.model.eval()
    questions = ["what color is the shape ?", "how many ?"]
    together = vqa.answer(images(), questions, Decoding(max_new_tokens=4))
    alone = [
        vqa.answer([image], [q], Decoding(max_new_tokens=4))[0]
        for image, q in zip(images(), questions, strict=True)
    ]
    assert together == alone


def test_blip_answers_each_length_of_question_unpadded_and_in_order(monkeypatch):
    vqa = tiny("blip")
    vqa.model.eval()
    masks = []
    generate = vqa.model.generate

    def recording(**inputs):
        masks.append(inputs["attention_mask"])
        return generate(**inputs)

    monkeypatch.setattr(vqa.model, "generate", recording)
    questions = ["what color is the shape ?", "how many ?", "which shape is the circle ?"]
    decoding = Decoding(max_new_tokens=4)
    together = vqa.answer(images(3), questions, decoding)
    assert [tuple(m.shape) for m in masks] == [(2, 6), (1, 3)]  # one token per word
    assert all(bool(m.all()) for m in masks)
    alone = [
        vqa.answer([image], [q], decoding)[0] for image, q in zip(images(3), questions, strict=True)
    ]
    assert together == alone


@pytest.mark.parametrize(
    ("family", "forced_bos"),
    [*((family, None) for family in DECODER_FAMILIES), ("florence2", 1)],
)
def test_the_answer_decoder_is_trained_from_where_generate_starts(family, forced_bos):
    """The unscored start of each decoder row is what generate begins with (Florence-2's
    checkpoints force <s> after the decoder start token)."""
    vqa = tiny(family)
    vqa.model.generation_config.forced_bos_token_id = forced_bos
    vqa.model.eval()
    inputs = vqa.training_inputs(images(), QUESTIONS, ANSWERS)
    start = vqa.decoder_start()
    assert (inputs["labels"][:, : len(start)] == IGNORED).all()
    assert (inputs["decoder_input_ids"][:, : len(start)] == torch.tensor(start)).all()
    prompts = [vqa.prompt(q) for q in QUESTIONS]
    processed = vqa.processor(images=images(), text=prompts, padding=True, return_tensors="pt")
    generated = vqa.model.generate(**processed, max_new_tokens=len(start) + 1)
    assert (generated[:, : len(start)] == torch.tensor(start)).all()


def test_the_vision_tower_is_adapted_only_when_asked():
    language_only = len(list(mixphm_adapters(tiny("qwen2_vl").model)))
    with_vision = len(list(mixphm_adapters(tiny("qwen2_vl", vision_tower=True).model)))
    assert with_vision == language_only + 1  # the tiny vision tower has one block


def test_an_unsupported_model_is_refused_by_name():
    model = BUILDERS["t5"]().model
    with pytest.raises(ValueError, match="no VQA prompt format for model_type 't5'"):
        HFVisionQA(model, PROCESSORS["blip"]())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_weights_each_answer_by_its_score(family):
    """Batched with a score-0 row, an answer's loss is its loss alone halved (the mean over
    B = 2); scaling its score scales its loss; padding adds nothing."""
    vqa = tiny(family)
    vqa.model.eval()  # no dropout: the same row gives the same logits
    pair = images()

    def loss(rows: list[int], scores: list[float]) -> float:
        chosen = [pair[r] for r in rows], [QUESTIONS[r] for r in rows], [ANSWERS[r] for r in rows]
        value, _ = vqa.training_loss(vqa.model, *chosen, torch.tensor(scores))
        return value.item()

    alone = loss([0], [1.0])
    assert alone > 0
    assert loss([0, 1], [1.0, 0.0]) == pytest.approx(alone / 2, rel=1e-4)
    assert loss([0], [0.3]) == pytest.approx(0.3 * alone, rel=1e-5)
    both = loss([0, 1], [1.0, 1.0])
    assert both == pytest.approx((alone + loss([1], [1.0])) / 2, rel=1e-4)


def test_the_shared_loss_matches_dense_cross_entropy_with_label_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    labels = torch.randint(0, 11, (3, 5))
    labels[0, 3:] = IGNORED
    labels[2, :] = IGNORED  # a row without answer tokens contributes 0
    scores = torch.tensor([1.0, 0.5, 1.0])
    dense = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels, reduction="none", label_smoothing=0.1
    )  # 0 where IGNORED
    expected = torch.stack([dense[0].sum() / 3, dense[1].sum() / 5 * 0.5, torch.tensor(0.0)])
    loss = score_weighted_answer_loss(logits, labels, scores, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected.mean())


@pytest.mark.parametrize(
    ("family", "vision_tower"),
    # Florence-2's DaViT ends in a (B, C, H, W) map and its stages differ in width: no
    # final representation for the mutual-information term, so only its text is adapted.
    [(family, family != "florence2") for family in FAMILIES],
)
def test_the_redundancy_regularizer_trains_on_the_real_token_masks(family, vision_tower):
    """mixphm-ra on a Hugging Face VLM: every adapted stack gets its mask (prompt and answer
    padding excluded, image tokens included; every patch of a vision tower)."""
    vqa = tiny(family, vision_tower=vision_tower)
    regularizer = RedundancyRegularizer(vqa.model, RedundancyConfig(alpha=0.2, beta=0.04))
    questions = [QUESTIONS[0], "is the shape that you see in the picture a circle ?"]
    answers = ["red", "no it is a small blue square"]  # rows of other lengths: padding
    vqa.model.train()
    with regularizer.recording():
        loss, masks = vqa.training_loss(vqa.model, images(), questions, answers, torch.ones(2))
    extra, _ = regularizer.loss(masks)
    assert torch.isfinite(extra) and extra.requires_grad
    (loss + extra).backward()
    assert set(masks) == set(regularizer.stacks)
    inputs = vqa.training_inputs(images(), questions, answers)
    vision = [stack for stack, mask in masks.items() if mask is None]
    assert bool(vision) == vision_tower
    assert all(set(stack.split(".")) & VISION_TOWERS for stack in vision)
    for stack, mask in masks.items():
        if mask is None:
            continue
        answer_decoder = family in DECODER_FAMILIES and set(stack.split(".")) & ANSWER_DECODERS
        key = "decoder_attention_mask" if answer_decoder else "attention_mask"
        assert torch.equal(mask, inputs[key].bool()), stack
        assert not mask.all() and not torch.equal(mask[0], mask[1])  # padding left out
        if key == "attention_mask" and family != "blip":
            assert mask[inputs["input_ids"] == vqa.model.config.image_token_id].all()
