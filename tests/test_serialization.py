"""save_adapter / load_adapter: round trip, small files, clear errors on mismatch."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import BUILDERS
from transformers import T5Config, T5ForConditionalGeneration

from mixphm import MixPHMConfig, add_mixphm, load_adapter, mixphm_adapters, save_adapter
from mixphm.inject import adapter_config, adapter_router
from mixphm.serialization import CONFIG_FILE, WEIGHTS_FILE

CONFIG = MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2)


def trained_t5():
    torch.manual_seed(0)
    built = BUILDERS["t5"]()
    model = add_mixphm(built.model, CONFIG)
    with torch.no_grad():
        for _, adapter in mixphm_adapters(model):
            for p in adapter.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    model.train()
    for _ in range(3):
        model(**built.batch)
    return model, built.batch


def test_round_trip_into_a_fresh_model_gives_identical_outputs(tmp_path):
    model, batch = trained_t5()
    save_adapter(model, tmp_path)
    torch.manual_seed(0)
    fresh = BUILDERS["t5"]().model  # same base weights (same seed), no adapters yet
    load_adapter(fresh, tmp_path)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert fresh.mixphm_router.step == model.mixphm_router.step == 3


def test_file_holds_only_adapter_weights_and_one_rule(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert sum(t.numel() for t in tensors.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    assert [k for k in tensors if "rule" in k] == ["rule.S"]
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["base_model_class"] == "T5ForConditionalGeneration"
    assert MixPHMConfig.from_dict(meta["config"]) == CONFIG


def test_loading_into_another_architecture_names_both(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    with pytest.raises(
        ValueError, match="trained on T5ForConditionalGeneration, not BertForMaskedLM"
    ):
        load_adapter(BUILDERS["bert"]().model, tmp_path)


def t5_variant(**overrides):
    config = BUILDERS["t5"]().model.config.to_dict()
    return T5ForConditionalGeneration(T5Config(**{**config, **overrides}))


def test_loading_into_another_shape_names_the_tensor(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 12, 2\) in the file but \(1, 2, 16, 2\)"):
        load_adapter(t5_variant(d_model=32), tmp_path)


def test_loading_into_a_deeper_model_lists_missing_adapters(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    deeper = t5_variant(num_layers=3)
    with pytest.raises(ValueError, match=r"missing from the file: encoder\.block\.2"):
        load_adapter(deeper, tmp_path)


def test_loading_with_a_different_config_names_the_fields(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    other = add_mixphm(
        BUILDERS["t5"]().model, MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=1)
    )
    with pytest.raises(ValueError, match="different config: phm_rank differ"):
        load_adapter(other, tmp_path)


def test_missing_or_foreign_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved MixPHM adapter"):
        load_adapter(BUILDERS["t5"]().model, tmp_path)
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_adapter(BUILDERS["t5"]().model, tmp_path)


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    torch.save({"rule.S": torch.zeros(2, 2, 2)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_adapter(BUILDERS["t5"]().model, tmp_path)


def test_an_adapter_saved_before_the_activation_field_loads_with_exact_gelu(tmp_path):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["config"].pop("activation") == "gelu_new"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))  # as files before the field read
    torch.manual_seed(0)
    fresh = BUILDERS["t5"]().model
    load_adapter(fresh, tmp_path)
    assert {adapter.approximate for _, adapter in mixphm_adapters(fresh)} == {"none"}


@pytest.mark.parametrize(
    ("variant", "message"),
    [({"d_model": 32}, "has shape"), ({"num_layers": 3}, "missing from the file")],
)
def test_a_failed_load_leaves_the_model_untouched(tmp_path, variant, message):
    model, _ = trained_t5()
    save_adapter(model, tmp_path)
    target = t5_variant(**variant)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_adapter(target, tmp_path)
    assert not list(mixphm_adapters(target))
    assert all(p.requires_grad for p in target.parameters())  # not frozen
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in target.modules())
    after = target.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_settings_that_leave_the_shapes_alone_are_taken_from_the_file_and_reported(tmp_path):
    model, batch = trained_t5()
    save_adapter(model, tmp_path)  # dropout 0.5, routing seed 0, gelu_new
    torch.manual_seed(0)
    other = BUILDERS["t5"]().model
    settings = {"routing_seed": 21, "dropout": 0.0, "activation": "gelu"}
    add_mixphm(other, MixPHMConfig(**{**CONFIG.to_dict(), **settings}))
    with pytest.warns(
        UserWarning,
        match=r"took dropout=0.5, activation='gelu_new', routing_seed=0 from .* had "
        r"dropout=0.0, activation='gelu', routing_seed=21\)",
    ):
        load_adapter(other, tmp_path)
    assert adapter_config(other) == CONFIG
    adapters = [adapter for _, adapter in mixphm_adapters(other)]
    assert {(a.dropout.p, a.approximate) for a in adapters} == {(0.5, "tanh")}
    assert adapter_router(other).state_dict() == adapter_router(model).state_dict()
    model.eval()
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(**batch).logits, model(**batch).logits, rtol=0, atol=0)
