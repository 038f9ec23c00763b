"""The import rules of docs/architecture.md, read from every module's source (imports inside
functions included)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("ttsr_jax", "data_pipeline")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
  paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
  return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(paths)}


def _imports(tree: ast.Module) -> set[str]:
  """Absolute names imported: `from a.b import c` gives a.b.c (a module or a name in a.b)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def _is_command(tree: ast.Module) -> bool:
  """A module run as `python -m`: it has an `if __name__ == "__main__":` block."""
  return any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
             and "__main__" in ast.unparse(node.test) for node in tree.body)


def _within(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


MODULES = _modules()
COMMANDS = {name for name, tree in MODULES.items() if _is_command(tree)}
IMPORTS = {name: _imports(tree) for name, tree in MODULES.items()}


def test_the_scan_sees_the_modules_and_commands():
  assert {"ttsr_jax.infer", "ttsr_jax.make_pairs", "data_pipeline.prepare"} <= COMMANDS
  assert "ttsr_jax.step" in MODULES and "ttsr_jax.step" not in COMMANDS
  assert "ttsr_jax.checkpoint" in IMPORTS["ttsr_jax.train"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, "data_pipeline")))
def test_data_pipeline_never_imports_ttsr_jax(module):
  assert not [name for name in IMPORTS[module] if _within(name, "ttsr_jax")]


@pytest.mark.parametrize("module", sorted(
    m for m in MODULES if _within(m, "ttsr_jax.models") or _within(m, "ttsr_jax.ops")))
def test_models_and_ops_import_only_models_and_ops(module):
  ours = [name for name in IMPORTS[module] if any(_within(name, p) for p in PACKAGES)]
  assert all(_within(n, "ttsr_jax.models") or _within(n, "ttsr_jax.ops") for n in ours), ours


@pytest.mark.parametrize("module", sorted(set(MODULES) - COMMANDS))
def test_libraries_import_neither_commands_nor_configs(module):
  # Nor ml_collections: a library takes specs or plain values, never the ConfigDict.
  wrong = [name for name in IMPORTS[module]
           if any(_within(name, p) for p in ("configs", "ml_collections", *COMMANDS))]
  assert not wrong
