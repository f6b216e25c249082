"""VL-T5 on a tiny T5 configuration: forward, loss and decoding with region features read
from a ``*_obj36.h5`` file in the real layout, released-key checkpoints, and training
through the recipe with MixPHM and the redundancy regularizer."""

from collections import Counter

import pytest
import torch
import transformers as tf
from conftest import write_obj36
from tiny_processors import tokenizer

from mixphm import MixPHMConfig, add_mixphm
from mixphm.backbones.generation import Decoding
from mixphm.backbones.vlt5 import (
    IGNORED_UNEXPECTED,
    TIED_ALIASES,
    VLT5,
    VLT5VQA,
    CheckpointMismatch,
    VisualConfig,
    box_inputs,
    load_vlt5_checkpoint,
)
from mixphm.data import RegionFeatureFile, VQADataset, VQAExample
from mixphm.inject import mixphm_adapters
from mixphm.training.objectives import AnswerGeneration
from mixphm.training.recipe import RunSpec, train

REGIONS, FEATURES = 36, 2048
IMAGES = [f"COCO_val2014_{i:012d}" for i in range(1, 5)]


def tiny_vlt5(seed: int = 0, vocab_size: int = 64) -> VLT5:
    config = tf.T5Config(
        vocab_size=vocab_size,
        d_model=48,  # divisible by every preset's reduction factor (12, 16)
        d_kv=12,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return VLT5(config, VisualConfig(feature_dim=FEATURES)).eval()


@pytest.fixture(scope="module")
def obj36(tmp_path_factory) -> RegionFeatureFile:
    """Detector output in the LXMERT / VL-T5 layout: one group per image."""
    path = tmp_path_factory.mktemp("features") / "val2014_obj36.h5"
    return RegionFeatureFile(write_obj36(path, IMAGES, regions=REGIONS, dim=FEATURES))


def vqa(obj36, seed: int = 0) -> VLT5VQA:
    return VLT5VQA(tiny_vlt5(seed), tokenizer("<image>"))


def batch(obj36, questions=("what color is the shape ?", "how many ?")):
    visuals = [obj36.load(image) for image in IMAGES[: len(questions)]]
    return visuals, list(questions)


def test_forward_and_loss_read_the_regions(obj36):
    model = vqa(obj36)
    visuals, questions = batch(obj36)
    inputs = model.inputs(visuals, questions)
    assert inputs["visual_features"].shape == (2, REGIONS, FEATURES)
    assert inputs["boxes"].min() >= 0 and inputs["boxes"].max() <= 1
    loss, masks = model.training_loss(
        model.model, visuals, questions, ["red", "two"], torch.tensor([1.0, 0.3])
    )
    assert torch.isfinite(loss) and loss > 0
    assert masks["encoder"].shape == (2, inputs["input_ids"].shape[1] + REGIONS)

    other = [obj36.load(IMAGES[2]), obj36.load(IMAGES[3])]
    changed, _ = model.training_loss(
        model.model, other, questions, ["red", "two"], torch.tensor([1.0, 0.3])
    )
    assert not torch.allclose(loss, changed)  # the regions reach the answer


def test_the_loss_is_the_score_weighted_mean_of_answer_losses(obj36):
    model = vqa(obj36)
    visuals, questions = batch(obj36)
    answers = ["red", "two"]
    each = [
        model.training_loss(model.model, [v], [q], [a], torch.ones(1))[0]
        for v, q, a in zip(visuals, questions, answers, strict=True)
    ]
    scores = torch.tensor([1.0, 0.3])
    both, _ = model.training_loss(model.model, visuals, questions, answers, scores)
    assert both.item() == pytest.approx(((each[0] + 0.3 * each[1]) / 2).item(), rel=1e-5)


def test_text_padding_changes_nothing(obj36):
    model = vqa(obj36)
    visuals, questions = batch(obj36, ("what color is the shape ?", "how many ?"))
    inputs = model.inputs(visuals, questions)
    assert inputs["attention_mask"][1].sum() < inputs["attention_mask"].shape[1]  # padded
    alone = model.inputs(visuals[1:], questions[1:])
    decoder = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        batched = model.model(**inputs, decoder_input_ids=decoder.repeat(2, 1)).logits[1]
        single = model.model(**alone, decoder_input_ids=decoder).logits[0]
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_the_fifth_box_input_is_the_released_codes_quantity():
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.9]]])  # x1, y1, x2, y2
    assert box_inputs(boxes)[0, 0, 4].item() == pytest.approx((0.9 - 0.5) * (0.2 - 0.1))


def test_greedy_generation_follows_the_argmax_and_beams_score_at_least_as_well(obj36):
    model = vqa(obj36)
    visuals, questions = batch(obj36)
    inputs = model.inputs(visuals, questions)
    greedy = model.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    decoded = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(3):
            logits = model.model(**inputs, decoder_input_ids=decoded).logits[:, -1]
            decoded = torch.cat([decoded, logits.argmax(-1, keepdim=True)], 1)
    for row in range(2):
        tokens = greedy[row].tolist()
        length = tokens.index(2) + 1 if 2 in tokens else len(tokens)  # then padding
        assert tokens[:length] == decoded[row, :length].tolist()

    def log_likelihood(sequences):
        with torch.no_grad():
            logits = model.model(**inputs, decoder_input_ids=sequences[:, :-1]).logits
        scores = logits.log_softmax(-1).gather(-1, sequences[:, 1:, None])[..., 0]
        return scores.sum(1)

    beams = model.model.generate(**inputs, max_new_tokens=3, num_beams=4, early_stopping=False)
    assert beams.shape == greedy.shape == (2, 4) and not (torch.cat([beams, greedy]) == 2).any()
    assert (log_likelihood(beams) >= log_likelihood(greedy) - 1e-5).all()
    for decoding in (Decoding(max_new_tokens=3), Decoding(max_new_tokens=3, num_beams=3)):
        answers = model.answer(visuals, questions, decoding)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def released_state(model: VLT5) -> dict[str, torch.Tensor]:
    """A state dict as VL-T5's trainer saves it under DDP: ``module.`` names, every tied
    alias present, and the unused relative bias of old T5 checkpoints."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    shared = model.shared.weight.detach().clone()
    state.update({f"module.{alias}": shared for alias in TIED_ALIASES})
    state.update({f"module.{k}": torch.zeros(32, 4) for k in IGNORED_UNEXPECTED})
    return state


def test_a_released_checkpoint_loads_and_reproduces_the_model(obj36, tmp_path):
    source, target = tiny_vlt5(seed=1), tiny_vlt5(seed=2)
    path = tmp_path / "Epoch30.pth"
    torch.save(released_state(source), path)
    load_vlt5_checkpoint(target, path)
    inputs = VLT5VQA(source, tokenizer("<image>")).inputs(*batch(obj36))
    decoder = torch.zeros(2, 2, dtype=torch.long)
    with torch.no_grad():
        expected = source(**inputs, decoder_input_ids=decoder).logits
        loaded = target(**inputs, decoder_input_ids=decoder).logits
    torch.testing.assert_close(loaded, expected)
    assert target.lm_head.weight.data_ptr() == target.shared.weight.data_ptr()


def test_a_checkpoint_that_does_not_fit_names_every_bad_key(tmp_path):
    model = tiny_vlt5()
    state = released_state(model)
    del state["module.encoder.visual_embedding.img_order_embedding.weight"]
    state["module.encoder.visual_embedding.layer_norm.weight"] = torch.ones(48)
    state["module.decoder.final_layer_norm.weight"] = torch.ones(16)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatch) as error:
        load_vlt5_checkpoint(model, path)
    report = str(error.value)
    assert "missing (1):\n    encoder.visual_embedding.img_order_embedding.weight" in report
    assert "unexpected (1):\n    encoder.visual_embedding.layer_norm.weight" in report
    assert "decoder.final_layer_norm.weight: checkpoint (16,), model (48,)" in report


def test_adapters_load_after_the_backbone_checkpoint(tmp_path):
    model = add_mixphm(tiny_vlt5(), MixPHMConfig(reduction_factor=4, phm_dim=2))
    assert len(list(mixphm_adapters(model))) == 4  # the FFN of 2 encoder + 2 decoder blocks
    adapters = {n: t.clone() for n, t in model.state_dict().items() if ".mixphm." in n}
    path = tmp_path / "Epoch30.pth"
    released = tiny_vlt5(seed=3)
    torch.save(released_state(released), path)
    load_vlt5_checkpoint(model, path)  # the adapters are new, not missing
    loaded = model.state_dict()
    for name, value in released.state_dict().items():
        assert torch.equal(loaded[name], value), name
    for name, value in adapters.items():  # and keep their weights
        assert torch.equal(loaded[name], value), name


def dataset(obj36, questions: int) -> VQADataset:
    words = ["red", "blue", "yes", "no"]
    examples = [
        VQAExample(
            question_id=str(i),
            image_id=IMAGES[i % len(IMAGES)],
            question="what color is the shape ?" if i % 2 else "is the shape a circle ?",
            answers=(words[i % 4],) * 10,
            scores={words[i % 4]: 1.0, words[(i + 1) % 4]: 0.3},
        )
        for i in range(questions)
    ]
    return VQADataset("toy", "train", examples, obj36)


@pytest.mark.parametrize("method", ["mixphm-ra", "lora"])
def test_the_recipe_trains_vlt5(obj36, tmp_path, method):
    model = vqa(obj36)
    objective = AnswerGeneration(model, seed=13, decoding=Decoding(max_new_tokens=3))
    data = (dataset(obj36, 16), dataset(obj36, 8), dataset(obj36, 8))
    spec = RunSpec(method, 16, 13, "vlt5-tiny", max_epochs=3)
    result = train(spec, lambda: model.model, data, objective, tmp_path / method)
    assert 0 <= result.test_accuracy <= 100 and result.epochs == 3
    assert 0 < result.trainable_parameters < result.total_parameters
    assert (tmp_path / method / "result.json").is_file()
    assert not (tmp_path / method / "answers.json").exists()  # open-vocabulary answers


class CountingSource:
    """A real visual source that counts its reads."""

    def __init__(self, source: RegionFeatureFile) -> None:
        self.source, self.reads = source, Counter()

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.source

    def load(self, image_id: str):
        self.reads[image_id] += 1
        return self.source.load(image_id)


def test_dev_visuals_are_read_once_and_test_visuals_every_time(obj36):
    model = vqa(obj36)
    for keep_inputs, reads in ((True, 1), (False, 2)):
        objective = AnswerGeneration(model, seed=13, decoding=Decoding(max_new_tokens=2))
        source = CountingSource(obj36)
        split = VQADataset("toy", "dev", dataset(obj36, 8).examples, source)
        first = objective.predict(model.model, split, keep_inputs)
        assert objective.predict(model.model, split, keep_inputs) == first
        assert dict(source.reads) == dict.fromkeys(IMAGES, reads)
