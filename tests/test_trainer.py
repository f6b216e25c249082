"""A MixPHM model trains under transformers' Trainer as in our recipe: per-expert optimizer
state through ``optimizers=``, gradient accumulation, gradient checkpointing and bf16, the
same routing as our loop for the same seed, unrouted experts untouched, checkpoints that
save (the shared rule tensor once) and an adapter that reloads."""

import pytest
import torch
import transformers as tf
from accelerate.state import AcceleratorState
from accelerate.utils import extract_model_from_parallel
from tiny_models import BUILDERS

from mixphm import MixPHMConfig, add_mixphm, load_adapter, mixphm_adapters, save_adapter
from mixphm.optim import adamw
from mixphm.routing import expert_choices

FAMILY = "paligemma"
SEED = 13


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The Trainer sets accelerate's process-wide state to bf16; later tests build their
    own accelerators, so it is reset afterwards."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_mixphm_vlm_trains_under_the_trainer_as_in_our_recipe(tmp_path):
    torch.manual_seed(0)
    built = BUILDERS[FAMILY]()
    model = add_mixphm(
        built.model, MixPHMConfig(reduction_factor=4, phm_dim=2, dropout=0.0, routing_seed=SEED)
    )
    adapters = [adapter for _, adapter in mixphm_adapters(model)]
    initial = [adapter.up.left.detach().clone() for adapter in adapters]
    routed = []  # the choices each training forward used (recorded after the router's hook)
    model.register_forward_pre_hook(
        lambda module, args: (
            routed.append(model.mixphm_router.choices.clone()) if module.training else None
        )
    )
    rows = [{name: value[i] for name, value in built.batch.items()} for i in range(2)] * 4
    args = tf.TrainingArguments(
        str(tmp_path / "trainer"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        activation_checkpointing=True,
        bf16=True,
        use_cpu=True,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
        report_to=[],
        seed=SEED,
    )
    trainer = tf.Trainer(
        model=model, args=args, train_dataset=rows, optimizers=(adamw(model, 1e-2), None)
    )
    trainer.train()

    # one routing step per forward, 2 per optimizer step: our loop's choices for this seed
    expected = [expert_choices(SEED, step, len(adapters), 4) for step in range(1, 7)]
    assert len(routed) == 6
    assert all(torch.equal(got, want) for got, want in zip(routed, expected, strict=True))
    chosen = torch.stack(routed)  # (forwards, layers)
    for layer, (adapter, before) in enumerate(zip(adapters, initial, strict=True)):
        for expert in range(4):
            moved = not torch.equal(adapter.up.left[expert], before[expert])
            assert moved == bool((chosen[:, layer] == expert).any()), (layer, expert)
    assert (tmp_path / "trainer" / "checkpoint-3" / "model.safetensors").is_file()

    save_adapter(model, tmp_path / "adapter")
    torch.manual_seed(0)
    fresh = load_adapter(BUILDERS[FAMILY]().model, tmp_path / "adapter")
    # accelerate left bf16 autocast around the trained model's forward; take it off
    model = extract_model_from_parallel(model, keep_fp32_wrapper=False).eval()
    fresh.eval()
    inputs = {k: v for k, v in built.batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, model(**inputs).logits)
