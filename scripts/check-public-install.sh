#!/usr/bin/env bash
# Does the pinned install resolve against the public package index alone, as on a user's machine?
# Resolves (pip --dry-run, nothing installed) what scripts/setup.sh installs, with pip's configuration turned off
# (PIP_CONFIG_FILE=/dev/null: no local wheel folder, no extra index), for Linux (this machine); and for macOS 14 on
# Apple silicon with uv (pip evaluates environment markers for the machine it runs on, uv for the platform asked for),
# binary wheels only, as a Mac without compilers needs them. Needs network access to PyPI.
#   bash scripts/check-public-install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
extras=$(sed -n 's/.*pip install.*-e "\?\.\[\([a-z,]*\)\].*/\1/p' scripts/setup.sh | head -1)
nodeps=$(sed -n 's/.*--no-deps \(.*\)$/\1/p' scripts/setup.sh | head -1)
[ -n "$extras" ] && [ -n "$nodeps" ] || { echo "cannot read the install lines of scripts/setup.sh" >&2; exit 2; }
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
PY=${PYTHON:-python3}
"$PY" -m venv "$d/v"
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= PIP_INDEX_URL= PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$d/v/bin/python" -m pip install -q --dry-run --ignore-installed -c requirements/constraints.txt)
check() {  # what, pip arguments...
  local what=$1; shift
  if out=$(timeout 900 "${pip[@]}" "$@" 2>&1); then
    echo "ok: $what resolves from the public index"
  else
    echo "FAIL: $what does not resolve from the public index:"; echo "$out" | grep -E 'ERROR|error|conflict|No matching' | head -5
    return 1
  fi
}
rc=0
check "linux: geosr[$extras]" -e ".[$extras]" || rc=1
check "linux: --no-deps $nodeps" --no-deps $nodeps || rc=1
"$d/v/bin/python" -m pip install -q -c requirements/constraints.txt uv  # the macOS check's resolver (pinned)
mac=(env MACOSX_DEPLOYMENT_TARGET=14.0 "$d/v/bin/uv" pip compile -q --no-config --index-url https://pypi.org/simple
     --python-platform aarch64-apple-darwin --python-version 3.11 --no-build -c requirements/constraints.txt -o /dev/null)
extra_args=$(echo "$extras" | sed 's/\([a-z]*\)/--extra \1/g; s/,/ /g')
if out=$("${mac[@]}" pyproject.toml $extra_args 2>&1); then
  echo "ok: macOS 14 arm64: geosr[$extras] resolves from the public index (binary wheels only)"
else
  echo "FAIL: macOS 14 arm64: geosr[$extras] does not resolve from the public index:"; echo "$out" | head -5; rc=1
fi
exit $rc
