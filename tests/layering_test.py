"""The package's layers, read from the source (`ast`), nothing imported.

- the run modes (`bertkd_tf/runs/*.py`) never import one another: what two
  of them share lives in a lower layer (`bertkd_tf/artifacts.py`,
  `models/`, `training/`, `data/`, ...);
- only the runs and `bertkd_tf/main.py` import `bertkd_tf.runs`;
- each name of the work directory's layout, of the teacher-target
  format, of the circular masks and of the search machinery
  (`IncrementalDecoder`, `SearchSettings`, `decode_student`, the search
  loop's helpers, the student protocol) is defined (assigned or def'd) in
  exactly one module; the others import it;
- `bertkd_tf/layers/` (the CPU fast paths) is the lowest layer: it imports
  nothing else from the package;
- `bertkd_tf/decoding/` owns the search: it imports nothing from
  `models/`, `training/`, `export/` or the runs (students implement its
  `SearchableStudent` protocol; the search never names a model class).

Every `import` counts, including those inside functions. The package read
is `$BERTKD_LAYERING_ROOT/bertkd_tf` when that is set (e.g. an older tree
unpacked with `git archive HEAD | tar -x -C /tmp/old`), else this
checkout's.
"""

import ast
import os

import pytest

ROOT = os.environ.get("BERTKD_LAYERING_ROOT") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)
PACKAGE = "bertkd_tf"
RUNS = f"{PACKAGE}.runs"
# Names with one home (`bertkd_tf.artifacts`, `bertkd_tf.data.teacher_targets`,
# `bertkd_tf.models.circular_masks`, the search in `bertkd_tf.decoding`,
# the student protocol).
SINGLE_HOME = (
    "VOCAB_DIR",
    "TEACHER_DIR",
    "TARGETS_DIR",
    "STUDENT_DIR",
    "BASELINE_DIR",
    "FINAL_WEIGHTS",
    "TEACHER_CONFIG",
    "STUDENT_CONFIG",
    "load_vocabulary",
    "load_teacher",
    "save_teacher",
    "teacher_fingerprint",
    "load_student",
    "save_student",
    "student_from_config",
    "MANIFEST_FILE",
    "FORMAT_VERSION",
    "shard_name",
    "serialize_targets",
    "circular_mask_slots",
    "masked_copies",
    "make_top_k_fn",
    "IncrementalDecoder",
    "incremental_next_token",
    "PREFIX_PHASE",
    "SearchSettings",
    "decode_student",
    "NextToken",
    "SearchableStudent",
    "check_searchable",
    "recomputing_next_token",
    "TiedOutputStudent",
    "KDStudent",
    "fusable_output_embedding",
    "auto_search_shards",
    "check_search_shards",
    "MIN_SHARD_ROWS",
    "write_column",
    "keep_shapes",
    "call_next_fn",
    "phased_while_loop",
    "doubling_prefix_lengths",
    "decode_lengths",
    "check_prefix_lengths",
    "search_limits",
)
# Where some of them must live (the owner, not just one place).
HOMES = {
    "IncrementalDecoder": f"{PACKAGE}.decoding.incremental_decoder",
    "SearchSettings": f"{PACKAGE}.decoding.search_settings",
    "decode_student": f"{PACKAGE}.decoding.decode",
    "SearchableStudent": f"{PACKAGE}.decoding.next_token",
    "TiedOutputStudent": f"{PACKAGE}.models.student",
    "phased_while_loop": f"{PACKAGE}.decoding.search_loop",
}
DECODING = f"{PACKAGE}.decoding"
# What the search may not import: it serves any student.
NOT_BELOW_DECODING = tuple(
    f"{PACKAGE}.{name}" for name in ("models", "training", "export", "runs")
)


def _modules():
    """`{module name: parsed source}` of every module of the package."""
    modules = {}
    base = os.path.join(ROOT, PACKAGE)
    for directory, _, files in os.walk(base):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            with open(path, encoding="utf-8") as f:
                modules[".".join(parts)] = (
                    ast.parse(f.read(), filename=path),
                    name == "__init__.py",
                )
    return modules


MODULES = _modules()


def _imports(module, tree, is_package):
    """The package modules `module` imports (`ast.walk`: function-level
    imports too), as `(line, imported module)`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # Relative: resolve against the package.
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                source = ".".join(
                    anchor + ([node.module] if node.module else [])
                )
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import module` imports pkg.module.
                candidate = f"{source}.{alias.name}"
                found.append(
                    (node.lineno, candidate if candidate in MODULES else source)
                )
    return [
        (line, name)
        for line, name in found
        if name == PACKAGE or name.startswith(PACKAGE + ".")
    ]


def _is_under(name, package):
    return name == package or name.startswith(package + ".")


def test_reads_the_package():
    assert f"{RUNS}.distill" in MODULES, ROOT
    assert f"{PACKAGE}.main" in MODULES


def test_runs_do_not_import_each_other():
    offending = [
        f"{module}:{line} imports {name}"
        for module, (tree, is_package) in sorted(MODULES.items())
        if _is_under(module, RUNS) and module != RUNS
        for line, name in _imports(module, tree, is_package)
        if _is_under(name, RUNS) and name != module
    ]
    assert not offending, (
        "A run imports another run; move what they share into a lower "
        "layer (bertkd_tf/artifacts.py, models/, training/, data/):\n"
        + "\n".join(offending)
    )


def test_only_runs_and_main_import_runs():
    offending = [
        f"{module}:{line} imports {name}"
        for module, (tree, is_package) in sorted(MODULES.items())
        if not _is_under(module, RUNS) and module != f"{PACKAGE}.main"
        for line, name in _imports(module, tree, is_package)
        if _is_under(name, RUNS)
    ]
    assert not offending, (
        "Only bertkd_tf/runs/ and bertkd_tf/main.py may import "
        "bertkd_tf.runs:\n" + "\n".join(offending)
    )


def _definitions(tree):
    """Names a module assigns or defines at module level (inside `if`,
    `try`, `with` blocks too, not inside functions or classes)."""
    names = set()

    def visit(statements):
        for node in statements:
            if isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                )
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            names.add(leaf.id)
            for field in ("body", "orelse", "finalbody", "handlers"):
                if not isinstance(
                    node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                ):
                    visit(getattr(node, field, []) or [])

    visit(tree.body)
    return names


@pytest.mark.parametrize("name", SINGLE_HOME)
def test_defined_in_exactly_one_module(name):
    homes = sorted(
        module
        for module, (tree, _) in MODULES.items()
        if name in _definitions(tree)
    )
    assert len(homes) == 1, (
        f"{name} must be defined in exactly one module (the others import "
        f"it); defined in: {homes or 'none'}"
    )


def test_layers_package_imports_only_itself():
    layers = f"{PACKAGE}.layers"
    offending = [
        f"{module}:{line} imports {name}"
        for module, (tree, is_package) in sorted(MODULES.items())
        if _is_under(module, layers)
        for line, name in _imports(module, tree, is_package)
        if not _is_under(name, layers)
    ]
    assert f"{layers}.fast_layers" in MODULES, ROOT
    assert not offending, (
        "bertkd_tf/layers/ is the lowest layer (keras layers only); it may "
        "not import the rest of bertkd_tf:\n" + "\n".join(offending)
    )


@pytest.mark.parametrize("name", sorted(HOMES))
def test_search_names_live_in_their_home(name):
    homes = sorted(
        module
        for module, (tree, _) in MODULES.items()
        if name in _definitions(tree)
    )
    assert homes == [HOMES[name]], (
        f"{name} belongs in {HOMES[name]}; defined in: {homes or 'none'}"
    )


def test_decoding_imports_no_model_training_or_run():
    offending = [
        f"{module}:{line} imports {name}"
        for module, (tree, is_package) in sorted(MODULES.items())
        if _is_under(module, DECODING)
        for line, name in _imports(module, tree, is_package)
        if any(_is_under(name, other) for other in NOT_BELOW_DECODING)
    ]
    assert not offending, (
        "bertkd_tf/decoding/ searches any SearchableStudent and must not "
        "import models, training, export or runs:\n" + "\n".join(offending)
    )


def test_no_module_imports_the_old_incremental_decoder_path():
    old = f"{PACKAGE}.models.incremental_decoder"
    assert old not in MODULES
    offending = [
        f"{module}:{line}"
        for module, (tree, is_package) in sorted(MODULES.items())
        for line, name in _imports(module, tree, is_package)
        if name == old
    ]
    assert not offending, offending


# The layer order of docs/ARCHITECTURE.md, lowest first: a module imports
# only from its own rank or below.
RANKS = (
    (
        "errors",
        "atomic_files",
        "checksums",
        "locking",
        "settings",
        "keras_compat",
        "durations",
        "operative_config",
        "plots",
        "layers",
        "losses",
        "metrics",
    ),
    ("data", "models", "training", "decoding", "export"),
    ("artifacts",),
    ("runs", "main"),
)


def _rank(name):
    """Rank of a `bertkd_tf.*` module (None: the package itself)."""
    parts = name.split(".")
    if len(parts) < 2:
        return None
    for rank, tops in enumerate(RANKS):
        if parts[1] in tops:
            return rank
    raise AssertionError(f"{name}: not in any rank of RANKS; add it there")


def test_no_module_imports_a_higher_layer():
    offending = []
    for module, (tree, is_package) in sorted(MODULES.items()):
        own = _rank(module)
        for line, name in _imports(module, tree, is_package):
            if not _is_under(name, PACKAGE):
                continue
            other = _rank(name)
            if own is not None and other is not None and other > own:
                offending.append(f"{module}:{line} imports {name}")
    assert not offending, (
        "A module imports a module of a higher layer (order, lowest first: "
        + " < ".join("/".join(r) for r in RANKS)
        + "):\n"
        + "\n".join(offending)
    )


# Within the middle layer: `training/` builds on `models/` (the student
# protocol), `models/` and `export/` on `decoding/`, all on `data/`;
# never the reverse.
MIDDLE_ORDER = ("data", "decoding", "models", "training", "export")


def test_middle_layer_has_no_cycles():
    offending = []
    for module, (tree, is_package) in sorted(MODULES.items()):
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in MIDDLE_ORDER:
            continue
        own = MIDDLE_ORDER.index(parts[1])
        for line, name in _imports(module, tree, is_package):
            other = name.split(".")
            if (
                len(other) > 1
                and other[0] == PACKAGE
                and other[1] in MIDDLE_ORDER
                and MIDDLE_ORDER.index(other[1]) > own
            ):
                offending.append(f"{module}:{line} imports {name}")
    assert not offending, (
        "Order of the middle layer, lowest first: "
        + " < ".join(MIDDLE_ORDER)
        + "; these imports go upwards:\n"
        + "\n".join(offending)
    )
