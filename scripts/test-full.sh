#!/usr/bin/env bash
# The full test tier: every test CI runs, then the ones CI leaves out for time (`#[ignore]` with
# "full tier" in their reason): the GPTQModel checkpoint over all 248 docs windows and the
# downstream crate built from scratch. About 5 minutes more than `cargo test --release
# --workspace` on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export QWEN3_QUANT_REQUIRE_ASSETS=1
cargo test --release --workspace -- --include-ignored "$@"
