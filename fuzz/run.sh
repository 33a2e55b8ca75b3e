#!/usr/bin/env bash
# Runs one fuzz target with cargo-fuzz on the stable toolchain.
# Usage: fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]   (default: 600 seconds)
# New inputs go to fuzz/corpus/TARGET (ignored by git); the tracked seeds in fuzz/seeds/TARGET are
# only read. Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags...]}
secs=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "corpus/$target"
# cargo-fuzz passes -Z flags (sanitizer, coverage passes); RUSTC_BOOTSTRAP=1 lets stable accept them.
RUSTC_BOOTSTRAP=1 exec nice -n 19 cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$secs" -print_final_stats=1 "$@"
