#!/usr/bin/env bash
# Runs the kernels crate's tests (scalar and NEON paths, compared with each other and with the
# dequantize-then-multiply reference) for AArch64 under qemu user emulation.
# Needs: rustup's aarch64-unknown-linux-gnu std and Debian's qemu-user, gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross (installed below when missing). Timings under emulation mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    apt-get install -y -q qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
exec cargo test --release --target aarch64-unknown-linux-gnu -p qwen3-quant-kernels "$@"
