#!/usr/bin/env bash
# The test command (README, .ci/run): installs the real peers the tests use, builds the
# workspace (the `chiral` binary and every plugin library) and runs all tests: unit tests,
# the SDK conformance kit on each plugin, and end-to-end tests against real servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --release --workspace
cargo test --release --workspace "$@"
