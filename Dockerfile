# GPU-cluster image for the SISTA pipeline.
#
# Build (on a machine with Docker; deepspeed's CUDA ops are compiled for A100 (sm_80) and H100/H200 (sm_90)):
#   docker build -t sista:latest .
# Run one node (8 GPUs) with the data and run directories mounted:
#   docker run --gpus all --ipc=host --rm -v /data/mimic:/data -v $PWD/runs:/opt/sista/runs sista:latest \
#     torchrun --nproc-per-node 8 -m pipeline.train --config configs/pretrain/mimic_vitb16.yaml
#
# Apptainer / Singularity (most clusters do not run Docker): convert the image once, then use it
# in the SLURM config's `setup` commands / container field:
#   apptainer build sista.sif docker-daemon://sista:latest      # or: docker-archive://sista.tar
#   srun apptainer exec --nv --bind /data/mimic:/data sista.sif python -m pipeline.train --config ...
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-devel

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    DS_BUILD_OPS=0 \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_UTILS=1

RUN apt-get update && apt-get install -y --no-install-recommends git ninja-build libaio-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sista
# Dependencies first (cached layer); the constraints file keeps the base image's torch.
COPY constraints.txt setup.cfg pyproject.toml README.md ./
RUN pip install -c constraints.txt --no-build-isolation deepspeed \
    && python -c "import deepspeed.ops.op_builder as b; print('deepspeed ops built for', '${TORCH_CUDA_ARCH_LIST}')"
COPY pipeline ./pipeline
COPY data_prep ./data_prep
COPY launch ./launch
COPY configs ./configs
COPY bench ./bench
RUN pip install -c constraints.txt --no-build-isolation -e . && ds_report
