#!/usr/bin/env bash
# The GPU checks of the benchmark targets in one short run, sized for a 15-minute device lease (~10 minutes of
# work once the machine is up). Run from the repository root on a machine with an NVIDIA GPU, with python3
# holding jax[cuda], flax, optax, orbax-checkpoint, pytest, torch and timm (the lent H100 / H200 machines have
# them):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: benchmarks/; on the device tool: $OUT
#
# segment-anything is not on those machines: download its wheel here first and carry `.whl` (36 kB):
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl segment-anything==1.0
# The script installs any wheels it finds in .whl/ to /tmp/site. Each step has its own time limit, so one that
# hangs (a torch.compile, say) costs its limit, not the lease; a step fails when it exits non-zero or when any
# of its benchmark cases recorded an error, and the next step runs either way. The step limits are estimates:
# the script has not yet run on a GPU (no device was lent to the task that wrote it).
#
# Writes OUT_DIR/gpu_{vit,sam_encoder,sam_decoder,amg}.json + .md (the `vitsam bench` format) and gpu_check.log
# (everything printed, also for a step stopped at its limit, which writes no JSON).
set -uo pipefail
out=${1:-benchmarks}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed"; exit 98; }
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
# JAX falls back to the CPU when CUDA does not start: stop here rather than spend the lease on CPU runs.
python3 -c "import jax, sys; print('jax', jax.__version__, jax.devices()); sys.exit(jax.default_backend() != 'gpu')" \
    || { echo "no GPU backend in JAX"; exit 99; }
python3 -c "import torch, timm, segment_anything; print('torch', torch.__version__, torch.cuda.is_available())" \
    || echo "the PyTorch peers are incomplete: their cases will record errors"

failed=0
step() {  # step LIMIT_S NAME [JSON] -- COMMAND...: run with a time limit; count a failure and go on
    local limit=$1 name=$2 json=""
    shift 2
    if [ "$1" != "--" ]; then json=$1; shift; fi
    shift
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS rc errors=0
    timeout --signal=INT --kill-after=5 "$limit" "$@"
    rc=$?
    if [ -n "$json" ] && [ -f "$json" ]; then
        errors=$(python3 -c "import json, sys; print(sum('error' in r for r in json.load(open(sys.argv[1]))['results']))" "$json")
    fi
    echo "== $name: exit $rc, $errors case(s) with an error, after $((SECONDS - t0))s"
    if [ "$rc" -ne 0 ] || [ "$errors" != 0 ]; then failed=$((failed + 1)); fi
}
bench="python3 -m vitsam.cli bench"

# The bf16 / cuDNN / compiled-peer paths, as the test suite checks them.
step 90 "pytest -m gpu" -- python3 -m pytest -q -m gpu tests/test_bench.py -p no:cacheprovider
# Target: ViT-B/16 bf16 train step >= 50% MFU (with timm and timm + torch.compile beside it).
step 120 "ViT-B/16 train + forward" "$out/gpu_vit.json" -- $bench --model vit:B/16 --mode train,forward \
    --batch 256 --dtype bfloat16 --kernel xla,cudnn --torch --warmup 3 --iters 10 --out "$out/gpu_vit.json"
# Target: SAM vit_h encoder >= 50% MFU in bf16 and faster than segment-anything bf16 + SDPA + torch.compile.
step 200 "SAM vit_h encoder" "$out/gpu_sam_encoder.json" -- $bench --model sam:vit_h --batch 1 --dtype bfloat16 \
    --kernel xla,cudnn --torch --warmup 2 --iters 5 --out "$out/gpu_sam_encoder.json"
# Target: the decoder under 1 ms per batch of prompts.
step 70 "SAM vit_h decoder" "$out/gpu_sam_decoder.json" -- $bench --model sam:vit_h:decoder --batch 1,16,64 \
    --dtype bfloat16,float32 --kernel einsum,xla --torch --warmup 3 --iters 20 --out "$out/gpu_sam_decoder.json"
# Target: the automatic mask generator under 200 ms per image for vit_h (float32, the official defaults).
step 120 "SAM vit_h automatic mask generator" "$out/gpu_amg.json" -- $bench --model sam:vit_h:amg --torch \
    --warmup 1 --iters 3 --out "$out/gpu_amg.json"

echo "== done: $failed step(s) failed"
exit "$failed"
