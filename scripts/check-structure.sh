#!/usr/bin/env bash
# Issue 13's limits on product code (recipes, sidecar, operator, cli): no source file over 500
# lines, no function over 80 lines outside tests. Prints the largest of each; exits 1 over
# a limit. Test modules (`#[cfg(test)] mod ...` to the end of the file) are not counted
# for functions.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_FILE=500
MAX_FN=80
files=$(find recipes/src sidecar/src operator/src cli/src -name '*.rs' | sort)
status=0
largest_file=$(wc -l $files | grep -v ' total$' | sort -n | tail -1)
echo "largest product file: $largest_file lines (limit $MAX_FILE)"
while read -r lines file; do
  if [ "$lines" -gt "$MAX_FILE" ]; then echo "  over the limit: $file ($lines lines)"; status=1; fi
done < <(wc -l $files | grep -v ' total$')
# Functions: from a line that starts an fn item to the line whose indentation closes it.
fns=$(awk -v max="$MAX_FN" '
  FNR == 1 { in_tests = 0; open_fn = "" }
  /^#\[cfg\(test\)\]/ { in_tests = 1 }
  in_tests { next }
  open_fn == "" && match($0, /^( *)(pub(\([a-z]+\))? )?(async )?(const )?(unsafe )?fn [a-zA-Z0-9_]+/) {
    indent = RLENGTH - length(substr($0, RSTART, RLENGTH)) ; lead = $0; sub(/[^ ].*/, "", lead)
    name = $0; sub(/.*fn /, "", name); sub(/[^a-zA-Z0-9_].*/, "", name)
    if ($0 ~ /;[ ]*$/) next            # a declaration without a body
    if ($0 ~ /\}[ ]*$/ && $0 ~ /\{/) next  # a one-line fn
    open_fn = name; start = FNR; close_re = "^" lead "}"
    next
  }
  open_fn != "" && $0 ~ close_re { len = FNR - start + 1; print len, FILENAME ":" start, open_fn; open_fn = "" }
' $files | sort -n)
echo "largest functions:"; echo "$fns" | tail -5 | sed "s/^/  /"
echo "largest function: $(echo "$fns" | tail -1) (lines, place, name; limit $MAX_FN)"
while read -r len place name; do
  if [ "$len" -gt "$MAX_FN" ]; then echo "  over the limit: $name at $place ($len lines)"; status=1; fi
done <<< "$fns"
exit $status
