"""Compose the real Hydra configs (LHT style): broken YAML fails here, not in a user's run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bench.registry import METHODS, PROTOCOLS, SUITES

CONF = Path(__file__).resolve().parent.parent / "conf"


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("method", METHODS.names())
def test_method_config_builds(method):
    cfg = _compose([f"method={method}", "budget=quick"])
    cls = METHODS.get(method)
    cls.make_config(OmegaConf.to_container(cfg.method.config))
    from bench.engine import schedule_config

    schedule_config(OmegaConf.to_container(cfg.method.train), 100, 2)


@pytest.mark.parametrize("method", ["dino", "ace", "mae"])
def test_2d_recipes_scale_their_lr_by_batch_over_256(method):
    """DINO's main_dino.py: lr = args.lr * batch_size_per_gpu * world_size / 256; MAE's main_pretrain.py:
    lr = blr * eff_batch_size / 256 (eff = batch * accum_iter * world); min_lr is not scaled in either."""
    from bench.engine import schedule_config

    train = OmegaConf.to_container(_compose([f"method={method}", "budget=quick"]).method.train)
    base = train["lr"]
    assert schedule_config(train, 200, 16).lr == pytest.approx(base * 16 / 256)
    assert schedule_config(train | {"accumulate": 4}, 200, 16).lr == pytest.approx(base * 64 / 256)
    assert schedule_config(train, 200, 256).lr == pytest.approx(base)
    assert schedule_config(train, 200, 16).min_lr == train.get("min_lr", 0.0)
    assert schedule_config(train, 200, 16).warmup_steps == int(train["warmup_fraction"] * 200)
    with pytest.raises(ValueError, match="lr_reference_batch"):
        schedule_config(train | {"lr_reference_batch": 0}, 200, 16)


def test_3d_recipes_take_lr_as_given():
    from bench.engine import schedule_config

    for method in ("simmim3d", "swinunetr_ssl", "asa", "saca"):
        train = OmegaConf.to_container(_compose([f"method={method}", "budget=quick"]).method.train)
        assert schedule_config(train, 200, 2).lr == train["lr"], method


@pytest.mark.parametrize("protocol", PROTOCOLS.names())
def test_protocol_config_builds(protocol):
    from bench.protocols.base import ProtocolFamily, protocol_values

    cfg = _compose([f"protocol={protocol}"])
    assert cfg.protocol == protocol
    values = OmegaConf.to_container(cfg.protocols[protocol])
    entry = PROTOCOLS.get(protocol)
    members = entry.members if isinstance(entry, ProtocolFamily) else {k: entry for k in entry.kinds}
    assert members, f"protocol {protocol} serves no task kind"
    for kind, cls in members.items():
        section = protocol_values(values, kind)
        assert section or not dataclasses.fields(cls.Config), f"conf/protocols/{protocol}.yaml has no {kind} section"
        cls.make_config(section)


@pytest.mark.parametrize("budget", sorted(p.stem for p in (CONF / "budget").glob("*.yaml")))
@pytest.mark.parametrize("suite", SUITES.names())
def test_plan_resolves(budget, suite, tmp_path):
    from bench.registry import DATASETS
    from bench.runner import make_plan, pretrain_identity, split_hash

    dims = DATASETS.get(SUITES.get(suite).pretrain_dataset).info.spatial_dims
    method = _method_for(dims)
    cfg = _compose([f"budget={budget}", f"suite={suite}", f"method={method}", f"runs_dir={tmp_path}"])
    plan = make_plan(cfg)
    assert all(r % 32 == 0 for r in plan.roi)
    assert plan.backbone == (cfg.budget.backbone if plan.spatial_dims == 3 else cfg.budget.backbone_2d).name
    pretrain_identity(plan)  # every suite's corpus resolves to a committed split file
    for task in plan.suite.tasks:
        split_hash(task.dataset)


def _method_for(dims: int) -> str:
    """A method of the given dimensionality (the default simmim3d is 3D only)."""
    return "simmim3d" if dims == 3 else next(m for m in METHODS.names() if "2d" in METHODS.tags(m))


def _suite_for(method: str) -> str:
    """A suite whose data the method can take (2D-only methods need a 2D suite)."""
    from bench.registry import DATASETS

    tags = METHODS.tags(method)
    want = 2 if "2d" in tags and "3d" not in tags else 3
    return next(
        s for s in ["smoke", *SUITES.names()] if DATASETS.get(SUITES.get(s).pretrain_dataset).info.spatial_dims == want
    )


@pytest.mark.parametrize("method", METHODS.names())
def test_plan_resolves_for_every_method(method, tmp_path):
    from bench.runner import make_plan

    plan = make_plan(_compose([f"method={method}", f"suite={_suite_for(method)}", f"runs_dir={tmp_path}"]))
    assert plan.method == method and isinstance(plan.method_cfg, dict) and isinstance(plan.method_train, dict)


def test_unknown_method_option_is_an_error_naming_valid_ones():
    with pytest.raises(ValueError, match="mask_ratio"):
        METHODS.get("simmim3d").make_config({"mask_ration": 0.4})


def test_struct_mode_rejects_typos():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="budgett"):
        _compose(["budgett=quick"])


def test_method_budget_config_applies_unless_the_user_set_the_option(tmp_path):
    """conf/method_budget/asa_paper.yaml is Hydra's specialising config for method=asa budget=paper: it applies at
    that budget only, and a command-line override wins even when it names the method YAML's own default."""
    from bench.plan import make_plan

    quick = make_plan(_compose(["method=asa", "budget=quick", f"runs_dir={tmp_path}"]))
    paper = make_plan(_compose(["method=asa", "budget=paper", f"runs_dir={tmp_path}"]))
    mine = make_plan(_compose(["method=asa", "budget=paper", "method.config.roi=[96,96,96]", f"runs_dir={tmp_path}"]))
    back = make_plan(
        _compose(["method=asa", "budget=quick", "method.config.ema_momentum=0.999", f"runs_dir={tmp_path}"])
    )
    assert quick.method_cfg["roi"] is None and quick.method_cfg["ema_momentum"] == 0.99
    assert paper.method_cfg["roi"] == [128, 128, 128]  # ASA's paper geometry
    assert paper.method_cfg["ema_momentum"] == 0.999  # the quick block stays at quick
    assert mine.method_cfg["roi"] == [96, 96, 96]
    assert back.method_cfg["ema_momentum"] == 0.999  # the YAML's default, asked for explicitly


def test_every_specialising_config_names_a_real_method_budget_and_option():
    """A misspelt file name would never apply (Hydra's `optional`): each stem must be <method>_<budget> of
    registered names, and each key an option of that method's config (``# @package method.config``), of its
    training recipe (``# @package method.train``), of both or of the budget's own keys (``# @package _global_``), or
    of a protocol's kind."""
    from bench.engine import TrainConfig

    budgets = {p.stem for p in (CONF / "budget").glob("*.yaml")}
    train_keys = set(TrainConfig.__dataclass_fields__) | {"warmup_fraction", "lr_reference_batch"}
    for p in (CONF / "method_budget").glob("*.yaml"):
        method, budget = next(
            (m, p.stem[len(m) + 1 :])
            for m in sorted(METHODS.names(), key=len, reverse=True)
            if p.stem.startswith(m + "_")
        )
        assert budget in budgets, p
        package = p.read_text().splitlines()[0].removeprefix("# @package ").strip()
        fields = {f.name for f in dataclasses.fields(METHODS.get(method).Config)}
        if package == "_global_":  # a block that also sets its budget's values (asa_paper.yaml: the code's batch)
            values = OmegaConf.to_container(OmegaConf.load(p))
            known = OmegaConf.to_container(OmegaConf.load(CONF / "budget" / f"{budget}.yaml"))
            assert set(values) <= {"method", "budget"} and set(values.get("method", {})) <= {"config", "train"}, p
            assert set(values.get("method", {}).get("config", {})) <= fields, p
            assert set(values.get("method", {}).get("train", {})) <= train_keys, p
            for key, value in values.get("budget", {}).items():
                assert key in known and (not isinstance(value, dict) or set(value) <= set(known[key])), p
            continue
        assert package in ("method.config", "method.train"), p
        assert set(OmegaConf.load(p)) <= (fields if package == "method.config" else train_keys), p
    for p in (CONF / "protocol_budget").glob("*.yaml"):
        assert p.stem in budgets, p
        for name, kinds in OmegaConf.to_container(OmegaConf.load(p)).items():
            from bench.protocols.base import resolve_protocol

            for kind, values in kinds.items():
                resolve_protocol(name, kind).make_config(values)


def test_experiment_configs_compose():
    """Every study in conf/experiment composes with the run config (``+experiment=<name>``)."""
    for p in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = _compose([f"+experiment={p.stem}"])
        assert cfg.method.name in METHODS.names() and cfg.suite.name in SUITES.names(), p


def test_suite_preprocessing_is_chosen_by_config_and_keys_the_caches(tmp_path):
    from bench.runner import UserError, make_plan, pretrain_identity, suite_preprocess

    base = make_plan(_compose(["suite=btcv", "method=random", f"runs_dir={tmp_path}"]))
    assert suite_preprocess(base).spacing == (1.5, 1.5, 2.0) and suite_preprocess(base).a_min == -175.0  # ASA's
    mine = make_plan(
        _compose(["suite=btcv", "method=random", "+suite.preprocessing.a_min=-1000", f"runs_dir={tmp_path}"])
    )
    assert suite_preprocess(mine).a_min == -1000.0 and suite_preprocess(mine).spacing == (1.5, 1.5, 2.0)
    assert suite_preprocess(mine).key() != suite_preprocess(base).key()
    assert pretrain_identity(mine) != pretrain_identity(base)
    with pytest.raises(UserError, match="unknown key.*a_mn"):
        make_plan(_compose(["suite=btcv", "method=random", "+suite.preprocessing.a_mn=0", f"runs_dir={tmp_path}"]))


def test_a_new_suite_version_never_reuses_an_encoder_pretrained_on_the_old_data(tmp_path, monkeypatch):
    import dataclasses

    from bench import runner

    plan = runner.make_plan(_compose(["suite=abdomen", "method=simmim3d", f"runs_dir={tmp_path}"]))
    assert plan.suite.version == 3 and plan.suite.corpus_version == 2 and plan.suite.pretrain_dataset == "abdomen"
    v1 = dataclasses.replace(plan, suite=dataclasses.replace(plan.suite, version=1, data_version=None))
    assert runner.config_hash(runner.pretrain_identity(v1)) != runner.config_hash(runner.pretrain_identity(plan))
    assert "suite_version" not in runner.pretrain_identity(v1)  # the hashes of version-1 caches are unchanged
    # version 3 only added protocols: an encoder pretrained for version 2 (same data) is reused
    v2 = dataclasses.replace(plan, suite=dataclasses.replace(plan.suite, version=2, data_version=None))
    assert runner.pretrain_identity(v2) == runner.pretrain_identity(plan)


def test_the_record_of_an_earlier_suite_version_renders_with_the_tasks_it_had(tmp_path):
    """abdomen v3 added the probes and made voxel_probe its primary table; the v2 record keeps v2's two protocols
    and its primary table (finetune), declared before its results existed."""
    from bench.plan import leaderboard_suite
    from bench.registry import SUITES

    suite = SUITES.get("abdomen")
    (v3,) = suite.tasks
    assert v3.protocols[-2:] == ("voxel_probe", "knn_seg") and v3.primary_table == ("voxel_probe", 1.0)
    for version in (1, 2):
        (old,) = leaderboard_suite(suite, version, "leaderboard").tasks
        assert old.protocols == ("finetune", "linear_probe") and old.primary_table == ("finetune", 1.0)
    assert leaderboard_suite(suite, 3, "leaderboard").tasks == suite.tasks


def test_leaderboard_stage_of_a_2d_suite_needs_no_2d_method(tmp_path):
    """stage=leaderboard reads stored rows; the default (3D) method must not block a 2D suite's leaderboard."""
    from bench.runner import UserError, make_plan

    make_plan(_compose(["suite=chest_xray", "stage=leaderboard", f"runs_dir={tmp_path}"]))
    with pytest.raises(UserError, match="3D method"):
        make_plan(_compose(["suite=chest_xray", f"runs_dir={tmp_path}"]))


def test_label_fraction_selects_the_cells_and_refuses_a_fraction_the_suite_lacks(tmp_path):
    from bench.runner import UserError, make_plan
    from bench.suites import expand

    plan = make_plan(_compose(["suite=abdomen", "method=random", "label_fraction=0.125", f"runs_dir={tmp_path}"]))
    cells = expand(plan.suite, plan.seeds, plan.protocol, plan.label_fraction)
    everything = expand(plan.suite, plan.seeds, plan.protocol)
    assert cells and {c.label_fraction for c in cells} == {0.125}
    assert len(cells) == sum(c.label_fraction == 0.125 for c in everything) < len(everything)
    for bad in ("0.3", "half"):
        with pytest.raises(UserError, match="label_fraction"):
            make_plan(_compose(["suite=abdomen", "method=random", f"label_fraction={bad}", f"runs_dir={tmp_path}"]))


def test_few_shot_runs_once_per_seed_not_once_per_label_fraction(tmp_path):
    from bench.runner import UserError, make_plan, transfer_cells

    plan = make_plan(_compose(["suite=chest_xray", "method=random", f"runs_dir={tmp_path}"]))
    cells = transfer_cells(plan)
    task = plan.suite.task("findings4")
    assert len(task.label_fractions) == 2
    by = {}
    for c in cells:
        by.setdefault(c.protocol, set()).add(c.label_fraction)
    # few_shot draws its k shots per class from the whole train split: a second fraction would repeat the run
    assert by.pop("few_shot") == {1.0}
    assert all(fr == set(task.label_fractions) for fr in by.values()) and set(by) == {"linear_probe", "finetune", "knn"}
    assert sum(c.protocol == "few_shot" for c in cells) == len(plan.suite.seeds)
    asked = make_plan(
        _compose(
            ["suite=chest_xray", "method=random", "protocol=few_shot", "label_fraction=0.1", f"runs_dir={tmp_path}"]
        )
    )
    with pytest.raises(
        UserError, match="protocol=few_shot picks its own labelled examples and runs at label_fraction=1 only"
    ):
        transfer_cells(asked)


def test_task_selects_that_tasks_cells_and_refuses_a_task_or_protocol_the_suite_lacks(tmp_path):
    from bench.runner import UserError, make_plan
    from bench.suites import expand

    plan = make_plan(
        _compose(["suite=brain", "method=random", "task=side3", "protocol=linear_probe", f"runs_dir={tmp_path}"])
    )
    cells = expand(plan.suite, plan.seeds, plan.protocol, plan.label_fraction, plan.task)
    everything = expand(plan.suite, plan.seeds, plan.protocol)
    assert {c.task.name for c in everything} == {"side3", "lesion"}  # both tasks have a linear probe
    assert cells and {c.task.name for c in cells} == {"side3"}
    assert len(cells) == sum(c.task.name == "side3" for c in everything)
    with pytest.raises(UserError, match="task=organs: suite 'brain' has tasks side3, lesion"):
        make_plan(_compose(["suite=brain", "method=random", "task=organs", f"runs_dir={tmp_path}"]))
    with pytest.raises(UserError, match="task=lesion of suite 'brain' has no protocol 'knn'"):
        make_plan(_compose(["suite=brain", "method=random", "task=lesion", "protocol=knn", f"runs_dir={tmp_path}"]))


def test_budget_protocol_block_sets_segmentation_finetune_lr_unless_the_user_set_it(tmp_path):
    from bench.plan import UserError, make_plan, protocol_options

    def lr(overrides: list[str], kind: str = "segmentation") -> float:
        cfg = _compose(["suite=abdomen", "method=random", f"runs_dir={tmp_path}", *overrides])
        return protocol_options(make_plan(cfg), "finetune", kind)["lr"]

    assert lr(["budget=standard"]) == 1e-4  # the protocol YAML
    assert lr(["budget=quick"]) == 1e-3  # quick's short schedule
    assert lr(["budget=quick", "protocols.finetune.segmentation.lr=3e-4"]) == 3e-4
    assert lr(["budget=quick", "protocols.finetune.segmentation.lr=1e-4"]) == 1e-4  # the YAML's value, asked for
    assert lr(["budget=quick"], "classification") == 1e-4  # only the kind the block names
    # a misspelt option is refused when the plan is made, before any pretraining
    with pytest.raises(UserError, match="protocols.finetune.segmentation: .*lrr"):
        make_plan(
            _compose(
                [
                    "suite=abdomen",
                    "method=random",
                    "budget=quick",
                    f"runs_dir={tmp_path}",
                    "+protocols.finetune.segmentation.lrr=1",
                ]
            )
        )


def test_a_protocol_no_task_of_the_suite_has_is_refused_before_any_work(tmp_path):
    from bench.plan import UserError, make_plan

    offered = sorted({p for t in SUITES.get("smoke").tasks for p in t.protocols})
    assert "knn" not in offered
    with pytest.raises(
        UserError, match=f"protocol=knn: no task of suite 'smoke' has it; its tasks offer {', '.join(offered)}"
    ):
        make_plan(_compose(["suite=smoke", "method=random", "protocol=knn", f"runs_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())  # nothing written: no run directory, no store


def test_a_list_of_protocols_runs_exactly_those_in_one_plan(tmp_path):
    """protocol=[voxel_probe,knn_seg]: one process runs both probes (they share the encoded volumes); a name in the
    list that the suite lacks is refused like a single one."""
    from bench.plan import UserError, make_plan
    from bench.runner import transfer_cells

    plan = make_plan(
        _compose(["suite=smoke", "method=random", "protocol=[voxel_probe,knn_seg]", f"runs_dir={tmp_path}"])
    )
    assert plan.protocol == ("voxel_probe", "knn_seg")
    assert sorted({c.protocol for c in transfer_cells(plan)}) == ["knn_seg", "voxel_probe"]
    one = make_plan(_compose(["suite=smoke", "method=random", "protocol=knn_seg", f"runs_dir={tmp_path}"]))
    assert {c.protocol for c in transfer_cells(one)} == {"knn_seg"}
    with pytest.raises(UserError, match="protocol=knn: no task of suite 'smoke' has it"):
        make_plan(_compose(["suite=smoke", "method=random", "protocol=[voxel_probe,knn]", f"runs_dir={tmp_path}"]))


def test_an_unusable_results_store_is_refused_before_any_work(tmp_path):
    """A text file, a directory, a folder under a file or an unsupported scheme as results.url: one UserError naming
    the path, raised when the plan is made (before data generation and pretraining), and nothing is created."""
    from bench.plan import UserError, make_plan

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    cases = [
        (str(text), "not an SQLite results store"),
        (str(folder), "a directory"),
        (str(text / "results.sqlite"), "is a file"),
        ("mysql://host/db", "unknown scheme 'mysql'"),
    ]
    for url, says in cases:
        before = sorted(tmp_path.rglob("*"))
        with pytest.raises(UserError, match=says) as e:
            make_plan(_compose(["suite=smoke", "method=random", f"runs_dir={tmp_path / 'runs'}", f"results.url={url}"]))
        assert url.split("://")[-1].split("/")[0] in str(e.value) or url in str(e.value)
        assert sorted(tmp_path.rglob("*")) == before
    # a store that does not exist yet is fine and is not created by the check
    make_plan(_compose(["suite=smoke", "method=random", f"results.url={tmp_path / 'new' / 'r.sqlite'}"]))
    assert not (tmp_path / "new").exists()


def _bench_args() -> list[str]:
    """`make bench`'s run_bench.py arguments, as the Makefile's shell passes them."""
    import shlex

    makefile = (CONF.parent / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if x.startswith("BENCH_ARGS ?="))
    return shlex.split(line.split("?=", 1)[1])


def test_the_main_job_compares_its_method_with_random_under_a_probe(tmp_path):
    """`make bench` is a sweep over the method with `random` first (each job writes the board; the last one then
    holds both), at the laptop budget, under representation probes only, with tied pretraining seeds: the
    suite's three seeds, so that its board tests a difference instead of showing a lone number. Every job's plan
    is accepted as composed (a renamed option or protocol fails here, not 18 minutes into `make bench`)."""
    from bench.plan import make_plan, pipeline_plans
    from bench.runner import transfer_cells
    from bench.suites import PROBES_3D

    args = _bench_args()
    assert args[0] == "-m", "make bench must sweep over methods (multirun)"
    sweep = next(a for a in args[1:] if a.startswith("method="))
    methods = sweep.split("=", 1)[1].split(",")
    assert methods[0] == "random" and len(methods) == 2, methods
    rest = [a for a in args[1:] if a != sweep]
    for method in methods:
        cfg = _compose([f"method={method}", *rest, f"runs_dir={tmp_path}"])
        assert cfg.budget.name == "laptop"
        plan = make_plan(cfg)
        runs = pipeline_plans(plan)
        assert [r.pretrain_seed for r in runs] == list(plan.suite.seeds) and len(runs) >= 3
        protocols = {c.protocol for r in runs for c in transfer_cells(r)}
        assert protocols and protocols <= set(PROBES_3D), protocols
