"""The package's layering: every import (module level or inside a function) runs from a higher layer to a lower
one, or stays inside its own package. The order is written once, here."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facetrain"

# Bottom to top. A module may import its own package (the first two dotted parts: ``facetrain.runs``) and any
# package of a lower layer; never a higher one, never a sibling of its own layer.
LAYERS: list[set[str]] = [
    {"facetrain.errors"},  # FacetrainError: a problem and its fix
    {"facetrain.registry", "facetrain.precision", "facetrain.files", "facetrain.untrusted",
     "facetrain.cpu_memory", "facetrain.cores", "facetrain.plural"},  # helpers everyone uses
    {"facetrain.config"},  # schemas, every key's rule, Hydra plugins as facetrain configures them
    {"facetrain.parallel"},  # process groups, collectives, shards, synchronised batch norm
    {"facetrain.backbones", "facetrain.heads", "facetrain.data", "facetrain.runs"},
    {"facetrain.align", "facetrain.weights",  # raw photos to crops (reads images); the field's weight files
     "facetrain.inference_onnx"},  # ONNX recognition models run by onnxruntime as backbones
    {"facetrain.inference"},  # a trained backbone from a checkpoint or weight file
    {"facetrain.eval", "facetrain.engine", "facetrain.sweeps",  # evaluation; the training loop; many runs
     "facetrain.distill"},  # teachers and distillation losses (handed to the loop as a loss term)
    {"facetrain.curation"},  # cleaning a training set (embeds it with eval's code, so above eval)
    {"facetrain.train", "facetrain.cli", "facetrain.export"},  # entry points
    {"facetrain.benchmarks",  # the measurements behind BENCHMARKS.md (they build trainers)
     "facetrain.docs_figures"},  # the figures of README.md and docs/ (they start train.py, draw the heads)
]
LAYER_OF = {unit: layer for layer, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``facetrain.runs.checkpoint`` -> ``facetrain.runs``; a top-level module is its own unit."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every facetrain import in the file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names[:1] if name.startswith("facetrain")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("facetrain")]
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        if importer == "facetrain":
            continue  # the package's own __init__ re-exports the public API
        unit = unit_of(importer)
        for line, imported in imported_modules(path):
            target = unit_of(imported)
            if target == unit or target == "facetrain":
                continue
            if target not in LAYER_OF:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {imported} is in no layer of LAYERS")
            elif LAYER_OF[target] >= LAYER_OF[unit]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {unit} (layer {LAYER_OF[unit]}) imports "
                                f"{imported} (layer {LAYER_OF[target]})")
    return problems


def test_every_package_and_module_has_a_layer():
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py")} - {"facetrain"}
    assert sorted(units - set(LAYER_OF)) == [], "add these to LAYERS in tests/test_layering.py"


def test_imports_run_from_higher_layers_to_lower_ones():
    assert violations() == []


def test_every_package_directory_is_a_package():
    """setuptools' find_packages (pyproject: include facetrain*) skips a folder without __init__.py: an installed
    (not editable) facetrain would lack it."""
    folders = {path.parent for path in PACKAGE.rglob("*.py")}
    assert sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file()) == []
