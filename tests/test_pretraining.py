"""The generated pretraining corpus and a few steps of the pretraining recipe."""

import hashlib

import numpy as np

from mixphm.data import load_easy_vqa
from mixphm.pretraining.corpus import VOCABULARY, generate
from mixphm.pretraining.recipe import PretrainConfig, pretrain
from mixphm.schedule import linear_warmup_decay


def test_corpus_is_deterministic_for_a_seed_and_differs_across_seeds():
    images_a, examples_a = generate(40, seed=3)
    images_b, examples_b = generate(40, seed=3)
    _, examples_c = generate(40, seed=4)
    assert examples_a == examples_b
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(images_a, images_b, strict=True)
    )
    assert examples_a != examples_c
    assert all(e.answer in VOCABULARY and "[MASK]" in e.text for e in examples_a)


def test_corpus_shares_no_question_answer_pair_or_image_with_easy_vqa():
    images, examples = generate(300, seed=0)
    easy = [*load_easy_vqa("train").examples, *load_easy_vqa("test").examples]
    questions = {e.question for e in easy}
    assert not any(e.text.replace(" [MASK]", "") in questions for e in examples)
    assert not any("?" in e.text.replace(" ? [MASK]", "") for e in examples)  # captions only
    train = load_easy_vqa("train")
    easy_hashes = {
        hashlib.sha256(np.asarray(train.visual.load(i)).tobytes()).hexdigest()
        for i in sorted({e.image_id for e in train.examples})[:500]
    }
    ours = {hashlib.sha256(np.asarray(image).tobytes()).hexdigest() for image in images}
    assert not easy_hashes & ours


def test_schedule_warms_up_then_decays():
    factors = [linear_warmup_decay(step, 100, 0.05) for step in range(100)]
    assert factors[0] == 0.2 and factors[4] == 1.0
    assert factors[50] > factors[90] > 0.0


def test_a_few_pretraining_steps_lower_the_loss_deterministically(tmp_path):
    config = PretrainConfig(scenes=48, steps=16, batch_size=16, seed=1)
    _, losses = pretrain(config, tmp_path / "ckpt")
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    _, again = pretrain(config)
    assert again[:3] == losses[:3]
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
