#!/usr/bin/env bash
# Packs what a GPU machine with no network needs to run ulp's device check (issue 20, item 4)
# into .device/ (ignored by git; 64 MiB at most travel): Deno (the pinned version, xz), the
# npm packages the tests import (js-tiktoken, @webgpu/types), the benchmarks bundled with their
# peers (`deno bundle`: TF.js alone is 290 MB unpacked, 4 MB bundled with everything), and
# the Vulkan and GL loader libraries from Debian, in case that machine lacks them.
#
# Run here, from anywhere in the checkout: bench/device/pack.sh
# Then, on the GPU machine (the tree plus .device/): bench/device/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
want="$(tr -d '[:space:]' < .deno-version)"
out=.device
rm -rf "$out"
mkdir -p "$out/debs"

# the pinned Deno: this machine's if it is that version, else npm's
deno_bin=""
if command -v deno >/dev/null && deno --version | head -1 | grep -q "deno ${want} "; then
  deno_bin="$(deno eval 'console.log(Deno.execPath())')"
else
  deno_bin="$(npx -y "deno@${want}" eval 'console.log(Deno.execPath())')"
fi
echo "== Deno ${want}: ${deno_bin}"
xz -T0 -6 -c "$deno_bin" > "$out/deno.xz"

echo "== npm packages of the tests (a fresh DENO_DIR)"
dd="$(mktemp -d)"
DENO_DIR="$dd" "$deno_bin" cache tests/ mod.ts examples/ >/dev/null
tar -C "$dd" -cJf "$out/deno_dir.tar.xz" npm

echo "== the benchmarks, bundled with their peers"
for b in bench peak gpt2; do
  DENO_DIR="$dd" "$deno_bin" bundle --quiet --config bench/deno.json --platform deno \
    -o "$out/$b.js" "bench/$b.ts"
done
rm -rf "$dd"

echo "== Vulkan/GL loaders (Debian amd64 packages; check.sh unpacks them only where missing)"
lists="$(mktemp -d)"
mkdir -p "$lists/partial"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
if apt-get "${o[@]}" update -qq >/dev/null 2>&1 &&
  (cd "$out/debs" && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 \
    libgl1 libglx0 libgles2 >/dev/null 2>&1); then
  ls "$out/debs"
else
  echo "apt-get download failed: .device/debs is empty (check.sh will use the machine's loaders)"
fi
rm -rf "$lists"

du -sh "$out"/* | sed 's/^/  /'
total=$(du -sb "$out" | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "== .device: $((total / 1048576)) MiB; with the tracked tree $(((total + tree) / 1048576)) MiB of the 64 MiB that travel"
[ $((total + tree)) -lt $((64 * 1048576)) ] || { echo "too large to travel"; exit 1; }
