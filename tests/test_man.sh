#!/usr/bin/env bash
# Each man page renders with groff's man macros without a single warning (-ww).
# Usage: test_man.sh PAGE... Exit 0 pass, 1 fail, 77 skip.
set -uo pipefail
command -v groff >/dev/null || { echo "SKIP: no groff (apt-get install groff-base)"; exit 77; }
status=0
for page in "$@"; do
	out=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
	if [ -n "$out" ] || [ "$(groff -man -Tutf8 "$page" 2>/dev/null | wc -l)" -lt 10 ]; then
		echo "FAIL: $page"
		echo "$out"
		status=1
	else
		echo "ok: $page"
	fi
done
exit $status
