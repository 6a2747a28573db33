#!/usr/bin/env bash
# The release artifacts, into dist/: the `ferry` binary as a tarball
# (with the README and docs), and the Python package as an abi3 wheel
# (manylinux, from maturin) and an sdist. The wheel is then checked as a
# user installs it (scripts/check-wheel.sh).
#   scripts/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
target=$(rustc -vV | awk '/^host:/ {print $2}')
rm -rf dist && mkdir -p dist
cargo build --release -p ferry-cli
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
name="ferry-$version-$target"
mkdir -p "$stage/$name"
cp target/release/ferry README.md "$stage/$name/"
cp -r docs "$stage/$name/docs"
tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
[ -x .venv/bin/maturin ] || { python3 -m venv .venv && .venv/bin/pip install -q maturin; }
(cd python && ../.venv/bin/maturin build --release --out ../dist && ../.venv/bin/maturin sdist --out ../dist)
scripts/check-wheel.sh dist/*.whl
ls -l dist
