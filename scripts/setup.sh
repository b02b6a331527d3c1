#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a Debian 12 machine, each step skipped when done:
# Debian packages (QGIS comes from apt, not pip), then .venv with the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# qgis (the desktop) and xauth (for xvfb-run): `make qgis` and the GUI smoke test
APT_PACKAGES=(python3-qgis qgis-providers python3-venv python3-pip pyqt5-dev-tools xvfb qgis xauth)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 2
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The venv sees the system's site-packages: that is how it gets QGIS's Python bindings.
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
  # label-maker pins packages that no longer build on Python 3.11: take it alone, its real needs come above
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt label-maker
  touch "$stamp"
fi
