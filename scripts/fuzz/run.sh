#!/usr/bin/env bash
# Builds every fuzz target (or the ones named) with libFuzzer's coverage
# instrumentation on stable Rust, runs each for a number of inputs (-r) or
# seconds (-s), and prints per target the inputs executed, the time taken
# and the crashes found. Exits non-zero if any target crashed.
#
#   scripts/fuzz/run.sh -s 10                 # every target, 10 s each
#   scripts/fuzz/run.sh -r 10000000 classify  # 10 million inputs
#   scripts/fuzz/run.sh -s 60 gateway -- -max_len=8192
#
# Arguments after `--` go to libFuzzer. CARGO_TARGET_DIR defaults to
# target/fuzz (the instrumented build must not share the normal one).
# New corpus entries go to scripts/fuzz/corpus/<target>, crashes to
# scripts/fuzz/artifacts/<target>, logs to scripts/fuzz/logs (all untracked).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
all=(classify forward ring lvsp gateway
  open_aes256_gcm_rtpsize open_xchacha20_poly1305_rtpsize
  open_xsalsa20_poly1305_lite open_xsalsa20_poly1305_suffix open_xsalsa20_poly1305)

usage() {
  echo "usage: $0 [-r RUNS] [-s SECONDS] [TARGET...] [-- LIBFUZZER_ARGS...]" >&2
  echo "targets: ${all[*]}" >&2
  exit 2
}
runs= seconds=
while getopts "r:s:h" o; do
  case $o in
    r) runs=$OPTARG ;;
    s) seconds=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
targets=()
# (getopts already took a `--` that came right after the options.)
while [ $# -gt 0 ] && [ "$1" != "--" ] && [[ $1 != -* ]]; do
  [[ " ${all[*]} " == *" $1 "* ]] || { echo "unknown target $1" >&2; usage; }
  targets+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
extra=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
[ -n "$runs$seconds" ] || { echo "give -r RUNS or -s SECONDS (or both)" >&2; usage; }

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/../../target/fuzz}
# What `cargo fuzz build -s none` passes: coverage for libFuzzer (8-bit
# counters, PC table, comparison tracing) without a sanitizer, so stable
# Rust builds it. Overflow checks and debug assertions come from the
# crate's release profile. With --target, build scripts stay uninstrumented.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
cargo build --release --locked --manifest-path "$here/Cargo.toml" --target "$host" "${bins[@]}"

mkdir -p "$here/logs"
summary=()
failed=0
crashed=0
for t in "${targets[@]}"; do
  seeds=$here/seeds/$t
  [[ $t == open_* ]] && seeds=$here/seeds/open
  args=(-print_final_stats=1 -timeout=30 -rss_limit_mb=2048
    -artifact_prefix="$here/artifacts/$t/")
  [ -n "$runs" ] && args+=(-runs="$runs")
  [ -n "$seconds" ] && args+=(-max_total_time="$seconds")
  [ -f "$here/dict/$t.dict" ] && args+=(-dict="$here/dict/$t.dict")
  mkdir -p "$here/corpus/$t" "$here/artifacts/$t" "$seeds"
  log=$here/logs/$t.log
  before=$(ls "$here/artifacts/$t" | wc -l)
  echo "== $t: ${runs:+$runs inputs }${seconds:+${seconds}s max}"
  start=$(date +%s%N)
  set +e
  "$CARGO_TARGET_DIR/$host/release/$t" "${args[@]}" "${extra[@]}" \
    "$here/corpus/$t" "$seeds" >"$log" 2>&1
  rc=$?
  set -e
  ms=$((($(date +%s%N) - start) / 1000000))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(($(ls "$here/artifacts/$t" | wc -l) - before))
  if [ $rc -ne 0 ]; then
    failed=1
    crashed=$((crashed + 1))
    [ "$crashes" -gt 0 ] || crashes=1
    grep -E "^(==[0-9]+== ERROR|thread '.*' panicked|panicked at|SUMMARY)" "$log" | head -5 || tail -20 "$log"
    ls -t "$here/artifacts/$t" | head -3 | sed "s|^|   artifact: $here/artifacts/$t/|"
  fi
  summary+=("$(printf '%-34s %12s inputs %8s s %3s crashes' "$t" "${execs:-?}" \
    "$(awk "BEGIN { printf \"%.1f\", $ms / 1000 }")" "$crashes")")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
echo "fuzz: $((${#targets[@]} - crashed)) passed, $crashed failed"
exit $failed
