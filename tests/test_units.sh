#!/usr/bin/env bash
# The systemd units: systemd-analyze verify (offline) on the build-tree copies, the security
# exposure of the service (printed, at most 2.0), a comment above every directive group of
# the service, and the example config: accepted by the daemon's own parser and naming every
# key the parser knows.
# Usage: test_units.sh UNITDIR MANDIR DAEMON EXAMPLE. Exit 0 pass, 1 fail, 77 skip.
set -uo pipefail
unitdir=$1 mandir=$2 daemon=$3 example=$4
fail() { echo "FAIL: $*"; exit 1; }
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze (apt-get install systemd)"; exit 77; }

# systemd-analyze makes its scratch folders under $TMPDIR: keep them in ours.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/layerbank-test.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
export TMPDIR=$tmp

# verify also runs man for each Documentation= page: MANPATH finds the project's.
out=$(MANPATH=$mandir systemd-analyze verify "$unitdir/layerbankd.service" "$unitdir/layerbankd.socket" 2>&1)
rc=$?
echo "systemd-analyze verify: exit $rc${out:+, said:}"
[ -n "$out" ] && echo "$out"
[ $rc -eq 0 ] || fail "verify failed"
[ -z "$out" ] || fail "verify printed warnings"

out=$(systemd-analyze security --offline=true --no-pager "$unitdir/layerbankd.service" 2>&1)
rc=$?
echo "$out" | grep -E '✗|Overall'
exposure=$(echo "$out" | sed -n 's/.*Overall exposure level for layerbankd.service: \([0-9.]*\).*/\1/p')
[ $rc -eq 0 ] && [ -n "$exposure" ] || fail "systemd-analyze security gave no exposure (exit $rc): $out"
echo "security exposure of layerbankd.service: $exposure (limit 2.0)"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure > 2.0"

# Every group of directives in the unit files follows a comment saying why.
for unit in "$unitdir/layerbankd.service" "$unitdir/layerbankd.socket"; do
	bad=$(awk '/^\[/ { prev = "section"; next }
		/^#/ { prev = "comment"; next }
		/^$/ { prev = "blank"; next }
		/=/ { if (prev == "blank" || prev == "section") { if ($0 !~ /^(Description|Documentation|WantedBy|Also)=/) print FILENAME ":" NR ": " $0 }
		      prev = "directive" }' "$unit")
	[ -z "$bad" ] || fail "directives without a comment above them:
$bad"
done

# The example config: every value accepted by the daemon's parser ...
out=$("$daemon" --config "$example" --check-config 2>&1) || fail "the daemon rejects $example: $out"
echo "$out"
# ... and every key the parser knows is in it (the parser lists them for an unknown key).
printf 'no-such-key = 1\n' >"$tmp/bad.conf"
keys=$("$daemon" --config "$tmp/bad.conf" --check-config 2>&1 | sed -n 's/.*(keys: \(.*\)).*/\1/p' | tr -d ',')
[ -n "$keys" ] || fail "the daemon did not list its config keys"
for k in $keys; do
	grep -qE "^$k = " "$example" || fail "$example does not set key '$k'"
done
echo "example config sets every key: $keys"
echo "PASS"
