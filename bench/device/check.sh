#!/usr/bin/env bash
# ulp's device check (issue 20, item 4), run on a GPU machine with no network from the tree
# plus what bench/device/pack.sh put in .device/: which adapter Deno reaches through Vulkan,
# matmul TFLOP/s against the card's peak (bench/peak.ts), GPT-2 small tokens/s per strategy
# (bench/gpt2.ts), `deno task bench --quick --json`, then the test suite (as `deno task test`,
# without the type check: that ran here). Each step has its own time limit and writes its
# output under $OUT (default .device/out) as it goes, so a step that runs out of time leaves
# the ones before it whole: summary.txt, adapter.json, peak.txt, gpt2.txt, bench.txt (JSON),
# test.txt and everyone's stderr in errors.txt (the device tool returns at most 8 files).
#
# Run there: bench/device/check.sh   (limits in seconds: PEAK_S GPT2_S BENCH_S TEST_S)
# With the device tool: run(command="bench/device/check.sh", carry=[".device"], timeout_s=590)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-.device/out}"
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
[ -f .device/deno.xz ] || { echo "no .device/deno.xz: run bench/device/pack.sh first, and carry .device"; exit 2; }

# Vulkan/GL loaders: only where the machine has none (unpacking over a system's own can break it)
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in .device/debs/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
  log "unpacked the carried Vulkan/GL loaders: $(ls .device/debs | tr '\n' ' ')"
fi
# NVIDIA's driver mounted outside the usual places (seen on the H100/H200 machines)
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  log "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/summary.txt"
else
  log "no nvidia-smi"
fi

# Deno and the tests' npm packages
bin="$(mktemp -d)"
unpack_xz() { # $1 -> stdout, with xz or, lacking it, Python's lzma
  if command -v xz >/dev/null; then xz -dc "$1"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}
unpack_xz .device/deno.xz > "$bin/deno" && chmod +x "$bin/deno"
export PATH="$bin:$PATH" DENO_DIR="$bin/cache" NO_COLOR=1 DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
mkdir -p "$DENO_DIR"
unpack_xz .device/deno_dir.tar.xz | tar -C "$DENO_DIR" -xf -
log "$(deno --version | head -1), DENO_WEBGPU_BACKEND=$DENO_WEBGPU_BACKEND"

# the adapter, as Deno sees it; where Vulkan gives none, OpenGL through NVIDIA's EGL is tried
# (no adapter at all stops the check there with Deno's errors, which are then the finding)
probe() {
  echo "== probe, DENO_WEBGPU_BACKEND=$DENO_WEBGPU_BACKEND" >> "$OUT/errors.txt"
  timeout 60 deno eval '
const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
if (!a) { console.log("no WebGPU adapter"); Deno.exit(3); }
const i = a.info;
console.log(JSON.stringify({ backend: Deno.env.get("DENO_WEBGPU_BACKEND"), vendor: i.vendor,
  architecture: i.architecture, device: i.device, description: i.description,
  features: [...a.features].sort(), maxBufferSize: a.limits.maxBufferSize,
  maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize }));
' > "$OUT/adapter.json" 2>> "$OUT/errors.txt"
}
probe
rc=$?
if [ "$rc" != 0 ] && [ "$DENO_WEBGPU_BACKEND" = vulkan ]; then
  log "no adapter through Vulkan (exit $rc): $(cat "$OUT/adapter.json") $(tail -3 "$OUT/errors.txt" | tr '\n' ' ')"
  export DENO_WEBGPU_BACKEND=gl
  f=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$f" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$f"
  probe
  rc=$?
fi
cat "$OUT/adapter.json" | tee -a "$OUT/summary.txt"
[ "$rc" = 0 ] || { log "Deno reached no GPU (exit $rc):"; tail -20 "$OUT/errors.txt"; exit 3; }

step() { # name, limit (s), command...: stdout to $OUT/<name>.txt, stderr to errors.txt
  local name=$1 limit=$2
  shift 2
  log "$name (at most ${limit} s)"
  local t0=$SECONDS
  echo "== $name" >> "$OUT/errors.txt"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>> "$OUT/errors.txt"
  local rc=$?
  log "$name: exit $rc in $((SECONDS - t0)) s"
  tail -n 40 "$OUT/$name.txt"
}
E=--allow-env=DENO_WEBGPU_BACKEND
step peak "${PEAK_S:-90}" deno run "$E" .device/peak.js --sizes 1024,2048,4096,8192
step gpt2 "${GPT2_S:-150}" deno run "$E" .device/gpt2.js --strategies fp32,amp-bf16,collage-light,fp8 \
  --batch 8 --context 256 --steps 4
step bench "${BENCH_S:-150}" deno run "$E" .device/bench.js --quick --json
# the README's test command without its type check (deno.json's "test" task, one definition)
read -r -a test_cmd <<< "$(deno eval 'console.log(JSON.parse(Deno.readTextFileSync("deno.json")).tasks.test)')"
step test "${TEST_S:-170}" "${test_cmd[0]}" "${test_cmd[1]}" --no-check "${test_cmd[@]:2}"
# the runner's summary line, or, where the limit stopped it, the count so far
grep -E '^(ok|FAILED) \|' "$OUT/test.txt" | tail -1 | tee -a "$OUT/summary.txt" | grep -q . ||
  log "tests stopped at the limit: $(grep -c ' \.\.\. ok' "$OUT/test.txt") passed, $(grep -c ' \.\.\. FAILED' "$OUT/test.txt") failed so far"
