#!/usr/bin/env bash
# Copy Lightning's example scripts (examples/pytorch/ at a tag) out of a Lightning git directory into .lightning/
# of this repository (ignored by git), where the GPU check (benchmarks/lightning_gan.py) and the example tests
# look when PL_REPO is unset. Carry .lightning to a machine that has no Lightning repository.
#
# Usage: bash benchmarks/lightning_checkout.sh /path/to/pytorch-lightning/.git [REF, default 2.6.5]
set -euo pipefail
GIT_DIR=${1:?give the git directory of a Lightning-AI/pytorch-lightning clone}
REF=${2:-2.6.5}
cd "$(dirname "$0")/.."
rm -rf .lightning && mkdir -p .lightning
# only examples/pytorch: reading just that path also works on a clone with blobs missing elsewhere
git --git-dir="$GIT_DIR" ls-tree -r --name-only "$REF" -- examples/pytorch | while read -r path; do
    mkdir -p ".lightning/$(dirname "$path")"
    git --git-dir="$GIT_DIR" show "$REF:$path" > ".lightning/$path"
done
echo "$REF $(git --git-dir="$GIT_DIR" rev-parse "$REF")" > .lightning/REF
echo "Lightning's examples/pytorch at $REF in .lightning/ ($(find .lightning/examples -name '*.py' | wc -l) Python files)"
