#!/usr/bin/env bash
# Builds the provisioner as a static binary (it runs inside the COS build VM, whose
# libraries we do not control) and proves it is static. Prints the binary path last.
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup finds its toolchains under $HOME unless told otherwise, and Cloud Build (like any
# CI that sets HOME per step) changes HOME: keep to the toolchain beside the cargo on PATH.
cargo_bin=$(command -v cargo || true)
if [[ -z ${RUSTUP_HOME:-} && $cargo_bin == */.cargo/bin/cargo ]]; then
  home_of_cargo=${cargo_bin%/.cargo/bin/cargo}
  if [[ -d $home_of_cargo/.rustup ]]; then
    export RUSTUP_HOME=$home_of_cargo/.rustup CARGO_HOME=${CARGO_HOME:-$home_of_cargo/.cargo}
  fi
fi

target=x86_64-unknown-linux-gnu
bin="${CARGO_TARGET_DIR:-target}/$target/release/provisioner"

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p provisioner --target "$target" >&2

desc=$(file -b "$bin")
ldd_out=$(ldd "$bin" 2>&1 || true)
if [[ $desc == *"static-pie linked"* || $desc == *"statically linked"* ]] ||
  [[ $ldd_out == *"not a dynamic executable"* || $ldd_out == *"statically linked"* ]]; then
  echo "static: $desc" >&2
else
  echo "error: $bin is not static" >&2
  echo "file: $desc" >&2
  echo "ldd: $ldd_out" >&2
  exit 1
fi
echo "size: $(stat -c %s "$bin") bytes" >&2
readlink -f "$bin"
