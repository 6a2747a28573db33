#!/usr/bin/env bash
# A wheel as a user gets it: installed into a fresh virtualenv (no index,
# no build), then `python -m ferry serve` started from it, and README.md's
# Python examples and a `ferry` verb run against that broker. Stopped by
# PID; everything in a temporary directory.
#   scripts/check-wheel.sh WHEEL
set -euo pipefail
wheel=$(realpath "${1:?a .whl file}")
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install -q --no-index --disable-pip-version-check "$wheel"
"$dir/venv/bin/python" -m ferry serve --port 0 --http off --durability memory --data-dir "$dir/data" \
    >"$dir/serve.out" 2>"$dir/serve.err" &
pid=$!
for _ in $(seq 500); do grep -q '^listening' "$dir/serve.out" 2>/dev/null && break; sleep 0.02; done
address=$(awk '/^listening/ {print $2; exit}' "$dir/serve.out")
[ -n "$address" ] || { cat "$dir/serve.err" >&2; echo "check-wheel: python -m ferry serve did not start" >&2; exit 1; }
export FERRY_URL="ferry://$address"
"$dir/venv/bin/python" - "$dir" <<'PY'
import pathlib, re, subprocess, sys
examples = re.findall(r"```python\n(.*?)```", pathlib.Path("README.md").read_text(), re.S)
assert examples, "README.md has Python examples"
for i, code in enumerate(examples):
    path = pathlib.Path(sys.argv[1]) / f"example{i}.py"
    path.write_text(code)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    print(f"check-wheel: README example {i}: {len(out.stdout.splitlines())} lines")
PY
"$dir/venv/bin/ferry" put wheel-check hello >/dev/null
[ "$("$dir/venv/bin/ferry" get wheel-check)" = hello ]
kill "$pid"; wait "$pid" || true; pid=
echo "check-wheel: $(basename "$wheel") installs and runs"
