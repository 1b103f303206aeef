#!/usr/bin/env bash
# Builds a baseline revision (default HEAD, i.e. without the working tree's changes) into .base/ (or the folder
# given second: .base-<name>; dist/ and build/, sm_90a kernels, no maps or declarations; ~4 MiB), for A/B runs
# against it in the same device call:
# carry [".devslim", "dist", "build", ".base"] and run e.g.
#   node .base/dist/src/cli/main.js bench ops ...     (the baseline)
#   node dist/src/cli/main.js bench ops ...           (the working tree)
# .base/dist resolves node_modules through the root's link (boot.sh) and loads .base/build/kernels.fatbin.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
rev=${1:-HEAD}
dest=${2:-.base}
case "$dest" in .base|.base-*) ;; *) echo "destination must be .base or .base-<name>" >&2; exit 1 ;; esac
wt=$(mktemp -d /tmp/peregrine-base.XXXXXX)
git worktree add -q --detach "$wt" "$rev"
trap 'git worktree remove --force "$wt"' EXIT
ln -s "$root/node_modules" "$wt/node_modules"
(cd "$wt" && npm run build:ts >/dev/null && PEREGRINE_KERNEL_ARCHS=90a npm run build:kernels >/dev/null)
rm -rf "$dest" && mkdir "$dest"
cp -r "$wt/dist" "$wt/build" "$dest/"
cp "$wt/package.json" "$dest/"
find "$dest/dist" \( -name '*.map' -o -name '*.d.ts' \) -delete
rm -f "$dest/build/kernels-all.cu"
grep -qxF '/.base*/' .git/info/exclude 2>/dev/null || echo '/.base*/' >> .git/info/exclude
echo "baseline $(git rev-parse --short "$rev") in $dest: $(du -sh "$dest" | cut -f1)"
