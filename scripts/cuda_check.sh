#!/usr/bin/env bash
# One check of seer's CUDA path on a machine with a GPU (CI never has one). Run from the repo root:
#   bash scripts/cuda_check.sh            # logs under $OUT (default /tmp/cuda-check)
#   TESTS="tests/test_tensor_parallel.py" BENCH_ARGS="--engines seer --tp 2" bash scripts/cuda_check.sh
# 1. the test suite with seer on the GPU in fp32 (SEER_TEST_DTYPE, so greedy parity against
#    transformers' CPU fp32 forward still means something); the web UI test is left out;
# 2. the 110M-Llama decode benchmark on the GPU in bf16, seer against transformers generate.
# Wheels in .whl/ (packages the machine lacks) are installed to /tmp/site first.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/cuda-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
SEER_TEST_DTYPE=float32 timeout "${SUITE_S:-330}" python3 -m pytest -q -p no:cacheprovider --timeout 120 \
  --ignore=tests/test_webui.py -o addopts="-ra" ${TESTS:-tests} >"$OUT/suite.log" 2>&1
echo "suite exit $?"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.log" | tail -60
for args in "${BENCH_ARGS:---batches 1,16,64}" ${BENCH_ARGS2:+"$BENCH_ARGS2"}; do
  echo "== benchmarks/text_llm.py --device cuda $args"
  timeout "${BENCH_S:-150}" python3 benchmarks/text_llm.py --device cuda $args 2>&1 | tee -a "$OUT/bench.log" | tail -8
done
