"""AdaFace's IR / IR-SE backbones: the official state-dict layout, block structure, weight init, fp32 embedding
layer under autocast, activation checkpointing and the Hydra configs.

``fixtures/adaface_ir_keys.json`` holds facts recorded from the official code, not code: the key names and
shapes, in order, of ``net.Backbone((112, 112), n, mode).state_dict()`` from AdaFace's ``net.py``
(github.com/mk-minchul/AdaFace, commit c60eaa786a42c03444f3df7096dbaf9d57ae010d) for ir_50, ir_se_50 and the
bottleneck ir_152. Outputs were compared side by side with the official model outside the repo.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import facetrain.backbones.ir  # noqa: F401  (registers the ir_* entries)
from facetrain.backbones.registry import BACKBONES
from tests.test_resilience import _composed

pytestmark = pytest.mark.usefixtures("one_thread")

OFFICIAL = json.loads((Path(__file__).parent / "fixtures" / "adaface_ir_keys.json").read_text())
OFFICIAL.pop("_source")
NAMES = ["ir_18", "ir_34", "ir_50", "ir_101", "ir_152", "ir_200", "ir_se_50", "ir_se_101", "ir_se_152", "ir_se_200"]
BLOCKS = {"ir_18": 8, "ir_34": 16, "ir_50": 24, "ir_101": 49, "ir_152": 50, "ir_200": 66}


def _layout(name: str, embedding_size: int = 512) -> nn.Module:
    """The network without real storage: structure and shapes only, built in no time."""
    with torch.device("meta"):
        return BACKBONES.get(name)(embedding_size=embedding_size)


def test_registered_names():
    assert [n for n in BACKBONES.names() if n.startswith("ir_")] == sorted(NAMES)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_state_dict_has_adaface_s_keys_and_shapes_in_order(name):
    ours = [[key, list(value.shape)] for key, value in _layout(name).state_dict().items()]
    assert ours == OFFICIAL[name]


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_builds_at_512_and_128_and_embeds(name):
    model = _layout(name)
    channels = 2048 if name.endswith(("152", "200")) else 512
    fc = model.output_layer[3]
    assert (fc.in_features, fc.out_features) == (channels * 7 * 7, 512)
    assert len(model.body) == BLOCKS[name.replace("_se", "")]
    if name.endswith("200"):  # ir_152's bottleneck blocks, deeper: slow on CPU, shapes are enough
        assert _layout(name, 128).output_layer[3].out_features == 128
        return
    model = BACKBONES.get(name)(embedding_size=128).eval()
    with torch.no_grad():
        embedding = model(torch.randn(2, 3, 112, 112))
    assert embedding.shape == (2, 128) and torch.isfinite(embedding).all()


def test_shortcut_is_a_1x1_max_pool_where_channels_match_and_a_conv_bn_where_they_change():
    basic, bottleneck = _layout("ir_50").body, _layout("ir_152").body
    for block, stride in ((basic[0], 2), (basic[1], 1), (bottleneck[1], 1)):  # 64->64 opens IR's first stage
        pool = block.shortcut_layer
        assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride) == (1, stride)
    for block, in_channels, channels in ((basic[3], 64, 128), (bottleneck[0], 64, 256), (bottleneck[3], 256, 512)):
        conv, bn = block.shortcut_layer
        assert isinstance(bn, nn.BatchNorm2d) and conv.bias is None
        assert (conv.in_channels, conv.out_channels) == (in_channels, channels)
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)


def test_stride_sits_on_the_last_conv_of_the_residual_branch():
    for name, stride_at in (("ir_50", 4), ("ir_152", 7)):  # second 3x3 of a basic block, closing 1x1 of a bottleneck
        convs = {i: m.stride for i, m in enumerate(_layout(name).body[3].res_layer) if isinstance(m, nn.Conv2d)}
        assert convs == {i: (2, 2) if i == stride_at else (1, 1) for i in convs}


def test_output_layer_layout_and_batch_norm_without_affine():
    layer = _layout("ir_se_50", 128).output_layer
    assert [type(m) for m in layer] == [nn.BatchNorm2d, nn.Dropout, nn.Flatten, nn.Linear, nn.BatchNorm1d]
    assert layer[1].p == 0.4
    assert not layer[4].affine and list(layer[4].parameters()) == []


def test_ir_se_blocks_have_a_squeeze_excite_of_reduction_16_and_ir_blocks_none():
    for name in ("ir_se_50", "ir_se_152"):
        for block in _layout(name).body:
            channels = block.res_layer[-2].num_features
            fc1, fc2 = block.res_layer.se_block.fc1, block.res_layer.se_block.fc2
            assert (fc1.in_channels, fc1.out_channels, fc2.out_channels) == (channels, channels // 16, channels)
            assert fc1.kernel_size == fc2.kernel_size == (1, 1) and fc1.bias is None and fc2.bias is None
    assert not any("se_block" in key for key in _layout("ir_50").state_dict())


def test_weight_init_is_adaface_s():
    """Kaiming-normal with fan out for convs and the FC (also SE convs: AdaFace's initialize_weights runs after
    SEModule's xavier_uniform_ and overrides it), zero FC bias, BN2d at 1/0, PReLU at 0.25."""
    torch.manual_seed(0)
    model = BACKBONES.get("ir_se_50")(embedding_size=512)
    conv, fc = model.body[23].res_layer[4], model.output_layer[3]
    se = model.body[23].res_layer.se_block.fc1  # 512 -> 32: fan out 32
    for weight, fan_out in ((conv.weight, 512 * 9), (fc.weight, 512), (se.weight, 32)):
        assert weight.mean().abs() < 0.05 * math.sqrt(2 / fan_out)
        assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert (fc.bias == 0).all()
    bn, prelu = model.body[23].res_layer[2], model.body[23].res_layer[3]
    assert (bn.weight == 1).all() and (bn.bias == 0).all() and (prelu.weight == 0.25).all()


def test_embedding_layer_runs_in_fp32_under_autocast_and_the_body_in_bf16():
    model = BACKBONES.get("ir_18")(embedding_size=64).train()
    seen = {}
    for name, module in {"input": model.input_layer[0], "last_block": model.body[-1], "fc": model.output_layer[3],
                         "features": model.output_layer[4]}.items():
        module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: (args[0].dtype, out.dtype)}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = model(torch.randn(2, 3, 112, 112))
    assert seen["input"][1] == seen["last_block"][1] == torch.bfloat16
    assert seen["fc"] == seen["features"] == (torch.float32, torch.float32)
    assert embedding.dtype == torch.float32


def test_activation_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = BACKBONES.get("ir_18")(embedding_size=32, dropout=0.0).train()
    checkpointed = BACKBONES.get("ir_18")(embedding_size=32, dropout=0.0, activation_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    checkpointed.body[0].register_forward_pre_hook(lambda m, args: calls.append(1))
    x = torch.randn(2, 3, 112, 112)
    outputs = [model(x) for model in (plain, checkpointed)]
    torch.testing.assert_close(outputs[0], outputs[1])
    for out in outputs:
        out.square().sum().backward()
    assert len(calls) == 2  # the block's forward ran again in the backward pass
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_hydra_config_composes():
    cfg = _composed("experiment=smoke", "backbone=ir_se_50")
    assert cfg.backbone.name == "ir_se_50" and cfg.backbone.dropout == 0.4
    assert cfg.backbone.activation_checkpointing is False
