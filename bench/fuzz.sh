#!/usr/bin/env bash
# Fuzzing: runs every cargo-fuzz target of the repository (or those named) for FUZZ_SECONDS
# each, one after the other, at the lowest CPU priority, and prints one line per target
# (executions, libFuzzer's coverage `cov:` and features `ft:`, corpus size, crashes) and a
# markdown table for docs/robustness.md.
#   bash bench/fuzz.sh                      (every target, FUZZ_SECONDS=600 each)
#   FUZZ_SECONDS=120 bash bench/fuzz.sh sdk/magnet ftp/reply layout
#   bash bench/fuzz.sh --list
# A target is named `<crate>/<target>` (crate: sdk, host, ftp, http, chiral, bittorrent, rqbit) or by
# its target name alone; a crate's name alone selects all its targets. Needs
# `cargo install cargo-fuzz` and a nightly toolchain.
# Each target starts from its committed seeds (`<crate>/fuzz/seeds/<target>/`) and the corpus
# of earlier runs (`<crate>/fuzz/corpus/<target>/`, not committed); what it finds goes to
# `<crate>/fuzz/artifacts/<target>/`. Every fuzz crate builds into FUZZ_TARGET_DIR (default
# target/fuzz), so target names are unique across crates. FUZZ_NO_BUILD=1 runs what is built.
# FUZZ_ARGS: extra libFuzzer options (e.g. `-dict=...`); FUZZ_LOGS: where the full logs go.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_SECONDS="${FUZZ_SECONDS:-600}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/target/fuzz}"
FUZZ_LOGS="${FUZZ_LOGS:-$ROOT/target/fuzz-logs}"
FUZZ_ARGS="${FUZZ_ARGS:-}"
CRATES=(sdk:sdk host:host ftp:plugins/ftp http:plugins/http chiral:plugins/chiral bittorrent:plugins/bittorrent rqbit:plugins/rqbit)

die() { echo "fuzz: $*" >&2; exit 1; }

# all_targets: `<crate>/<target>` for each [[bin]] of each fuzz crate
all_targets() {
    local c name dir
    for c in "${CRATES[@]}"; do
        name=${c%%:*}; dir=$ROOT/${c#*:}/fuzz
        [ -f "$dir/Cargo.toml" ] || continue
        sed -n 's/^name = "\(.*\)"$/\1/p' "$dir/Cargo.toml" | tail -n +2 | sed "s|^|$name/|"
    done
}

crate_dir() {
    local c
    for c in "${CRATES[@]}"; do [ "${c%%:*}" = "$1" ] && { echo "$ROOT/${c#*:}/fuzz"; return; }; done
}

mapfile -t ALL < <(all_targets)
[ "${1:-}" = "--list" ] && { printf '%s\n' "${ALL[@]}"; exit 0; }
command -v cargo-fuzz >/dev/null || die "cargo-fuzz missing: cargo install cargo-fuzz"
cargo +nightly --version >/dev/null 2>&1 || die "no nightly toolchain: rustup toolchain install nightly"

SELECTED=()
if [ $# = 0 ]; then
    SELECTED=("${ALL[@]}")
else
    for want in "$@"; do
        found=""
        for t in "${ALL[@]}"; do
            [ "$t" = "$want" ] || [ "${t#*/}" = "$want" ] || [ "${t%%/*}" = "$want" ] && { SELECTED+=("$t"); found=1; }
        done
        [ -n "$found" ] || die "no target $want (bash bench/fuzz.sh --list)"
    done
fi

mkdir -p "$FUZZ_LOGS"
TRIPLE=$(rustc +nightly -vV | sed -n 's/^host: //p')
if [ "${FUZZ_NO_BUILD:-}" != 1 ]; then
    for crate in $(printf '%s\n' "${SELECTED[@]}" | cut -d/ -f1 | uniq); do
        echo "fuzz: building $crate" >&2
        (cd "$(crate_dir "$crate")" && nice -n 19 cargo +nightly fuzz build --target-dir "$FUZZ_TARGET_DIR") \
            >"$FUZZ_LOGS/build-$crate.log" 2>&1 || die "build of $crate failed: $FUZZ_LOGS/build-$crate.log"
    done
fi
ROWS=()
LINES=()
TOTAL_CRASHES=0
for t in "${SELECTED[@]}"; do
    crate=${t%%/*}; target=${t#*/}; dir=$(crate_dir "$crate")
    log="$FUZZ_LOGS/${crate}-${target}.log"
    mkdir -p "$dir/corpus/$target" "$dir/artifacts/$target"
    before=$(find "$dir/artifacts/$target" -type f | wc -l)
    echo "fuzz: $t for ${FUZZ_SECONDS}s (log $log)" >&2
    seeds=()
    [ -d "$dir/seeds/$target" ] && seeds=("$dir/seeds/$target")
    # shellcheck disable=SC2086
    (cd "$dir" && nice -n 19 "$FUZZ_TARGET_DIR/$TRIPLE/release/$target" "corpus/$target" "${seeds[@]}" \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$target/" $FUZZ_ARGS) >"$log" 2>&1
    rc=$?
    after=$(find "$dir/artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    [ $rc != 0 ] && [ $crashes = 0 ] && crashes="?(exit $rc)"
    [ "$crashes" != 0 ] && TOTAL_CRASHES=$((TOTAL_CRASHES + 1))
    # The last status line: `#N  DONE  cov: C ft: F corp: K/SIZE ... exec/s: E ...`.
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    [ -n "$execs" ] || execs=$(echo "$status" | sed -n 's/^#\([0-9]*\).*/\1/p')
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    [ -n "$secs" ] || secs=$FUZZ_SECONDS
    cov=$(echo "$status" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$status" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$status" | sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p')
    rate=$(( ${execs:-0} / (secs > 0 ? secs : 1) ))
    line="$t: ${execs:-?} executions in ${secs}s (${rate}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, crashes $crashes"
    echo "$line"
    LINES+=("$line")
    ROWS+=("| \`$t\` | ${secs} s | ${execs:-?} | ${rate} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes |")
    if [ "$crashes" != 0 ]; then
        ls -t "$dir/artifacts/$target" | head -n 3 | sed "s|^|    artifact: ${dir#"$ROOT"/}/artifacts/$target/|"
    fi
done

echo
echo "| target | time | executions | exec/s | cov | ft | corpus (inputs/bytes) | crashes |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
[ "$TOTAL_CRASHES" = 0 ] || { echo "fuzz: $TOTAL_CRASHES target(s) crashed" >&2; exit 1; }
