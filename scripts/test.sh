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
# MYSIMBDP_FUZZ_SECONDS (30: the budget of each fuzz target).
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

say "running the tests"
# The slow tier: each fuzz target gets 30 s (3 s in a plain `cargo test`).
export MYSIMBDP_FUZZ_SECONDS="${MYSIMBDP_FUZZ_SECONDS:-30}"
cargo test --no-fail-fast --profile "$profile" "$@" -- --test-threads="${MYSIMBDP_TEST_THREADS:-1}"
say "all tests passed"
