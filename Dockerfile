# wsi-weakseg: nucleus segmentation for H&E whole-slide images.
#   docker build -t wsi-weakseg .
#   docker run --rm -v "$PWD:/data" wsi-weakseg segment /data/slide.svs -o /data/results
# CPU image. For NVIDIA GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# and run with --gpus all.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# OpenSlide comes from the openslide-bin wheel (no apt packages needed); torch first, so that
# installing the project does not pull a different build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /opt/wsi-weakseg
COPY pyproject.toml README.md ./
COPY wsi_weakseg ./wsi_weakseg
RUN pip install . && wsi-weakseg models

RUN useradd --create-home --uid 1000 wsi
USER wsi
WORKDIR /data

ENTRYPOINT ["wsi-weakseg"]
CMD ["--help"]
