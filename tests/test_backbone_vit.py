"""arcface_torch's face ViTs (``vit_t``, ``vit_s``, ``vit_b``, ``vit_l``): layout, masking, stochastic depth,
checkpointing, precision, config errors and the shipped configs.

``fixtures/arcface_torch_vit_keys.json`` holds facts recorded by running the official code (insightface commit
7fadd420c2351d0ffa8cac403421c1a3ed733365, ``recognition/arcface_torch/backbones/vit.py``, built with the settings
of ``backbones/__init__.py``'s ``get_model``): ``vit_t``'s state-dict keys and shapes in order, and for each model
its settings, entry count and the shapes of its distinctive tensors at 512- and 128-d embeddings. Side by side
outside the repo, the official model's state dict loaded into ours with ``strict=True`` gave outputs and gradients
equal to the last bit on CPU (eval and train mode, same seed).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import facetrain.backbones.vit  # noqa: F401  (registers vit_*; facetrain.backbones does not import it yet)
from facetrain.backbones.registry import BACKBONES
from facetrain.backbones.vit import VisionTransformer
from facetrain.errors import ConfigError
from facetrain.train import hparams
from tests.test_resilience import _composed

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = json.loads((Path(__file__).parent / "fixtures" / "arcface_torch_vit_keys.json").read_text())
OFFICIAL_NAME = {"vit_t": "vit_t", "vit_s": "vit_s", "vit_b": "vit_b", "vit_l": "vit_l_dp005_mask_005"}


def _layout(model: torch.nn.Module) -> list[list]:
    return [[key, list(value.shape)] for key, value in model.state_dict().items()]


def _small(**overrides) -> VisionTransformer:
    """vit_t's width with few blocks, for fast forward passes."""
    torch.manual_seed(0)
    return BACKBONES.get("vit_t")(**{"depth": 2, **overrides})


def test_vit_t_state_dict_has_arcface_torchs_keys_and_shapes_in_order():
    with torch.device("meta"):
        model = BACKBONES.get("vit_t")()
    assert _layout(model) == FACTS["vit_t"]["state_dict"]


@pytest.mark.parametrize("embedding_size", [512, 128])
@pytest.mark.parametrize("name", list(OFFICIAL_NAME))
def test_each_vit_builds_arcface_torchs_layout(name, embedding_size):
    facts = FACTS[OFFICIAL_NAME[name]]
    with torch.device("meta"):  # no memory or init time: vit_l alone holds 255M parameters
        state = BACKBONES.get(name)(embedding_size=embedding_size).state_dict()
    assert len(state) == facts[f"entries_{embedding_size}"]
    last = facts["get_model"]["depth"] - 1
    assert {key: list(state[key.format(last=last)].shape) for key in facts[f"shapes_{embedding_size}"]} == \
        facts[f"shapes_{embedding_size}"]


@pytest.mark.parametrize("embedding_size", [512, 128])
def test_vit_t_maps_faces_to_embeddings(embedding_size):
    torch.manual_seed(0)
    model = BACKBONES.get("vit_t")(embedding_size=embedding_size)
    x = torch.randn(2, 3, 112, 112)
    assert model.train()(x).shape == (2, embedding_size)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, embedding_size)


@pytest.mark.parametrize("name", ["vit_s", "vit_b", "vit_l"])
def test_wider_vits_map_faces_to_embeddings(name):
    model = BACKBONES.get(name)(embedding_size=128, depth=1)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 112, 112)).shape == (2, 128)


def test_training_masks_patches_and_fills_them_with_the_mask_token():
    model = _small(mask_ratio=0.5)
    lengths, flattened = [], {}
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    model.feature.register_forward_pre_hook(lambda m, args: flattened.update(x=args[0]))
    x = torch.randn(2, 3, 112, 112)

    assert model.train()(x).shape == (2, 512)
    assert lengths == [int(144 * 0.5)] * 2  # the kept tokens, through every block
    tokens = flattened["x"].reshape(2, 144, 256)
    is_mask = (tokens == model.mask_token.detach()).all(dim=-1)
    assert is_mask.sum(dim=1).tolist() == [144 - 72] * 2
    assert not torch.equal(is_mask[0], is_mask[1])  # a different draw per sample

    lengths.clear()
    with torch.no_grad():
        first, second = model.eval()(x), model(x)
    assert lengths == [144] * 4 and torch.equal(first, second)


def test_stochastic_depth_rises_linearly_and_draws_per_call():
    model = _small(depth=4, drop_path_rate=0.6, mask_ratio=0.0).train()
    assert [block.drop_path.p for block in model.blocks] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    x = torch.randn(2, 3, 112, 112)
    torch.manual_seed(1)
    assert not torch.equal(model(x), model(x))
    model = _small(depth=4, drop_path_rate=0.0, mask_ratio=0.0).train()
    assert torch.equal(model(x), model(x))


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    plain = _small(drop_path_rate=0.0, mask_ratio=0.0).train()
    checkpointed = _small(drop_path_rate=0.0, mask_ratio=0.0, activation_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    checkpointed.blocks[0].register_forward_pre_hook(lambda m, args: calls.append(1))
    x = torch.randn(2, 3, 112, 112)
    outputs = [model(x) for model in (plain, checkpointed)]
    for output in outputs:
        output.square().sum().backward()
    assert len(calls) == 2  # the forward pass, then the recomputation in the backward
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_and_feature_layers_run_in_fp32_under_autocast(dtype):
    model = _small(depth=1)
    block = model.blocks[0]
    modules = {"patch": model.patch_embed.proj, "qkv": block.attn.qkv, "proj": block.attn.proj,
               "fc1": block.mlp.fc1, "norm": model.norm, "fc0": model.feature[0], "bn1": model.feature[1],
               "fc2": model.feature[2], "bn3": model.feature[3]}
    seen = {}
    for name, module in modules.items():
        module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: (args[0].dtype, out.dtype)}))
    with torch.autocast("cpu", dtype=dtype):
        embedding = model.train()(torch.randn(2, 3, 112, 112))
    assert seen["patch"][1] == seen["qkv"][1] == seen["fc1"][1] == dtype  # the body in the autocast dtype
    assert seen["proj"][0] == torch.float32  # the attention-weighted sum, computed in fp32
    fp32 = (torch.float32, torch.float32)
    assert seen["norm"] == seen["fc0"] == seen["bn1"] == seen["fc2"] == seen["bn3"] == fp32
    assert embedding.dtype == torch.float32


def test_no_weight_decay_names_parameters():
    model = _small()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed", "mask_token"} and model.no_weight_decay() <= names.keys()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"patch_size": 120}, "backbone.patch_size=120 does not fit backbone.image_size=112"),
     ({"num_heads": 7}, "backbone.embed_dim=256 is not a multiple of backbone.num_heads=7"),
     ({"mask_ratio": 1.0}, r"backbone.mask_ratio=1.0 is outside \[0, 1\)"),
     ({"drop_path_rate": -0.1}, r"backbone.drop_path_rate=-0.1 is outside \[0, 1\)")],
)
def test_impossible_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        BACKBONES.get("vit_t")(**overrides)
    assert "\n" not in str(error.value) and "; " in str(error.value)


@pytest.mark.parametrize("name", list(OFFICIAL_NAME))
def test_shipped_configs_hold_arcface_torchs_settings(name):
    cfg = _composed("experiment=smoke", f"backbone={name}")
    assert cfg.backbone.name == name and cfg.backbone.patch_size == 9 and cfg.backbone.image_size == 112
    official = dict(FACTS[OFFICIAL_NAME[name]]["get_model"])
    official["activation_checkpointing"] = official.pop("using_checkpoint")
    assert {key: cfg.backbone[key] for key in official} == official
    with torch.device("meta"):
        model = BACKBONES.get(name)(embedding_size=cfg.embedding_size, **hparams(cfg.backbone))
    assert len(model.state_dict()) == FACTS[OFFICIAL_NAME[name]]["entries_512"]
