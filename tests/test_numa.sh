#!/usr/bin/env bash
# Opt-in (LAYERBANK_NUMA_TEST=1): a test command in a guest with two NUMA nodes, booted with
# qemu under TCG (no KVM needed): 2 vCPUs and 2 GiB, one CPU and 1 GiB on each node. The guest
# is a Debian kernel and a busybox initramfs holding the given files and every library they
# need; its /init (numa_guest_init) reserves hugepages on each node, checks that it sees two
# nodes, runs the command with a time limit and powers off. Nothing is installed on the host:
# the kernel and busybox-static come from `apt-get download`, extracted once into
# BUILD_DIR/numa-guest/ (the kernel package's boot/ only, not its 400 MB of modules).
#
# Run it:  LAYERBANK_NUMA_TEST=1 ctest --test-dir build -L numa -V   or   scripts/test-numa
# Usage: test_numa.sh BUILD_DIR [FILE...] -- COMMAND [ARG...]. Exit 0 pass, 1 fail, 77 skip.
#
# In the guest: each FILE (and COMMAND, when it is a file) sits at its host path, so paths
# compiled into the test binaries (LB_DAEMON_PATH) hold. COMMAND runs as root, with the cwd this
# script has (made in the guest), stdin /dev/null, TMPDIR=/tmp (a tmpfs; the root is a RAM
# file system too: it may write anywhere), LAYERBANK_NUMA_GUEST=1 and every LAYERBANK_*
# variable of this script's environment (CTest's ENVIRONMENT property), nothing else of it.
# Its status is the test's: 0 passes, anything else (77 too: the guest has two nodes by
# construction, a skip there is a failure) fails.
#
# Time, measured on a 2-core machine without KVM that others were loading too: the first run
# fetches 72 MB and unpacks the kernel (15 s here); a later one finds them cached (2-3 s, mostly
# apt-cache). The initramfs takes 1-2 s, the boot to /init 3-7 s, test_arena 2-5 s in the guest,
# power-off 2 s: 10-20 s in all, 30 s the first time. It prints its own figures at the end.
set -euo pipefail

skip() {
	echo "SKIP: $*"
	exit 77
}
[ "${LAYERBANK_NUMA_TEST:-}" = 1 ] \
	|| skip "boots a two-node guest under qemu (10-30 s); opt in with LAYERBANK_NUMA_TEST=1 (scripts/test-numa)"

t0=$EPOCHREALTIME
fail() {
	echo "FAIL: $*"
	exit 1
}
[ $# -ge 3 ] || fail "usage: test_numa.sh BUILD_DIR [FILE...] -- COMMAND [ARG...]"
build=$1
shift
files=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
	files+=("$1")
	shift
done
[ $# -ge 2 ] || fail "no command after --"
shift
cmd=("$@")
[ -f "${cmd[0]}" ] && files+=("${cmd[0]}")

# The guest: nodes, 2 MiB hugepages reserved on each, memory and CPUs.
NODES=2 HUGEPAGES=64 NODE_MEM=1G
KERNEL_META=linux-image-amd64
# What the kernel must have built in: there are no modules in the guest.
# KERNEL_XZ and PVH: this script unpacks the bzImage's XZ payload and qemu boots that ELF.
KERNEL_NEEDS=(BLK_DEV_INITRD RD_GZIP DEVTMPFS TMPFS SHMEM HUGETLBFS MEMFD_CREATE NUMA ACPI_NUMA
	SERIAL_8250 SERIAL_8250_CONSOLE PROC_FS SYSFS BINFMT_ELF KERNEL_XZ PVH)
# Seconds: apt-get, boot until /init, the command in the guest, power-off.
T_FETCH=600 T_BOOT=300 T_TEST=1200 T_POWEROFF=60

for tool in apt-get apt-cache dpkg-deb ldd gzip flock timeout awk od dd; do
	command -v $tool >/dev/null || fail "$tool is missing"
done
# What scripts/test-numa installs, installed here too when this runs as root without it.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || fail "missing: apt-get install ${need[*]} (scripts/test-numa does)"
	echo "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive timeout "$T_FETCH" apt-get install -y -qq --no-install-recommends \
		"${need[@]}" >/dev/null || fail "apt-get install ${need[*]} failed"
fi

build=$(cd "$build" && pwd)
cache=$build/numa-guest
run=$(mktemp -d "${TMPDIR:-/tmp}/layerbank-numa.XXXXXX")
qemu_pid=''
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	if [ -n "$qemu_pid" ]; then
		kill -TERM "$qemu_pid" 2>/dev/null
		for _ in $(seq 50); do
			kill -0 "$qemu_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$qemu_pid" 2>/dev/null
		wait "$qemu_pid" 2>/dev/null
	fi
	rm -rf "$run"
	exit $rc
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 1' INT TERM
say() { echo "test_numa: $*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# Print the last lines of a log.
show() {
	echo "---- last lines of $(basename "$1") ----"
	tail -n "${2:-40}" "$1" | tr -d '\r'
	echo "----"
}

# ---- 1. the kernel and busybox: apt-get download once, cached by package and version -------

# The kernel package the metapackage depends on (linux-image-6.1.0-NN-amd64).
kernel_package() {
	apt-cache depends "$KERNEL_META" 2>/dev/null \
		| awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
# "PACKAGE VERSION" a line: the candidates, in one call (apt-cache reads every list each time).
candidates() {
	apt-cache policy "$@" 2>/dev/null \
		| awk '/^[^ ]/ { p = $1; sub(/:$/, "", p) } $1 == "Candidate:" && $2 != "(none)" { print p, $2 }'
}
# fetch PACKAGE VERSION WHAT...: PACKAGE's folder in the cache, with WHAT (paths in the package:
# ./boot, ./bin/busybox) extracted there; downloaded first when missing. Prints the folder.
# apt's last error, if it fails, is in $run/apt.log (apt_error prints it).
fetch() {
	local pkg=$1 ver=$2 dir dl deb
	shift 2
	dir=$cache/${pkg}_${ver//:/%3a}
	if [ ! -e "$dir/.done" ]; then
		echo "test_numa: fetching $pkg $ver with apt-get download" >&2
		dl=$run/dl-$pkg
		mkdir -p "$dl"
		# As root, apt's sandbox user could not write into this private folder.
		(cd "$dl" && timeout "$T_FETCH" apt-get download -q -o APT::Sandbox::User="$(id -un)" \
			"$pkg=$ver") >"$run/apt.log" 2>&1 || return 1
		deb=$(echo "$dl"/*.deb)
		rm -rf "$dir.new"
		mkdir -p "$dir.new"
		dpkg-deb --fsys-tarfile "$deb" | tar -xf - -C "$dir.new" "$@" || return 1
		rm -rf "$dir" "$dl"
		mv "$dir.new" "$dir"
		touch "$dir/.done"
	fi
	echo "$dir"
}
apt_error() {
	grep -h '^E: ' "$run/apt.log" 2>/dev/null | tail -n 1 | sed 's/^/: /'
}
# vmlinux_unpack VMLINUZ OUT: the kernel uncompressed. qemu boots an ELF vmlinux through its PVH
# entry, which spares the emulated CPU the bzImage's XZ decompression (5-7 s of a 15 s boot
# here). Where the payload is, the boot header says: setup_sects at 0x1f1, payload_offset and
# payload_length at 0x248 and 0x24c; its last 4 bytes are the uncompressed size, not XZ.
vmlinux_unpack() {
	local setup off len
	setup=$(od -An -t u1 -j $((0x1f1)) -N 1 "$1" | tr -d ' ')
	[ "$setup" -ne 0 ] || setup=4
	off=$(od -An -t u4 -j $((0x248)) -N 4 "$1" | tr -d ' ')
	len=$(od -An -t u4 -j $((0x24c)) -N 4 "$1" | tr -d ' ')
	dd if="$1" iflag=skip_bytes,count_bytes skip=$(((setup + 1) * 512 + off)) count=$((len - 4)) \
		status=none | xz -dc >"$2.new" || return 1
	[ "$(head -c 4 "$2.new" | od -An -c | tr -d ' ')" = '177ELF' ] || return 1
	mv "$2.new" "$2"
}

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -w "$T_FETCH" 9 || fail "another test_numa holds $cache/lock"
kpkg=$(kernel_package)
if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then
	say "apt does not know $KERNEL_META: apt-get update"
	timeout "$T_FETCH" apt-get update -qq >/dev/null 2>&1 || true
	kpkg=$(kernel_package)
fi
[ -n "$kpkg" ] || fail "cannot fetch the guest kernel: apt-cache finds no linux-image package that $KERNEL_META depends on (apt-get update?)"
declare -A ver=()
while read -r p v; do ver[$p]=$v; done < <(candidates "$kpkg" busybox-static)
[ -n "${ver[$kpkg]:-}" ] && [ -n "${ver[busybox-static]:-}" ] \
	|| fail "cannot fetch the guest kernel and busybox: apt-cache has no version of $kpkg or busybox-static"
kdir=$(fetch "$kpkg" "${ver[$kpkg]}" ./boot) \
	|| fail "cannot fetch the guest kernel $kpkg ${ver[$kpkg]} with apt-get download$(apt_error)"
bdir=$(fetch busybox-static "${ver[busybox-static]}" ./bin/busybox) \
	|| fail "cannot fetch busybox-static ${ver[busybox-static]} with apt-get download$(apt_error)"
vmlinuz=$(echo "$kdir"/boot/vmlinuz-*)
kconfig=$(echo "$kdir"/boot/config-*)
[ -f "$vmlinuz" ] && [ -f "$kconfig" ] || fail "$kdir has no boot/vmlinuz-* and boot/config-*"
missing=()
for opt in "${KERNEL_NEEDS[@]}"; do
	grep -qx "CONFIG_$opt=y" "$kconfig" || missing+=("$opt")
done
[ ${#missing[@]} -eq 0 ] || fail "$(basename "$vmlinuz") does not have built in: ${missing[*]}"
vmlinux=$kdir/vmlinux
[ -f "$vmlinux" ] || vmlinux_unpack "$vmlinuz" "$vmlinux" || fail "cannot unpack the ELF kernel from $vmlinuz"
# Older versions go: one kernel and one busybox stay in the cache.
for d in "$cache"/linux-image-* "$cache"/busybox-static_*; do
	[ "$d" = "$kdir" ] || [ "$d" = "$bdir" ] || rm -rf "$d"
done
exec 9>&-
t_fetch=$(since "$t0")
say "kernel $(basename "$vmlinuz") ($kpkg ${ver[$kpkg]}, booted as its ELF vmlinux), busybox ${ver[busybox-static]}"

# ---- 2. the initramfs: busybox, /init, the files at their host paths, their libraries ----------

t_initrd=$EPOCHREALTIME
root=$run/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,root,etc,numa-test}
cp "$bdir/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh" # the other applets' links: /init makes them (busybox --install)
install -m 755 "$(dirname "${BASH_SOURCE[0]}")/numa_guest_init" "$root/init"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

# put PATH: copy a file (or a folder) to the same path in the guest.
put() {
	[ -e "$root$1" ] && return 0
	mkdir -p "$root$(dirname "$1")"
	cp -a -L "$1" "$root$1"
}
libs=()
for f in "${files[@]}"; do
	[ -e "$f" ] || fail "$f does not exist"
	f=$(realpath -s "$f")
	put "$f"
	[ -f "$f" ] || continue
	# ldd fails on what is not a dynamic executable (a script, a static binary): nothing to add.
	out=$(ldd "$f" 2>/dev/null) || continue
	if grep -q 'not found' <<<"$out"; then
		fail "$f needs libraries ldd cannot find: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
	fi
	# "name => /path (addr)" and the loader's "/path (addr)"; not the vDSO.
	mapfile -t -O ${#libs[@]} libs < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
done
[ ${#libs[@]} -eq 0 ] || mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
for l in "${libs[@]}"; do
	put "$l"
done
# glibc loads libgcc_s with dlopen (thread cancellation, backtraces): ldd does not list it.
libc=$(printf '%s\n' "${libs[@]}" | grep -m1 '/libc\.so\.6$' || true)
[ -n "$libc" ] && [ -e "$(dirname "$libc")/libgcc_s.so.1" ] && put "$(dirname "$libc")/libgcc_s.so.1"

# q: one word quoted for sh.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
	echo "NODES=$NODES HUGEPAGES=$HUGEPAGES TIME_LIMIT=$T_TEST"
	echo "WORKDIR=$(q "$PWD")"
} >"$root/numa-test/config"
{
	line="export TMPDIR=/tmp LAYERBANK_NUMA_GUEST=1"
	while IFS='=' read -r name _; do
		case $name in LAYERBANK_NUMA_TEST | LAYERBANK_NUMA_GUEST) ;; LAYERBANK_*) line+=" $(q "$name=${!name}")" ;; esac
	done < <(env | grep -o '^LAYERBANK_[A-Za-z0-9_]*=' | sort -u)
	echo "$line"
	line='exec'
	for a in "${cmd[@]}"; do line+=" $(q "$a")"; done
	echo "$line"
} >"$root/numa-test/command"

# newc_node NAME MODE MAJOR MINOR: one cpio newc entry for a device node. The kernel opens
# /dev/console for /init before anything is mounted; writing the entry by hand needs no root.
newc_node() {
	local name=$1 namesize=$((${#1} + 1)) pad
	printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
		1 "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
	printf '%s\0' "$name"
	pad=$(((4 - (110 + namesize) % 4) % 4))
	head -c "$pad" /dev/zero
}
initrd=$run/initramfs.gz
{
	(cd "$root" && find . -mindepth 1 | "$root/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null)
	newc_node dev/console $((0020600)) 5 1
	newc_node TRAILER!!! 0 0 0
} | gzip -1 >"$initrd"
t_initrd=$(since "$t_initrd")
say "initramfs $(du -k "$initrd" | cut -f1) KiB: busybox, /init, file(s) ${#files[@]}, libraries ${#libs[@]}"

# ---- 3. boot: two nodes, one CPU and 1 GiB each; the console into this run's folder --------

log=$run/console.log
# quiet: only warnings reach the console (the emulated UART is slow); panic=-1 and
# -no-reboot: a guest that panics or whose /init exits ends qemu; random.trust_cpu: no wait
# for entropy; mitigations=off: TCG has no side channels to fear, and they cost time here.
append="console=ttyS0 panic=-1 quiet random.trust_cpu=on mitigations=off"
qemu=(qemu-system-x86_64 -accel tcg -machine q35 -cpu max -smp "$NODES,sockets=$NODES,cores=1,threads=1"
	-m "$((NODES * ${NODE_MEM%G}))G")
for ((n = 0; n < NODES; n++)); do
	qemu+=(-object "memory-backend-ram,id=m$n,size=$NODE_MEM" -numa "node,nodeid=$n,cpus=$n,memdev=m$n")
done
# -nodefaults -nic none: no VGA, no network card; the only device the guest talks to is ttyS0.
qemu+=(-nographic -nodefaults -nic none -serial stdio -no-reboot
	-kernel "$vmlinux" -initrd "$initrd" -append "$append")
deadline=$((T_BOOT + T_TEST + T_POWEROFF))
say "booting: ${qemu[*]}"
t_qemu=$EPOCHREALTIME
# timeout: qemu ends even if this script is killed before its trap runs.
timeout -k 10 "$deadline" "${qemu[@]}" </dev/null >"$log" 2>&1 &
qemu_pid=$!

# When /init starts and when the test begins and ends, by this host's clock (the guest's runs
# slow: its TSC is marked unstable and it keeps time by the emulated HPET).
t_init='' t_begin='' t_end=''
end=$((SECONDS + deadline))
marks() {
	[ -n "$t_init" ] || ! grep -q 'numa-guest: init' "$log" || t_init=$(since "$t_qemu")
	[ -n "$t_begin" ] || ! grep -q '^NUMA-TEST-BEGIN' "$log" || t_begin=$EPOCHREALTIME
	[ -n "$t_end" ] || ! grep -q '^NUMA-TEST-END' "$log" || t_end=$EPOCHREALTIME
}
while kill -0 "$qemu_pid" 2>/dev/null && [ $SECONDS -lt $end ]; do
	marks
	if [ -z "$t_init" ] && [ $SECONDS -ge $((end - T_TEST - T_POWEROFF)) ]; then
		break # no /init within T_BOOT
	fi
	sleep 0.2
done
marks
timed_out=''
if kill -0 "$qemu_pid" 2>/dev/null; then
	timed_out=1
	kill -TERM "$qemu_pid" 2>/dev/null || true
fi
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=''
t_guest=$(since "$t_qemu")

# ---- 4. what the guest said -----------------------------------------------------------------
# Without the carriage returns and the terminal escapes SeaBIOS and the kernel print (a reset and
# a screen clear, on the same line as the first line of /init).
sed -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[A-Za-z]//g' "$log" >"$run/console.txt"
echo "---- the guest ----"
awk '/^NUMA-TEST-BEGIN$/ { inside = 1; next } /^NUMA-TEST-END$/ { inside = 0; next }
	inside || /^numa-guest: / || /^NUMA-TEST-EXIT / { print }' "$run/console.txt"
echo "----"
status=$(sed -n 's/^NUMA-TEST-EXIT \([0-9]*\)$/\1/p' "$run/console.txt" | tail -n 1)
t_test='?'
[ -n "$t_begin" ] && [ -n "$t_end" ] && t_test=$(awk -v a="$t_begin" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')
say "fetch and checks ${t_fetch}s, initramfs ${t_initrd}s, boot to /init ${t_init:-?}s, test ${t_test}s, qemu in all ${t_guest}s; total $(since "$t0")s"
if [ -z "$status" ]; then
	show "$log"
	[ -n "$timed_out" ] && [ -z "$t_init" ] && fail "the guest did not reach /init within ${T_BOOT}s"
	[ -n "$timed_out" ] && fail "the guest did not finish within ${deadline}s (qemu killed)"
	fail "the guest ended without a NUMA-TEST-EXIT line (qemu exited $qemu_rc)"
fi
grep -q '^numa-guest: check FAIL' "$run/console.txt" && fail "the guest does not have the layout asked for"
[ "$status" -eq 0 ] || fail "the test exited $status in the guest$([ "$status" -eq 77 ] && echo ' (a skip: the guest has two nodes, so this is a failure)')"
[ -n "$timed_out" ] && fail "the test passed but the guest did not power off (qemu killed)"
echo "PASS"
