# Shared by scripts/demo and scripts/test: install what is missing, configure and build.
# Sourced, not run. Uses: ROOT (the repository), BUILD (build folder).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}

# Debian 12 packages the build and the tests need. tmux: test_ctl_top drives layerbank-ctl top
# in it; python3, git: scripts/check-tree; python3-torch, python3-numpy: the Python package
# (test_python) and test_encoder_torch, which checks the committed encoder against the torch
# model of tools/train_encoder.py; hiredis, redis-server, redis-tools: the second tier on Redis
# Cluster (test_l2_cluster starts a cluster of its own); libdnnl-dev: oneDNN 2.x, the baseline of
# layerbank-bench kernels' f32 and bf16 GEMM rows (linked into the benchmark only).
LB_PACKAGES=(build-essential cmake pkg-config liburing-dev libnuma-dev libmsgpack-dev
	libcmocka-dev libjson-c-dev libxxhash-dev libopenblas-dev zlib1g-dev libsystemd-dev
	tmux python3 git python3-torch python3-numpy libhiredis-dev redis-server redis-tools
	libdnnl-dev)
# A clang build (CI's sanitizer runs, scripts/fuzz) needs its runtimes too: ASan, UBSan, TSan
# and libFuzzer (-fsanitize=fuzzer) are in libclang-rt-14-dev; llvm-14 has llvm-symbolizer,
# which puts file and line into the sanitizers' and libFuzzer's reports.
[ "${CC:-}" = clang ] && LB_PACKAGES+=(clang libclang-rt-14-dev llvm-14)

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

# The shipped model and text: stories260K (karpathy/tinyllamas, MIT) and a TinyStories sample
# (CDLA-Sharing-1.0). sha256 as listed in ../shared/data/README.md.
LB_DATA_FILES=(stories260K.bin tok512.bin tinystories_val.txt)
declare -A LB_DATA_SHA256=(
	[stories260K.bin]=b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696
	[tok512.bin]=037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312
	[tinystories_val.txt]=5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6
)
declare -A LB_DATA_URL=(
	[stories260K.bin]=https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin
	[tok512.bin]=https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/tok512.bin
	[tinystories_val.txt]=https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt
)
# The sample is the first lines of the public validation split.
LB_TINYSTORIES_LINES=8659

lb_data_ok() { # DIR: every file there with its sha256
	local f
	for f in "${LB_DATA_FILES[@]}"; do
		[ -r "$1/$f" ] || return 1
		[ "$(sha256sum "$1/$f" | cut -d' ' -f1)" = "${LB_DATA_SHA256[$f]}" ] || {
			echo "warning: $1/$f does not have the expected sha256" >&2
			return 1
		}
	done
}

# Print the data folder: $LAYERBANK_DATA, ../shared/data, ~/.cache/layerbank, else download
# into ~/.cache/layerbank and check. @return 1 (after saying why) when none works.
lb_find_data() {
	local d cache=${XDG_CACHE_HOME:-$HOME/.cache}/layerbank f tmp
	for d in ${LAYERBANK_DATA:+"$LAYERBANK_DATA"} "$ROOT/../shared/data" "$cache"; do
		lb_data_ok "$d" 2>/dev/null && { (cd "$d" && pwd); return 0; }
	done
	echo "the model and text are not in \$LAYERBANK_DATA, $ROOT/../shared/data or $cache: downloading them" >&2
	command -v curl >/dev/null || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq curl ca-certificates >/dev/null 2>&1; }
	mkdir -p "$cache"
	for f in "${LB_DATA_FILES[@]}"; do
		tmp=$(mktemp "$cache/.$f.XXXXXX")
		if ! curl -fsSL --max-time 300 "${LB_DATA_URL[$f]}" -o "$tmp" 2>/dev/null; then
			echo "cannot download ${LB_DATA_URL[$f]}" >&2
			rm -f "$tmp"
			return 1
		fi
		[ "$f" = tinystories_val.txt ] && head -n "$LB_TINYSTORIES_LINES" "$tmp" >"$tmp.cut" && mv "$tmp.cut" "$tmp"
		mv "$tmp" "$cache/$f"
	done
	lb_data_ok "$cache" || { echo "the downloaded files do not match their sha256" >&2; return 1; }
	echo "$cache"
}
