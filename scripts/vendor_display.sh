#!/usr/bin/env bash
# The caption display's third-party files (daemon/display/vendor/) are pinned npm
# packages' dist files, listed in daemon/display/vendor/VENDORED with their sha256.
# This fetches those exact versions from the npm registry (`npm pack`) and checks that
# the vendored files are unchanged copies (default), or copies them in (--update, after
# changing a version in VENDORED; then fix the sha256 column from the printed values).
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=daemon/display/vendor
mode="${1:-check}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
while read -r package file target sha; do
  case "$package" in ''|'#'*) continue ;; esac
  dir="$work/${package//[@\/]/_}"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
  fi
  got="$(sha256sum "$dir/package/$file" | cut -d' ' -f1)"
  if [ "$mode" = --update ]; then
    cp "$dir/package/$file" "$vendor/$target"
    echo "vendor: $package $file -> $target  $got"
  elif [ "$got" != "$sha" ] || ! cmp -s "$dir/package/$file" "$vendor/$target"; then
    echo "vendor: $target differs from $package $file (registry sha256 $got)" >&2
    status=1
  else
    echo "vendor: $target = $package $file"
  fi
done <"$vendor/VENDORED"
exit "$status"
