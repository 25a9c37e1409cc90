#!/usr/bin/env bash
# Re-vendor OpenSeadragon from its npm package into runtime/view/static/openseadragon/ (only the files the
# viewer page loads, and the licence), then check the checksum recorded in VENDORED.md.
#   bash scripts/vendor_openseadragon.sh            # the pinned version
#   bash scripts/vendor_openseadragon.sh 6.2.0      # another one: update VENDORED.md's version and sha256 after
set -euo pipefail
VERSION="${1:-6.1.1}"
DEST="$(cd "$(dirname "$0")/.." && pwd)/runtime/view/static/openseadragon"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "openseadragon@$VERSION" >/dev/null && tar xzf "openseadragon-$VERSION.tgz")
cp "$WORK/package/build/openseadragon/openseadragon.min.js" "$WORK/package/LICENSE.txt" "$DEST/"
head -1 "$DEST/openseadragon.min.js"
(cd "$DEST" && sha256sum openseadragon.min.js)
grep -q "$(cd "$DEST" && sha256sum openseadragon.min.js | cut -d' ' -f1)" "$DEST/VENDORED.md" \
    && echo "checksum matches VENDORED.md" || { echo "checksum differs from VENDORED.md" >&2; exit 1; }
