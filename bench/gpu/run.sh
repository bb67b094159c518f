#!/usr/bin/env bash
# One prepared GPU benchmark (H100/H200): ViT-B/16 + 6-layer BERT at 224 px, bf16, ZeRO-2, per-device
# batch 144, data loader on synthetic shards. Prints the GPU, samples/s (data alone, step alone, both),
# data-wait fraction, model FLOPs utilisation and peak memory. Needs PyTorch, timm and transformers;
# deepspeed / webdataset / pydantic come from the wheels in .whl/ (bench/gpu/fetch_wheels.sh).
#   bench/gpu/run.sh                 # on the GPU machine (about 2-4 minutes)
#   bench/gpu/run.sh engine.compile=true                      # with config overrides
#   bench/gpu/run.sh --variants "" "engine.compile=true" "engine.compile=true engine.compile_mode=reduce-overhead"
#                                    # several settings in one call, each its own process (a failure is
#                                    # reported, the next one runs, and the exit code is 1), then one
#                                    # summary line per setting
#   bench/gpu/run.sh --cpu-smoke [--variants ...]   # here: the same path with a tiny model on the CPU
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
started=$(date +%s)
if ! "$PY" -c "import deepspeed, webdataset" >/dev/null 2>&1; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run bench/gpu/fetch_wheels.sh where pip works" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sista_site .whl/*.whl
  export PYTHONPATH=/tmp/sista_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_TRACKING_URI=""
smoke=false
if [[ "${1:-}" == "--cpu-smoke" ]]; then smoke=true; shift; fi
# Without --variants the arguments are one setting, passed on as they are (a YAML list may hold spaces);
# with it, each argument is one setting, split into overrides at spaces.
if [[ "${1:-}" == "--variants" ]]; then shift; variants=("$@"); split=true; else variants=("$*"); split=false; fi
single=("$@")

bench_once() {  # one measurement with the overrides in "$@"
  if $smoke; then
    DS_ACCELERATOR=cpu "$PY" -m bench.train_throughput --config bench/gpu/vitb16_bert6.yaml --synthetic-samples 64 \
      --synthetic-workers 2 --steps 2 --warmup 1 engine.device=cpu engine.precision=fp32 data.batch_size=8 \
      data.num_workers=2 model.image.name=vit_tiny_patch16_224 model.image.img_size=64 data.transform.image_size=64 \
      data.transform.resize_size=72 model.text.tiny.hidden_size=64 model.text.tiny.num_attention_heads=2 \
      model.text.tiny.intermediate_size=128 model.text.tiny.num_hidden_layers=2 "$@"
  else
    local workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
    "$PY" -m bench.train_throughput --config bench/gpu/vitb16_bert6.yaml --synthetic-samples 4320 \
      --synthetic-workers "$(nproc)" --steps 20 --warmup 5 data.num_workers="$workers" "$@"
  fi
}

if ! $smoke; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi failed"
  "$PY" -c "import torch, deepspeed, timm, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)"
fi
summary=()
failed=0
for variant in "${variants[@]}"; do
  echo "=== setting: ${variant:-<as configured>}"
  log=$(mktemp)
  if $split; then read -r -a overrides <<<"$variant"; else overrides=("${single[@]}"); fi
  if bench_once "${overrides[@]}" 2>&1 | tee "$log"; then
    figures=$(grep -E '^(training step alone|data \+ step|MFU|peak GPU memory)' "$log" | sed 's/ \+/ /g' | tr '\n' ';' || true)
    summary+=("${variant:-<as configured>}: ${figures}")
  else
    summary+=("${variant:-<as configured>}: FAILED (exit ${PIPESTATUS[0]}; its output is above)")
    failed=$((failed + 1))
  fi
  rm -f "$log"
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
echo "bench/gpu/run.sh total: $(( $(date +%s) - started )) s"
[[ $failed -eq 0 ]] || { echo "bench/gpu/run.sh: $failed setting(s) failed" >&2; exit 1; }
