#!/usr/bin/env bash
# Install the Debian command-line tools cohortstream calls, with apt, when missing.
# One place for this list: `make up` runs `deploy/install_tools.sh cli`, tests/run.sh
# runs `deploy/install_tools.sh test`.
#
#   cli   what the CLI and services themselves call:
#         dcm2niix   converts series to NIfTI for `cohortstream export bids`
#   test  cli, plus the independent clients the integration tests drive:
#         dcmtk      storescu/echoscu, the DICOM sender the listener tests push with
#         dicom3tools  dciodvfy, checks the DICOM SEG objects the annotation worker writes
#         chromium   the real browser the dashboard test drives with Playwright
#
# Idempotent: installs only what is missing (apt-get update only when the first install
# attempt fails). Runs apt as root, or through sudo. Exit status non-zero, with the
# missing packages named, when they could not be installed.
set -euo pipefail

profile="${1:-cli}"
case "$profile" in
  cli|test) ;;
  *) echo "usage: $0 [cli|test]" >&2; exit 2 ;;
esac

missing=()
command -v dcm2niix >/dev/null || missing+=(dcm2niix)
if [[ "$profile" == test ]]; then
  # Call dcmtk by full path: a venv's pynetdicom installs its own `storescu`.
  [[ -x /usr/bin/storescu ]] || missing+=(dcmtk)
  command -v dciodvfy >/dev/null || missing+=(dicom3tools)
  [[ -x /usr/lib/chromium/chromium ]] || command -v chromium >/dev/null || missing+=(chromium)
fi
(( ${#missing[@]} )) || exit 0

echo "== installing ${missing[*]} (apt)"
as_root=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "install_tools: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
apt_install() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
apt_install 2>/dev/null \
  || { "${as_root[@]}" apt-get update -q >/dev/null && apt_install; } \
  || { echo "install_tools: apt-get install ${missing[*]} failed" >&2; exit 1; }
