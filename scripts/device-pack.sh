#!/usr/bin/env bash
# Prepares what a GPU-machine run carries, under the device tool's 64 MiB limit:
#   .devslim/  node + production node_modules (koffi trimmed to its linux-x64 binary)
#   dist/      the compiled TypeScript
#   build/     the kernels, machine code for sm_90a only (H100 / H200)
# Then: run with carry [".devslim", "dist", "build"] and a command beginning
#   source .devslim/boot.sh && ...
# (Rebuild the full fatbin afterwards with `PEREGRINE_FORCE_KERNEL_BUILD=1 npm run build:kernels`.)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=${PEREGRINE_SHARED:-$root/../shared}
# a clean dist: tsc leaves the output of deleted sources behind (a removed GPU suite would still run)
rm -rf dist
npm run build:ts >/dev/null
PEREGRINE_KERNEL_ARCHS=90a npm run build:kernels
bash "$shared/device/pack.sh" >/dev/null
rm -rf .devslim
cp -r .device .devslim
sed -i 's#/\.device#/.devslim#g; s#\.device/node_modules#.devslim/node_modules#g' .devslim/boot.sh
# source maps and declarations are not needed to run: ~2 MiB of the carry limit (npm run build:ts remakes them)
find dist \( -name '*.map' -o -name '*.d.ts' \) -delete
k=.devslim/node_modules/koffi
find "$k" -mindepth 1 -maxdepth 1 ! -name build ! -name package.json ! -name index.js ! -name indirect.js ! -name index.d.ts ! -name LICENSE.txt -exec rm -rf {} +
grep -qxF '/.devslim/' .git/info/exclude 2>/dev/null || echo '/.devslim/' >> .git/info/exclude
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
carry=$(du -sb .devslim dist build | awk '{s+=$1} END {print s}')
echo "device carry: tree $((tree / 1048576)) MiB + .devslim/dist/build $((carry / 1048576)) MiB (limit 64 MiB)"
