#!/usr/bin/env bash
# Install the OHIF viewer (with the MONAI Label extension and mode) that the API serves
# at /ohif/: the ready-built files of PyPI's pinned monailabel wheel, without installing
# monailabel or any of its dependencies (`pip download --no-deps`, then unzip the files).
#
#   $CACHE/ohif/monailabel-0.8.5/ohif/       the build (source maps left out)
#   $CACHE/ohif/monailabel-0.8.5/licenses/   MONAI Label's LICENSE (Apache-2.0), the
#                                            extension's and mode's LICENSE files (MIT),
#                                            the build's third-party notices (*.LICENSE.txt)
#                                            and OHIF-NOTICE (OHIF itself: MIT)
#   $CACHE/ohif/monailabel-0.8.5/SOURCE      where the files came from (wheel name, sha256)
#
# Idempotent: does nothing when the build is already in the cache. `make up` runs it.
set -euo pipefail

VERSION=0.8.5
CACHE_DIR="${COHORTSTREAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cohortstream}"
DEST="$CACHE_DIR/ohif/monailabel-$VERSION"
PIP="$CACHE_DIR/tools/bin/pip"
[[ -x "$PIP" ]] || PIP="$(command -v pip3 || command -v pip)"

[[ -f "$DEST/ohif/index.html" && -f "$DEST/SOURCE" ]] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== downloading monailabel==$VERSION (wheel only, no dependencies) for its OHIF build"
"$PIP" download --quiet --no-deps --only-binary=:all: "monailabel==$VERSION" -d "$work/wheel"
wheel="$(ls "$work"/wheel/monailabel-*.whl)"
python3 - "$wheel" "$work/out" <<'PY'
import pathlib, sys, zipfile
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "monailabel/endpoints/static/ohif/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith("/"):
            continue
        if name.startswith(prefix) and not name.endswith(".map"):
            target = out / "ohif" / name[len(prefix):]
        elif name.endswith(".dist-info/LICENSE"):
            target = out / "licenses" / "monailabel-LICENSE"
        elif "/plugins/ohifv3/" in name and name.endswith("/LICENSE"):
            kind = name.split("/plugins/ohifv3/")[1].split("/")[0]  # extensions | modes
            target = out / "licenses" / f"ohif-monai-label-{kind}-LICENSE"
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(name))
    for notice in (out / "ohif").rglob("*.LICENSE.txt"):
        rel = notice.relative_to(out / "ohif")
        dest = out / "licenses" / "third-party" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(notice.read_bytes())
PY
[[ -f "$work/out/ohif/index.html" ]] || { echo "install_ohif: $wheel has no OHIF build" >&2; exit 1; }
# The wheel carries no licence file of OHIF itself: say where it is.
cat > "$work/out/licenses/OHIF-NOTICE" <<'NOTICE'
The viewer in ../ohif/ is a build of the OHIF Viewer 3.10.0-beta.5 (Open Health Imaging
Foundation, https://github.com/OHIF/Viewers), MIT License, with the MONAI Label extension
and mode (MIT, see ohif-monai-label-*-LICENSE), as shipped in the monailabel 0.8.5 wheel
(Apache-2.0, see monailabel-LICENSE). Third-party notices kept by the build's bundler are
in third-party/. OHIF's licence text: https://github.com/OHIF/Viewers/blob/master/LICENSE
NOTICE
printf 'monailabel %s wheel %s sha256 %s\nfiles: monailabel/endpoints/static/ohif/ without *.map\n' \
  "$VERSION" "$(basename "$wheel")" "$(sha256sum "$wheel" | cut -d' ' -f1)" > "$work/out/SOURCE"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp" && mv "$work/out" "$DEST.tmp" && rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "== OHIF viewer installed in $DEST/ohif ($(du -sh "$DEST/ohif" | cut -f1))"
