#!/usr/bin/env bash
# The GPU checks of the benchmark targets in one short run, sized for a 15-minute device lease (at most ~9 minutes
# of work once the machine is up). Run from the repository root on a machine with an NVIDIA GPU, with python3
# holding jax[cuda], flax, optax, orbax-checkpoint, torch and timm (the lent H100 / H200 machines have them):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: benchmarks/; on the device tool: $OUT
#
# segment-anything is not on those machines: download its wheel here first and carry `.whl`
# (`python3 -m pip download --no-deps --only-binary=:all: -d .whl segment-anything==1.0`, 36 kB); the script installs any
# wheels it finds in .whl/ to /tmp/site. Each step has its own time limit, so one that hangs (a torch.compile,
# say) costs its limit, not the lease; a failed step is reported and the next one runs.
#
# Writes OUT_DIR/gpu_{vit,sam_encoder,sam_decoder}.json + .md (the `vitsam bench` format) and gpu_tests.log.
set -uo pipefail
out=${1:-benchmarks}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

failed=0
step() {  # step LIMIT_S NAME COMMAND...: run with a time limit, report, go on
    local limit=$1 name=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

# The step limits are estimates: this script has not yet run on a GPU (no device was lent to the task that
# wrote it). Together they stay under the device tool's 10 minutes per command.
# The bf16 / cuDNN / compiled-peer paths, as the test suite checks them.
step 100 "pytest -m gpu" bash -c 'set -o pipefail; python3 -m pytest -q -m gpu tests/test_bench.py -p no:cacheprovider 2>&1 | tee "$0"' \
    "$out/gpu_tests.log"
# Target: ViT-B/16 bf16 train step >= 50% MFU (with timm and timm + torch.compile beside it).
step 130 "ViT-B/16 train + forward" python3 -m vitsam.cli bench --model vit:B/16 --mode train,forward --batch 256 --dtype bfloat16 \
    --kernel xla,cudnn --torch --warmup 3 --iters 10 --out "$out/gpu_vit.json"
# Target: SAM vit_h encoder >= 50% MFU in bf16 and faster than segment-anything bf16 + SDPA + torch.compile.
step 220 "SAM vit_h encoder" python3 -m vitsam.cli bench --model sam:vit_h --batch 1 --dtype bfloat16 --kernel xla,cudnn --torch \
    --warmup 2 --iters 5 --out "$out/gpu_sam_encoder.json"
# Target: the decoder under 1 ms per batch of prompts.
step 80 "SAM vit_h decoder" python3 -m vitsam.cli bench --model sam:vit_h:decoder --batch 1,16,64 --dtype bfloat16,float32 \
    --kernel einsum,xla --torch --warmup 3 --iters 20 --out "$out/gpu_sam_decoder.json"

echo "== done: $failed step(s) failed"
exit "$failed"
