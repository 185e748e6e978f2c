# Shared by scripts/demo and scripts/test: install what is missing, configure and build.
# Sourced, not run. Uses: ROOT (the repository), BUILD (build folder).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}

# Debian 12 packages the build and the tests need.
LB_PACKAGES=(build-essential cmake pkg-config liburing-dev libnuma-dev libmsgpack-dev
	libcmocka-dev libjson-c-dev libxxhash-dev libopenblas-dev libsystemd-dev)
# A clang build (CI's sanitizer run) needs its sanitizer runtimes too.
[ "${CC:-}" = clang ] && LB_PACKAGES+=(clang libclang-rt-14-dev)

lb_say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

lb_install_deps() {
	local missing=() p
	for p in "${LB_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing packages: ${missing[*]}" >&2
		echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
	lb_say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
}

# lb_build DIR [cmake args...]
lb_build() {
	local dir=$1
	shift
	lb_say "configuring $dir"
	cmake -S "$ROOT" -B "$dir" "$@" >/dev/null
	lb_say "building $dir"
	cmake --build "$dir" -j"$(nproc)"
}

# Reserve hugepages (root only) so the hugetlb paths run for real; lb_hugepages_restore puts
# back what was there. Prints what it did.
LB_HP_ORIG=
lb_hugepages_reserve() {
	local want=$1 file=/proc/sys/vm/nr_hugepages free
	[ "$(id -u)" -eq 0 ] && [ -w "$file" ] || { echo "not root: no hugepages reserved (hugetlb tests will SKIP)"; return 0; }
	free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
	[ "$free" -ge "$want" ] && return 0
	LB_HP_ORIG=$(cat "$file")
	echo $((LB_HP_ORIG + want - free)) >"$file"
	lb_say "reserved $(( $(cat "$file") - LB_HP_ORIG )) hugepages of 2 MiB (was $LB_HP_ORIG; put back on exit)"
}
lb_hugepages_restore() {
	[ -n "$LB_HP_ORIG" ] && echo "$LB_HP_ORIG" >/proc/sys/vm/nr_hugepages && LB_HP_ORIG=
	return 0
}
