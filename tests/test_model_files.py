"""Model files from strangers are checked before a network is built for them: the config a checkpoint carries
is held to the command line's rules, its tensors are compared with the network it names on the meta device,
and every tensor must hold values of its own in the file. A file of a few kilobytes cannot make facetrain
allocate a large model; every refusal is one line naming the file."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import facetrain
from facetrain.backbones import BACKBONES
from facetrain.config import SCHEMAS
from facetrain.errors import ModelError
from facetrain.weights import build_loaded, read_layout
from facetrain.weights.network import backbone_schema
from tests.eval_helpers import edited_checkpoint, not_weight_files, set_config, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def set_tensor(key: str, value: torch.Tensor) -> Callable[[dict[str, Any]], None]:
    return lambda state: state["backbone"].__setitem__(key, value)


def import_weights(path: Path) -> torch.nn.Module:
    """What ``import_weights.py`` does with a file: recognise it, then build the backbone it names and fill it."""
    found = read_layout(path)
    return build_loaded(found, found.layout.backbone, found.layout.hparams, found.layout.embedding_size)[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "base.pt"
    write_checkpoint(path)
    return path


CRAFTED = {  # name -> (edit, what the one-line refusal says)
    "embedding_2**31": (set_config("embedding_size", value=2**31), "fc.weight has shape (32, 512), the backbone's fc.weight "
                        "has (2147483648, 512) (the mbf its config names); the file is damaged or was edited"),
    "embedding_text": (set_config("embedding_size", value="512"), "its config's embedding_size is '512', not an integer"),
    "embedding_0": (set_config("embedding_size", value=0), "its config has embedding_size=0, out of range (an integer >= 1)"),
    "blocks_257": (set_config("backbone", "blocks", value=[1, 1, 1, 257]),  # a billion: the capped test below
                   "its config has backbone.blocks=[1, 1, 1, 257], out of range"),
    "scale_text": (set_config("backbone", "scale", value="wide"), "backbone settings do not fit mbf (Value 'wide' of type"),
    "unknown_key": (set_config("backbone", "width", value=3), "backbone settings do not fit mbf (Key 'width' not in"),
    "interpolation": (set_config("backbone", "scale", value="${oc.env:HOME}"), "backbone settings hold an interpolation"),
    "no_backbone": (set_config("backbone", value=[1]), "its config names no backbone (config.backbone.name)"),
    "unknown_backbone": (set_config("backbone", "name", value="r9000"), "holds backbone 'r9000', which this facetrain does not have"),
    "zero_stride": (set_tensor("fc.weight", torch.zeros(1).as_strided((2**20, 2**20), (0, 0))),
                    "tensor fc.weight of shape (1048576, 1048576) repeats the 4 bytes the file stores for it"),
    "overlapping": (set_tensor("fc.weight", torch.zeros(2**12).as_strided((32, 512), (1, 1))),
                    "tensor fc.weight of shape (32, 512) repeats the 16384 bytes the file stores for it"),
    "missing_tensor": (lambda state: state["backbone"].pop("fc.weight"), "does not match the backbone's keys: 1 missing (e.g. fc.weight)"),
}


@pytest.mark.parametrize("name", CRAFTED)
@pytest.mark.parametrize("load", [facetrain.load_backbone, import_weights], ids=["load_backbone", "import_weights"])
def test_crafted_checkpoints_are_refused_in_one_line_naming_the_file(base, tmp_path, name, load):
    edit, expected = CRAFTED[name]
    path = edited_checkpoint(base, tmp_path / f"{name}.pt", edit)
    with pytest.raises(ModelError) as refused:
        load(path)
    message = str(refused.value)
    assert expected in message and str(path) in message and "\n" not in message, message


def repeated_to(size: int) -> Callable[[dict[str, Any]], None]:
    """An edit that asks for ``size``-d embeddings and gives every embedding-sized tensor that shape, as one
    stored value repeated (zero strides): the shapes fit the config, the file holds a few bytes of them."""
    def edit(state: dict[str, Any]) -> None:
        set_config("embedding_size", value=size)(state)
        for key, tensor in state["backbone"].items():
            if tensor.dim() and tensor.shape[0] == state["backbone"]["fc.weight"].shape[0]:
                state["backbone"][key] = torch.zeros(1, dtype=tensor.dtype).as_strided(
                    (size, *tensor.shape[1:]), (0,) * tensor.dim())
    return edit


def test_a_config_asking_for_terabytes_is_refused_without_allocating(base, tmp_path):
    """In a process whose address space is capped 1 GiB above what it holds after start-up, load_backbone and
    import_weights refuse checkpoints whose config asks for a 4 TiB and a 4.5 GiB embedding layer or a billion
    blocks (before the fix, building the network failed to allocate, or took the memory, before the weights
    were looked at), and one whose tensors have the shapes of a 4 GiB layer with one stored value repeated."""
    damaged = "; the file is damaged or was edited; use the file train.py or import_weights.py wrote"
    crafted = {
        "e31": (set_config("embedding_size", value=2**31),
                "fc.weight has shape (32, 512), the backbone's fc.weight has (2147483648, 512) (the mbf its config names)"
                + damaged),
        "e21": (set_config("embedding_size", value=2**21),
                "fc.weight has shape (32, 512), the backbone's fc.weight has (2097152, 512) (the mbf its config names)"
                + damaged),
        "blocks": (set_config("backbone", "blocks", value=[1, 1, 1, 10**9]), "its config has backbone.blocks=[1, 1, 1, "
                   "1000000000], out of range (a list of 4 values, each a number in [1, 256])" + damaged),
        "repeated": (repeated_to(2**21), "tensor fc.weight of shape (2097152, 512) repeats the 4 bytes the file stores "
                     "for it; the file was crafted or damaged; use the original"),
    }
    files = {name: str(edited_checkpoint(base, tmp_path / f"{name}.pt", edit)) for name, (edit, _) in crafted.items()}
    script = textwrap.dedent(f"""
        import resource, sys
        import facetrain
        from facetrain.errors import ModelError
        sys.path.insert(0, {str(REPO / 'scripts')!r})
        import import_weights
        size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, size + 2**30))
        for path in {list(files.values())!r}:
            try:
                facetrain.load_backbone(path)
                print('loaded', path)
            except ModelError as exc:
                print('refused:', exc)
            print('import_weights exit', import_weights.main([path, '--output', path + '.imported.pt']))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = [line for name, (_, refusal) in crafted.items()
                for line in (f"refused: {files[name]}: {refusal}", "import_weights exit 2")]
    assert result.stdout.splitlines() == expected, result.stdout + result.stderr
    assert result.stderr.count("import_weights: error: ") == len(crafted) and "Traceback" not in result.stderr


def test_every_backbone_has_the_schema_its_builder_takes():
    """A file's backbone settings are checked by the schema whose fields are the builder's settings."""
    assert {name: backbone_schema(name).__name__ for name in ("r50", "mbf", "vit_t", "timm")} == {
        "r50": "IResNetConfig", "mbf": "MobileFaceNetConfig", "vit_t": "ViTConfig", "timm": "TimmConfig"}
    assert all(backbone_schema(name) in SCHEMAS["backbone"].values() for name in BACKBONES.names())


def test_files_that_are_no_weight_file_are_refused_in_one_line(base, tmp_path):
    for path, expected in not_weight_files(tmp_path, base).values():
        for load in (facetrain.load_backbone, read_layout):
            with pytest.raises(ModelError) as refused:
                load(path)
            message = str(refused.value)
            assert expected in message and "\n" not in message, (load, message)
            assert message.endswith("the file is truncated or not a weight file; download or copy it again"), message


def test_a_timm_checkpoint_loads_without_the_weights_it_started_from(tmp_path):
    """backbone.weights names where a timm run started (a file on the training machine): the checkpoint holds
    the trained weights, so evaluating it elsewhere neither needs nor reads that file."""
    write_checkpoint(tmp_path / "timm.pt", {"name": "timm", "model": "test_convnext", "dropout": 0.0}, embedding_size=16)
    trained = edited_checkpoint(tmp_path / "timm.pt", tmp_path / "trained.pt",
                                set_config("backbone", "weights", value=str(tmp_path / "elsewhere.safetensors")))
    original, loaded = facetrain.load_backbone(tmp_path / "timm.pt"), facetrain.load_backbone(trained)
    assert all(a.equal(b) for a, b in zip(original.state_dict().values(), loaded.state_dict().values()))
    assert read_layout(trained).layout.hparams == {"model": "test_convnext", "dropout": 0.0}
