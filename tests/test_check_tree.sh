#!/usr/bin/env bash
# scripts/check-tree passes on the tree as it is and fails, naming the rule, on each deliberate
# break: a private header of libclient/ included by daemon/ and the reverse, a component circle,
# a header circle, a table that allows a circle, a long function, an unpinned ABI field.
# Usage: test_check_tree.sh SOURCE_DIR. Exit 0 pass, 1 fail, 77 skip.
set -uo pipefail
src=$1
command -v python3 >/dev/null || { echo "SKIP: no python3 (apt-get install python3)"; exit 77; }
command -v git >/dev/null || { echo "SKIP: no git"; exit 77; }
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
status=0

# A fresh copy of the tree's C files, README.md and the script, as git sees them.
fresh() {
	rm -rf "$tmp/tree" && mkdir -p "$tmp/tree" || exit 1
	(cd "$src" && git ls-files --cached --others --exclude-standard -- '*.c' '*.h' README.md \
		scripts/check-tree | while read -r f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
		xargs -0 cp --parents -t "$tmp/tree") || exit 1
}

# expect STATUS PATTERN DESCRIPTION: run the check on the copy.
expect() {
	local want=$1 pattern=$2 what=$3 out rc
	out=$("$tmp/tree/scripts/check-tree" "$tmp/tree" 2>&1)
	rc=$?
	if [ "$rc" -ne "$want" ] || ! grep -q -- "$pattern" <<<"$out"; then
		echo "FAIL: $what: exit $rc (want $want), output lacks '$pattern':"
		echo "$out"
		status=1
	else
		echo "ok: $what"
	fi
}

# add_line FILE LINE: put LINE after the file's first #include.
add_line() {
	awk -v l="$2" '!done && /^#include/ { print; print l; done = 1; next } { print }' \
		"$tmp/tree/$1" >"$tmp/x" && mv "$tmp/x" "$tmp/tree/$1"
}

fresh
expect 0 "hold" "the tree as it is"

fresh
add_line daemon/store.c '#include "../libclient/client_internal.h"'
expect 1 "daemon/ may not include libclient/" "daemon/ including libclient's private header"
expect 1 "private to libclient/" "the same, as a private header"

fresh
add_line libclient/dataplane.c '#include "store.h"'
expect 1 "libclient/ may not include daemon/" "libclient/ including a daemon header"

fresh
add_line proto/lbp.h '#include "config.h"'
expect 1 "components include each other in a circle" "proto/ including daemon/: a circle"

fresh
add_line util/size.h '#include "errf.h"'
add_line util/errf.h '#include "size.h"'
expect 1 "headers include each other in a circle" "two headers including each other"

fresh
sed -i 's/^\(| `util\/` | .* | \)— |$/\1`daemon\/` |/' "$tmp/tree/README.md"
expect 1 "table allows a circle" "a layout table that allows a circle"

fresh
{
	echo 'int check_tree_long(int x);'
	echo 'int check_tree_long(int x)'
	echo '{'
	for i in $(seq 1 100); do echo "	x += $i;"; done
	echo '	return x;'
	echo '}'
} >>"$tmp/tree/daemon/models.c"
expect 1 "check_tree_long is 103 lines" "a function of 103 lines in daemon/"

fresh
sed -i 's/^\(\tuint32_t seq_len;.*tokens; hidden states.*\)$/\1\n\tuint32_t unpinned;/' \
	"$tmp/tree/include/layerbank/layerbank.h"
expect 1 "struct lb_key.unpinned is not pinned" "a public struct field without LB_ABI_FIELD"

exit $status
