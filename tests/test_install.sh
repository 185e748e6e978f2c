#!/usr/bin/env bash
# cmake --install into a temporary prefix, then check what landed there (binaries, SONAME,
# headers, layerbank.pc, the CMake package, units, man pages) and build two out-of-tree
# consumers, one with pkg-config and one with find_package(layerbank) (shared and static),
# which talk to the installed layerbankd.
# Usage: test_install.sh BUILD_DIR SOURCE_DIR SANITIZE. Exit 0 pass, 1 fail, 77 skip.
set -uo pipefail
build=$1 src=$2 sanitize=${3:-}
if [ -n "$sanitize" ]; then
	# The consumers would link a sanitized liblayerbank without the sanitizer runtime.
	echo "SKIP: a sanitizer build ($sanitize) installs sanitized libraries; the plain build runs this test"
	exit 77
fi
for tool in pkg-config readelf cc cmake; do
	command -v $tool >/dev/null || { echo "SKIP: $tool is missing"; exit 77; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/layerbank-test.XXXXXX") || exit 1
daemon_pid=
cleanup() {
	if [ -n "$daemon_pid" ]; then
		kill -KILL "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$tmp/daemon.log" ] && cat "$tmp/daemon.log"; exit 1; }
prefix=$tmp/prefix
export TMPDIR=$tmp

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "cmake --install"; }

for f in sbin/layerbankd bin/layerbank-ctl lib/liblayerbank.so lib/liblayerbank.a \
	include/layerbank/layerbank.h include/layerbank/ring.h include/layerbank/shm.h \
	lib/pkgconfig/layerbank.pc lib/cmake/layerbank/layerbankConfig.cmake \
	lib/cmake/layerbank/layerbankConfigVersion.cmake \
	share/man/man1/layerbank-ctl.1 share/man/man3/liblayerbank.3 share/man/man8/layerbankd.8 \
	lib/systemd/system/layerbankd.service lib/systemd/system/layerbankd.socket \
	lib/sysusers.d/layerbank.conf lib/tmpfiles.d/layerbank.conf etc/layerbank/layerbankd.conf \
	share/doc/layerbank/examples/60-layerbank-hugepages.conf; do
	[ -e "$prefix/$f" ] || fail "$f was not installed"
done
# Only the public headers: nothing private next to them.
extra=$(cd "$prefix/include" && find . -type f ! -path './layerbank/*')
[ -z "$extra" ] || fail "headers outside include/layerbank: $extra"
soname=$(readelf -d "$prefix/lib/liblayerbank.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = liblayerbank.so.0 ] || fail "SONAME is '$soname', expected liblayerbank.so.0"
[ -e "$prefix/lib/$soname" ] || fail "$soname is not installed"
echo "installed: SONAME $soname, headers, layerbank.pc, CMake package, units, man pages"
# Only lb_* symbols leave the shared library.
leaked=$(nm -D --defined-only "$prefix/lib/liblayerbank.so" | awk '$2 ~ /[TDBR]/ && $3 !~ /^lb_/ { print $3 }')
[ -z "$leaked" ] || fail "liblayerbank.so exports non-lb_ symbols: $leaked"

# The installed daemon, in this folder.
sock=$tmp/lb.sock
"$prefix/sbin/layerbankd" --foreground --socket "$sock" --arena-size 8M --hugepages off \
	>"$tmp/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1000); do
	[ -S "$sock" ] && break
	kill -0 "$daemon_pid" 2>/dev/null || fail "the installed layerbankd exited"
	sleep 0.01
done
[ -S "$sock" ] || fail "the installed layerbankd never listened on $sock"

# 1. pkg-config
PKG_CONFIG_PATH=$prefix/lib/pkgconfig "$src/tests/consumers/pkgconfig/build.sh" "$tmp/consumer_pc" \
	|| fail "the pkg-config consumer did not build"
"$tmp/consumer_pc" "$sock" || fail "the pkg-config consumer failed"
echo "pkg-config consumer: ok ($(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs layerbank))"

# 2. find_package(layerbank), shared and static
cmake -S "$src/tests/consumers/cmake" -B "$tmp/cbuild" -DCMAKE_PREFIX_PATH="$prefix" \
	>"$tmp/cmake.log" 2>&1 && cmake --build "$tmp/cbuild" >>"$tmp/cmake.log" 2>&1 \
	|| { cat "$tmp/cmake.log"; fail "the find_package consumer did not build"; }
"$tmp/cbuild/consumer_shared" "$sock" || fail "the find_package consumer (shared) failed"
"$tmp/cbuild/consumer_static" "$sock" || fail "the find_package consumer (static) failed"
# Here-strings, not "producer | grep -q": under pipefail a producer killed by SIGPIPE when grep
# stops at its first match would turn a match into a failure.
grep -q 'NEEDED.*liblayerbank.so.0' <<<"$(readelf -d "$tmp/cbuild/consumer_shared")" \
	|| fail "consumer_shared does not use liblayerbank.so.0"
grep -q 'liblayerbank' <<<"$(readelf -d "$tmp/cbuild/consumer_static")" \
	&& fail "consumer_static links liblayerbank.so"
echo "find_package consumers (layerbank::layerbank, layerbank::layerbank_static): ok"

# The installed layerbank-ctl finds the installed library (RPATH $ORIGIN/../lib).
out=$("$prefix/bin/layerbank-ctl" --socket "$sock" stats --json) || fail "installed layerbank-ctl: $out"
grep -qE '"models": ?1' <<<"$out" || fail "stats: $out"

kill -TERM "$daemon_pid"
wait "$daemon_pid"
rc=$?
daemon_pid=
[ $rc -eq 0 ] || fail "layerbankd exited $rc on SIGTERM"
echo "PASS"
