"""Only code the user chose runs (onebit.user_code): a recipe imports its modules from its own
folder; a run directory or a checkpoint imports nothing unless the user allows the modules it
names (--import, imports=), and the refusal is one line; a .onebit graph file is the network
and imports nothing at all (a format-1 file, whose header named modules, is refused unread)."""

import sys
from pathlib import Path

import pytest

import onebit
from conftest import onebit_cli, write_format_1
from onebit.cli import main
from onebit.config import load_config
from onebit.data import data_config, dataset_input_spec
from onebit.deploy.graph import graph_bytes, read_graph
from onebit.errors import ConfigError, ImportNotAllowedError
from onebit.train import RunDir, Trainer, load_model

ROOT = Path(__file__).resolve().parent.parent
RECU = ROOT / "configs/fmnist/resnet20_recu.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = [
    "data.subset=64",
    "data.batch_size=32",
    "data.eval_subset=32",
    "runtime.device=cpu",
    "runtime.compile=false",
    "schedule.epochs=1",
]
ZEN = "Beautiful is better than ugly"
# the module beside a model file: it leaves a mark when it runs
HELPER = "from pathlib import Path\nPath(__file__).with_name('marker').write_text('ran')\n"


def model_file(folder: Path, imports: list[str]) -> Path:
    """A Fashion-MNIST ResNet-20 exported to FOLDER/m.onebit (a graph file), its meta JSON
    naming ``imports`` as a file from elsewhere might (export itself stores none)."""
    model = onebit.create_model("resnet20", in_chans=1, num_classes=10)
    spec = dataset_input_spec(data_config({"dataset": "fashion_mnist"}))
    path = folder / "m.onebit"
    meta = onebit.deploy.export(model, path, input_spec=spec, imports=imports)
    assert "imports" not in meta
    nodes, tensors, record, meta = read_graph(path.read_bytes(), str(path))
    meta = {k: v for k, v in meta.items() if k not in ("nodes", "tensors")}
    path.write_bytes(graph_bytes(nodes, dict(tensors), record, {**meta, "imports": imports}))
    assert read_graph(path.read_bytes(), str(path))[3]["imports"] == imports
    return path


def assert_refused(done, source: str, module: str) -> None:
    """Nothing but the one-line refusal, naming the file, the module and the flag."""
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onebit: error: ")
    assert f"{source} asks to import {module}: " in lines[0]
    assert f"pass --import {module} if you trust it" in lines[0]


@pytest.mark.parametrize("module", ["this", "helper"])
def test_a_format_1_file_naming_a_module_only_says_to_export_again(module, tmp_path):
    """A format-1 file's header named modules that its loader imported; such a file is now
    refused before anything is read from it: one line, nothing imported."""
    (tmp_path / "helper.py").write_text(HELPER)
    write_format_1(tmp_path / "m.onebit", imports=[module])
    done = onebit_cli(tmp_path, "eval", "m.onebit")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "onebit: error: m.onebit: a format-1 .onebit file (safetensors, from an older onebit); "
        "this onebit runs graph files (format 2): export the model again with "
        "`onebit export RUN FILE`\n"
    )
    assert ZEN not in done.stdout + done.stderr
    assert not (tmp_path / "marker").exists()


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Fashion-MNIST test files")
@pytest.mark.parametrize("module", ["this", "helper"])
def test_a_graph_file_imports_nothing_its_meta_names(module, tmp_path):
    """The file is the network: loading it imports nothing, whatever its meta JSON says."""
    (tmp_path / "helper.py").write_text(HELPER)
    model_file(tmp_path, [module])
    done = onebit_cli(tmp_path, "eval", "m.onebit", "--set", "data.eval_subset=32")
    assert done.returncode == 0, done.stderr
    assert "val_top1" in done.stdout and done.stderr == ""
    assert ZEN not in done.stdout + done.stderr
    assert not (tmp_path / "marker").exists()


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Fashion-MNIST test files")
def test_a_model_file_runs_the_module_the_user_allows(tmp_path):
    (tmp_path / "helper.py").write_text(HELPER)
    model_file(tmp_path, ["helper"])
    done = onebit_cli(
        tmp_path, "eval", "m.onebit", "--import", "helper", "--set", "data.eval_subset=32"
    )
    assert done.returncode == 0, done.stderr
    assert "val_top1" in done.stdout and (tmp_path / "marker").read_text() == "ran"


def test_from_python_load_imports_only_what_the_caller_names(tmp_path, monkeypatch):
    (tmp_path / "trust_helper_py.py").write_text(HELPER)
    path = model_file(tmp_path, ["trust_helper_py"])
    monkeypatch.syspath_prepend(str(tmp_path))  # importable: only the file's naming it is not
    deployed = onebit.deploy.load(path)  # the meta's imports are ignored
    assert deployed.meta["imports"] == ["trust_helper_py"]
    assert "trust_helper_py" not in sys.modules and not (tmp_path / "marker").exists()
    with pytest.raises(ConfigError, match="expected a list of module names, got 'trust_"):
        onebit.deploy.load(path, imports="trust_helper_py")  # not t, r, u, s, ...
    assert not (tmp_path / "marker").exists()
    try:
        onebit.deploy.load(path, imports=["trust_helper_py"])
        assert (tmp_path / "marker").read_text() == "ran"
        (tmp_path / "marker").unlink()
        onebit.deploy.load(path, imports=["trust_helper_py"])  # imported already: no code runs
        assert not (tmp_path / "marker").exists()
    finally:
        sys.modules.pop("trust_helper_py")


def test_a_recipe_imports_from_its_own_folder_never_the_working_directory(tmp_path, monkeypatch):
    recipes, here = tmp_path / "recipes", tmp_path / "here"
    recipes.mkdir()
    here.mkdir()
    (recipes / "trust_recipe_mod.py").write_text("VALUE = 1\n")
    (recipes / "a.yaml").write_text("imports: [trust_recipe_mod]\nmodel: {name: resnet20}\n")
    monkeypatch.chdir(here)
    path = list(sys.path)
    try:
        assert load_config(recipes / "a.yaml").imports == ["trust_recipe_mod"]
        assert sys.modules["trust_recipe_mod"].VALUE == 1
    finally:
        sys.modules.pop("trust_recipe_mod", None)
    assert sys.path == path  # the recipe's folder was searched while importing, then left
    # a module in the working directory, not beside the recipe, is not found
    (here / "trust_cwd_mod.py").write_text(HELPER)
    (recipes / "b.yaml").write_text("imports: [trust_cwd_mod]\nmodel: {name: resnet20}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: cannot import 'trust_cwd_mod'"):
        load_config(recipes / "b.yaml")
    done = onebit_cli(here, "train", "../recipes/b.yaml")  # also by `python -m onebit`
    assert done.returncode == 2 and "cannot import 'trust_cwd_mod'" in done.stderr
    assert not (here / "marker").exists()


def test_summary_and_ops_take_the_users_module(tmp_path, capsys, monkeypatch):
    (tmp_path / "trust_method_mod.py").write_text(
        "import onebit\nonebit.register_method('trust_m', 'recu', 'recu', 'hardtanh', 'test')\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["summary", "resnet20", "--method", "trust_m"]
    assert main(argv) == 2 and "unknown method 'trust_m'" in capsys.readouterr().err
    try:
        assert main([*argv, "--import", "trust_method_mod"]) == 0
        assert main(["ops", "resnet20", "--method", "trust_m"]) == 0
    finally:
        sys.modules.pop("trust_method_mod")
        onebit.quant.unregister_method("trust_m")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """FOLDER/recipe.yaml, naming FOLDER/trust_run_mod.py (a method of the user's), trained one
    tiny epoch into FOLDER/run; the module is not imported afterwards, as in a new process."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "trust_run_mod.py").write_text(
        "import onebit\nonebit.register_method('trust_recu', 'recu', 'recu', 'hardtanh', 'x')\n"
    )
    recipe = folder / "recipe.yaml"
    recipe.write_text("imports: [trust_run_mod]\n" + RECU.read_text())
    config = load_config(recipe, [*TINY, "model.method=trust_recu"])
    Trainer(config, RunDir(folder / "run")).fit()
    sys.modules.pop("trust_run_mod")
    return folder


def test_a_run_directory_imports_nothing_unless_allowed(project, capsys, monkeypatch):
    run = project / "run"
    done = onebit_cli(project, "export", "run", "m.onebit", "--no-recalibrate")
    assert_refused(done, "run/best.safetensors", "trust_run_mod")
    assert not (project / "m.onebit").exists()
    done = onebit_cli(
        project, "export", "run", "m.onebit", "--no-recalibrate", "--import", "trust_run_mod"
    )
    assert done.returncode == 0, done.stderr
    # resuming with the recipe: the user named it, so its imports count
    sets = [arg for item in [*TINY, "model.method=trust_recu"] for arg in ("--set", item)]
    done = onebit_cli(project, "train", "recipe.yaml", *sets, "--out", "run", "--resume")
    assert done.returncode == 0, done.stderr
    # in this process: onebit report, load_model
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run}/config.yaml asks to import trust_run_mod" in err
    with pytest.raises(ImportNotAllowedError, match=r"best\.safetensors asks to import"):
        load_model(run)
    monkeypatch.chdir(project)
    try:
        assert main(["report", str(run), "--import", "trust_run_mod"]) == 0
        _, config = load_model(run)
        assert config.model["method"] == "trust_recu"
    finally:
        sys.modules.pop("trust_run_mod")
        onebit.quant.unregister_method("trust_recu")
    monkeypatch.syspath_prepend(str(project))
    try:
        load_model(run, imports=["trust_run_mod"])
    finally:
        sys.modules.pop("trust_run_mod")
        onebit.quant.unregister_method("trust_recu")
