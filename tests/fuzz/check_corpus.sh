#!/bin/sh
# test_fuzz_corpus: the committed seeds and dictionary are exactly what fuzz_corpus_gen writes,
# and the corpus folders hold nothing else but kept inputs that once broke a target (crash-*,
# leak-*, timeout-*, oom-*, as libFuzzer names them).
# Usage: check_corpus.sh FUZZ_CORPUS_GEN TESTS_FUZZ_DIR
set -eu
gen=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$gen" "$tmp"
status=0
n=0
for f in $(cd "$tmp" && find . -type f | sort); do
	n=$((n + 1))
	if ! cmp -s "$tmp/$f" "$src/$f"; then
		echo "FAIL: $f differs from what fuzz_corpus_gen writes (regenerate: see tests/fuzz/README.md)"
		status=1
	fi
done
for f in $(cd "$src/corpus" && find . -type f | sort); do
	case $(basename "$f") in
	crash-* | leak-* | timeout-* | oom-*) continue ;;
	esac
	if [ ! -e "$tmp/corpus/$f" ]; then
		echo "FAIL: corpus/$f is neither generated nor a kept crash-* input"
		status=1
	fi
done
[ "$n" -gt 0 ] || { echo "FAIL: fuzz_corpus_gen wrote nothing"; exit 1; }
echo "$n generated files checked"
exit $status
