#!/usr/bin/env bash
# Runs every test of mysimbdp against real services on loopback: builds the workspace, starts a
# fresh Apache Cassandra 5.0 and Apache Kafka 4.4 (scripts/services.sh, from Maven Central),
# runs all tests with MYSIMBDP_TEST_CASSANDRA / MYSIMBDP_TEST_KAFKA pointing at them (a missing
# service fails the run, never skips a test; every test binary runs even after a failure, so
# one run shows every failure), and stops the services, whatever happened.
#
#   scripts/test.sh              everything (release build)
#   scripts/test.sh -p datagen   extra arguments go to `cargo test` (without any, the root's
#                                virtual manifest selects every workspace member)
#
# Environment: MYSIMBDP_TEST_PROFILE (release), CARGO_TARGET_DIR, MYSIMBDP_SERVICES_DIR,
# MYSIMBDP_FUZZ_SECONDS (60: the budget of each fuzz target, fuzzed beside the other tests).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${MYSIMBDP_TEST_PROFILE:-release}"
began=$(date +%s)
say() { echo "test.sh: $* ($(( $(date +%s) - began )) s)" >&2; }

say "building the workspace ($profile)"
cargo build --workspace --profile "$profile"

trap 'say "stopping the services"; scripts/services.sh stop all || true' EXIT
scripts/services.sh wipe all
scripts/services.sh start all
eval "$(scripts/services.sh env)"
export MYSIMBDP_REQUIRE_SERVICES=1
say "services ready: cassandra $MYSIMBDP_TEST_CASSANDRA, kafka $MYSIMBDP_TEST_KAFKA"

say "building the tests"
cargo test --no-run --profile "$profile" "$@"

# The slow tier of the fuzz targets (a minute each) needs no service and one core: it runs
# beside the rest, whose own pass of fuzz.rs keeps the 3 s budget of a plain `cargo test`.
fuzz_log=$(mktemp)
fuzz_pid=
if [ $# -eq 0 ]; then
    say "fuzzing in the background (${MYSIMBDP_FUZZ_SECONDS:-60} s per target)"
    MYSIMBDP_FUZZ_SECONDS="${MYSIMBDP_FUZZ_SECONDS:-60}" \
        cargo test --profile "$profile" -p mysimbdp-tests --test fuzz -- --test-threads=1 >"$fuzz_log" 2>&1 &
    fuzz_pid=$!
fi

say "running the tests"
status=0
MYSIMBDP_FUZZ_SECONDS=3 cargo test --no-fail-fast --profile "$profile" "$@" -- \
    --test-threads="${MYSIMBDP_TEST_THREADS:-1}" || status=$?
if [ -n "$fuzz_pid" ]; then
    fuzz_status=0
    wait "$fuzz_pid" || fuzz_status=$?
    say "the background fuzzing ended (exit $fuzz_status):"
    cat "$fuzz_log" >&2
    [ "$fuzz_status" -eq 0 ] || status=$fuzz_status
fi
rm -f "$fuzz_log"
[ "$status" -eq 0 ] || { say "tests failed (exit $status)"; exit "$status"; }
say "all tests passed"
