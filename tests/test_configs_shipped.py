"""The run configs in configs/ and the recipes shipped in the package all validate, fit their
budget and survive the save/reload a run directory's config.yaml goes through; each report's
config and each recipe also trains two steps (a compute budget on a tiny synthetic set), so none
of them rots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import make_synthetic, write_npz

from budgetnet.config import RunConfig, dump_config, list_recipes, load_config, recipe_mapping
from budgetnet.errors import BudgetnetError
from budgetnet.models import count_params
from budgetnet.shape_planner import load_shape_table
from budgetnet.train.engine import train
from budgetnet.train.planner import mean_train_flops_per_image

CONFIGS = Path(__file__).parents[1] / "configs"
SEED_CONFIGS = sorted(CONFIGS.glob("seed00*.yaml"))


def test_seed_configs_are_found() -> None:
    assert [p.stem for p in SEED_CONFIGS] == [f"seed00{i}" for i in range(5)]


def assert_round_trips(cfg: RunConfig, tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    again = load_config(saved)
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: p.stem)
def test_seed_config_validates_and_fits_the_budget(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert not cfg.allow_over_budget and cfg.budget == 5_000_000
    params = count_params(cfg.model)
    assert params <= cfg.budget
    # The header comment quotes the parameter count of the seed's network.
    quoted = re.search(r"([\d,]{9}) params", path.read_text())
    assert quoted and int(quoted.group(1).replace(",", "")) == params
    # Every key in the file was used (nothing silently dropped or defaulted instead).
    raw = yaml.safe_load(path.read_text())
    dumped = cfg.model_dump(mode="json")
    for section, values in raw.items():
        if section == "model" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if not isinstance(value, dict):
                assert dumped[section][key] == (list(value) if isinstance(value, tuple) else value), (section, key)
    assert_round_trips(cfg, tmp_path)


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: p.stem)
def test_seed_config_with_cli_overrides(path: Path) -> None:
    base = load_config(path)
    cfg = load_config(path, {"data": {"path": "x.npz"}, "train": {"epochs": 1}, "optim": {"lr": 0.05}})
    assert (cfg.data.path, cfg.train.epochs, cfg.optim.lr) == ("x.npz", 1, 0.05)
    assert cfg.train.batch_size == base.train.batch_size and cfg.model == base.model
    assert cfg.optim.name == base.optim.name and cfg.schedule == base.schedule


def test_seed_specifics() -> None:
    seed001, seed003 = load_config(CONFIGS / "seed001.yaml"), load_config(CONFIGS / "seed003.yaml")
    assert seed001.train.early_stopping is not None and seed001.train.early_stopping.patience == 10
    assert seed001.schedule.name == "cosine_restarts" and seed001.schedule.restart_epochs == 100
    assert seed003.schedule.name == "plateau" and seed003.data.val_size == 10_000
    assert seed003.optim.nesterov and seed003.optim.momentum == 0.8


def test_recipes_are_listed() -> None:
    assert list_recipes() == ["cpu300", "flagship", "long"]


@pytest.mark.parametrize("name", ["flagship", "long"])
def test_recipe_validates_and_fits_the_budget(name: str, tmp_path: Path) -> None:
    cfg = load_config(recipe=name)
    assert cfg.name == name
    assert count_params(cfg.model) <= cfg.budget == 5_000_000
    # Muon recipes decay BN shifts as airbench does (a per-step fraction); SGD recipes exempt them.
    assert (cfg.optim.name == "muon" or cfg.optim.no_decay_bn_bias) and cfg.train.tta
    assert cfg.data.path is None  # a recipe never names data: --data does
    assert set(recipe_mapping(name)) <= set(RunConfig.model_fields)
    assert_round_trips(cfg, tmp_path)


@pytest.mark.parametrize(("name", "most_pflop"), [("flagship", 0.25), ("long", 2.0)])
def test_recipe_trains_within_its_compute_target(name: str, most_pflop: float) -> None:
    """On the validation protocol (45,000 training images, whole batches) a recipe's planned
    training compute, 3 x forward FLOPs x images, stays inside the compute its accuracy target
    is set at: its epochs' steps, or the fewer its own compute cap pays for."""
    cfg = load_config(recipe=name)
    batch = cfg.train.batch_size
    steps = cfg.train.epochs * (45_000 // batch)
    per_step = 3 * mean_train_flops_per_image(cfg) * batch / 1e15  # progressive stages at their sizes
    if cfg.train.pflop_budget is not None:
        steps = min(steps, int(cfg.train.pflop_budget / per_step))
    assert most_pflop * 0.75 < steps * per_step <= most_pflop, steps * per_step


DOCS_YAML = sorted((CONFIGS.parent / "docs" / "results").rglob("*.yaml"))
SHAPE_TABLES = [p for p in DOCS_YAML if "shapes" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", [p for p in DOCS_YAML if p not in SHAPE_TABLES], ids=lambda p: p.parent.name)
def test_run_configs_kept_in_docs_still_load(path: Path) -> None:
    """The configs of the runs the results quote, written when one model held every optimizer's
    and schedule's settings (the oldest before Muon's existed), load as the same runs: what they
    set is kept, and settings added since take the defaults that reproduce them (Muon's 5
    Newton-Schulz iterations)."""
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    for section in ("optim", "schedule"):
        kept = cfg.model_dump(mode="json")[section]
        assert {k: kept[k] for k in raw[section] if k in kept} == {k: v for k, v in raw[section].items() if k in kept}
        added = {k: v for k, v in kept.items() if k not in raw[section]}
        assert added in ({}, {"muon_ns_steps": 5}), (section, added)


@pytest.mark.parametrize("path", SHAPE_TABLES, ids=lambda p: p.name)
def test_shape_tables_kept_in_docs_still_load(path: Path) -> None:
    """Shape tables the results quote (the one an earlier sweep planned with) still load."""
    assert load_shape_table(str(path)).shapes


def test_flagship_is_the_default() -> None:
    assert load_config() == load_config(recipe="flagship")


def test_a_config_file_over_a_recipe(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0.05}, "train": {"epochs": 3}}))
    over_recipe = load_config(path, recipe="long")
    assert (over_recipe.optim.lr, over_recipe.train.epochs) == (0.05, 3)
    assert over_recipe.optim.nesterov and over_recipe.model == load_config(recipe="long").model
    standalone = load_config(path)  # a file on its own: pydantic defaults, not the recipe's
    assert standalone.optim.lr == 0.05 and not standalone.optim.nesterov and standalone.train.label_smoothing == 0


def test_empty_config_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == RunConfig()


def test_unknown_recipe() -> None:
    with pytest.raises(BudgetnetError, match="unknown recipe 'turbo'; choose one of: cpu300, flagship, long"):
        load_config(recipe="turbo")


@pytest.mark.parametrize("path", [*SEED_CONFIGS, *list_recipes()], ids=lambda p: getattr(p, "stem", p))
def test_every_report_config_and_recipe_trains_two_steps(path: Path | str, tmp_path: Path) -> None:
    """The config as written (model, optimizer, schedule, augmentation), on 3-class 32x32
    synthetic images in batches of 8, with a compute budget that pays for two steps."""
    data = write_npz(tmp_path / "tiny.npz", make_synthetic({"train": 16, "test": 2}, seed=1))
    over = {"data": {"path": str(data), "val_size": 6}, "model": {"classes": 3},
            "train": {"batch_size": 8, "micro_batch": None, "threads": 1, "time_budget_s": None, "tta": False}}
    cfg = load_config(path, over) if isinstance(path, Path) else load_config(overrides=over, recipe=path)
    per_step = 3 * mean_train_flops_per_image(cfg) * 8 / 1e15  # two steps: one of them cropped, where the recipe crops
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"pflop_budget": 2.5 * per_step})})
    s = train(cfg, tmp_path / "run", quiet=True).summary
    assert s["steps_run"] == 2 and s["train_pflop"] == pytest.approx(2 * per_step)
