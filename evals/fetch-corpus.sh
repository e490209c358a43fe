#!/bin/sh
# Fetch the third-party HTML corpus of evals/click-docs.jsonl: Click 8.1.3's Sphinx documentation from
# Debian 12's python-click-doc package, pinned to one version and checked by sha256, extracted (not
# installed) into $EVAL_CACHE/click-8.1.3/ (default .eval-cache/). The 23 content pages are kept; the
# generated index, search, 404 and module-index pages, _static/ and _sources/ are not.
set -eu
CACHE="${EVAL_CACHE:-.eval-cache}"
PKG=python-click-doc
VERSION=8.1.3-2
SHA256=066092b0299a04c2588e5f2e9dc37a8d8ed7a4c4eeb7cd3175ebfcfce24a8943
DEB="${PKG}_${VERSION}_all.deb"
OUT="$CACHE/click-8.1.3"

if [ -f "$OUT/.complete" ]; then
    echo "corpus ready: $OUT"
    exit 0
fi
mkdir -p "$CACHE"
if [ ! -f "$CACHE/$DEB" ]; then
    # apt-get download needs an up-to-date package list (apt-get update) naming this exact version.
    (cd "$CACHE" && apt-get download "$PKG=$VERSION")
fi
echo "$SHA256  $CACHE/$DEB" | sha256sum -c -
rm -rf "$CACHE/extract" "$OUT"
dpkg-deb -x "$CACHE/$DEB" "$CACHE/extract"
mkdir -p "$OUT"
cp "$CACHE/extract/usr/share/doc/$PKG/html/"*.html "$OUT/"
rm -f "$OUT/genindex.html" "$OUT/search.html" "$OUT/404.html" "$OUT/py-modindex.html"
rm -rf "$CACHE/extract"
touch "$OUT/.complete"
echo "corpus ready: $OUT ($(ls "$OUT" | wc -l) pages)"
