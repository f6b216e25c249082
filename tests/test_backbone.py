"""The offline default backbone: built from the packaged weights, offline."""

import threading

import pytest
import torch
from PIL import Image

from mixphm import add_mixphm, mixphm_adapters
from mixphm.assets import load_minilm
from mixphm.backbones.offline_vlm import OfflineVLM, prompt
from mixphm.backbones.text import encode_candidates, encode_prompts
from mixphm.backbones.vision import GridFeatureExtractor, cached_grid_features
from mixphm.training.methods import apply_method


def test_grid_features_from_the_packaged_image_encoder():
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    features = GridFeatureExtractor()(images)
    assert features.shape == (2, 16, 1280)
    assert not torch.allclose(features[0], features[1])  # red and blue differ


class CountingExtractor(GridFeatureExtractor):
    """The packaged extractor, counting the images it encodes."""

    def __init__(self) -> None:
        super().__init__(batch_size=2)
        self.encoded = 0

    def __call__(self, images):
        self.encoded += len(images)
        return super().__call__(images)


def test_processes_asking_for_the_same_features_at_once_compute_them_once(tmp_path):
    colours = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
    extractor = CountingExtractor()
    results = []

    def ask() -> None:  # each call opens its own lock, as a separate process does
        load = lambda name: Image.new("RGB", (64, 64), colours[name])  # noqa: E731
        results.append(cached_grid_features(list(colours), load, tmp_path / "f", extractor))

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert extractor.encoded == len(colours)
    assert all(torch.equal(results[0][name], results[1][name]) for name in colours)
    assert [p.suffix for p in sorted(tmp_path.iterdir())] == [".lock", ".safetensors"]


def packaged_batch():
    tokenizer, _ = load_minilm()
    ids, mask = encode_prompts(
        tokenizer, [prompt("what color is the shape?"), prompt("is it round?")]
    )
    answers = encode_candidates(tokenizer, ["red", "blue", "yes", "no"])
    visual = torch.randn(2, 16, 1280, generator=torch.Generator().manual_seed(0))
    return tokenizer, ids, mask, visual, answers


def test_backbone_builds_offline_and_runs_forward_backward_and_prediction():
    _, ids, mask, visual, answers = packaged_batch()
    model = OfflineVLM.from_packages()
    logits = model(ids, mask, visual, *answers)
    assert logits.shape == (2, 4)
    logits.logsumexp(-1).sum().backward()
    assert model.visual_projection.weight.grad is not None
    assert model.text.encoder.layer[0].output.dense.weight.grad is not None


def test_mixphm_attaches_and_only_adapters_learn():
    _, ids, mask, visual, answers = packaged_batch()
    model = add_mixphm(OfflineVLM.from_packages())
    assert len(list(mixphm_adapters(model))) == 6
    model.train()
    model(ids, mask, visual, *answers).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (".mixphm." in name and param.requires_grad), name


def test_the_encoder_mask_keeps_visual_tokens_and_drops_text_padding():
    _, ids, mask, _, _ = packaged_batch()
    joint = OfflineVLM.from_packages().encoder_mask(mask)
    assert joint.shape == (2, 16 + ids.shape[1])
    assert joint[:, 1:17].all()
    assert joint.sum(1).tolist() == (mask.sum(1) + 16).tolist()


def test_save_and_load_pretrained_round_trip(tmp_path):
    _, ids, mask, visual, answers = packaged_batch()
    model = OfflineVLM.from_packages(seed=3).eval()
    model.save_pretrained(tmp_path)
    loaded = OfflineVLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, mask, visual, *answers), model(ids, mask, visual, *answers)
        )


def test_bitfit_applies_to_the_backbone():
    model = apply_method(OfflineVLM.from_packages(), "bitfit", 0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith("bias") for n in names)


def test_a_prompt_without_mask_is_refused_and_the_check_does_not_break_compiled_graphs():
    from tiny_models import tiny_candidates, tiny_split, tiny_vlm

    model = tiny_vlm().eval()
    ids, mask, visual, _ = tiny_split(8).batch(torch.arange(8))
    candidates = tiny_candidates()
    inputs = (ids, mask, visual, candidates.ids, candidates.mask)
    explanation = torch._dynamo.explain(model)(*inputs)
    assert explanation.graph_break_count == 0
    no_mask = ids.masked_fill(ids == model.config.mask_token_id, 5)
    with pytest.raises(ValueError, match=r"needs a \[MASK\] token"):
        model(no_mask, *inputs[1:])
