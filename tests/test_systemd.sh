#!/usr/bin/env bash
# Opt-in (LAYERBANK_SYSTEMD_TEST=1): the units under a real systemd. A minimal Debian 12 tree
# (debootstrap, cached in BUILD_DIR/systemd-root/, rebuilt when its key changes) gets the
# project installed with DESTDIR and is booted with systemd-nspawn; there the guest half,
# test_systemd_guest.sh, starts layerbankd.socket, connects, checks status and journal, stops.
#
# Only the tree's own systemd ever runs, in its own root, PID, mount and network namespaces:
# the host's /, /tmp, /var and /etc are not reachable from it. A canary in the host's /tmp and
# /var/tmp must survive the boot. Every process of the container runs in a cgroup of this
# test's own, which must be empty at the end (on a timeout it is killed whole).
# Usage: test_systemd.sh BUILD_DIR SOURCE_DIR DAEMON CTL [SANITIZE]. Exit 0 pass, 1 fail, 77 skip.
set -uo pipefail
build=$1 src=$2 daemon=$3 ctl=$4 sanitize=${5:-}

# What the tree is made of. Bump the version when the recipe below changes.
TREE_VERSION=2
SUITE=bookworm
BASE_PACKAGES=(systemd systemd-sysv dbus)
# Seconds: building the tree, installing, boot until the guest is done, orderly power-off.
T_DEBOOTSTRAP=900 T_INSTALL=300 T_GUEST=300 T_POWEROFF=90 T_KILL=30

skip() { echo "SKIP: $*"; exit 77; }
[ "${LAYERBANK_SYSTEMD_TEST:-}" = 1 ] || skip "boots systemd in a Debian tree under $build/systemd-root; opt in with LAYERBANK_SYSTEMD_TEST=1 (scripts/test-systemd)"
# The sanitized daemon would die under the unit's seccomp filter (LeakSanitizer ptraces).
[ -z "$sanitize" ] || skip "a sanitizer build ($sanitize) installs sanitized binaries; the plain build runs this test"
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
	command -v apt-get >/dev/null || skip "no debootstrap or systemd-nspawn, and no apt-get to install them"
	echo "installing debootstrap and systemd-container"
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
		debootstrap systemd-container >/dev/null \
		|| { echo "FAIL: apt-get install debootstrap systemd-container failed"; exit 1; }
fi
for tool in findmnt flock cmake ldd dpkg-query timeout; do
	command -v $tool >/dev/null || skip "$tool is missing"
done

build=$(cd "$build" && pwd) src=$(cd "$src" && pwd)
cache=$build/systemd-root
tree=$cache/tree
guest_dir=/var/lib/layerbank-test # inside the tree: the guest's settings and its result
run=$(mktemp -d "${TMPDIR:-/tmp}/layerbank-test.XXXXXX") || exit 1
export TMPDIR=$run
machine=lbtest-$$
nspawn_pid='' debootstrap_pid='' new_tree='' booted='' status=1 cg_dirs=() canaries=()
run_nspawn_existed='' run_systemd_existed=''
t0=$SECONDS

say() { echo "test_systemd: $*"; }
fail() {
	echo "FAIL: $*"
	exit 1
}
# Print the last lines of a log, if there is one.
show() {
	[ -s "$1" ] || return 0
	echo "---- last lines of $(basename "$1") ----"
	tail -n "${2:-40}" "$1"
	echo "----"
}

# ---- cgroups: the container goes below a cgroup of this test's own (nspawn --keep-unit), so
# its processes can be counted and, if need be, killed together, and nothing is left behind.
# On a hybrid host both the unified hierarchy and the name=systemd one are used.
cg_setup() {
	local mnt rel d
	mnt=$(findmnt -rn -t cgroup2 -o TARGET | head -n1)
	rel=$(sed -n 's/^0:://p' /proc/self/cgroup)
	[ -n "$mnt" ] && [ -n "$rel" ] && cg_dirs+=("$mnt${rel%/}/layerbank-systemd-test.$$")
	mnt=$(findmnt -rn -t cgroup -O name=systemd -o TARGET | head -n1)
	rel=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)
	[ -n "$mnt" ] && [ -n "$rel" ] && cg_dirs+=("$mnt${rel%/}/layerbank-systemd-test.$$")
	[ ${#cg_dirs[@]} -gt 0 ] || fail "no cgroup hierarchy found (/sys/fs/cgroup)"
	for d in "${cg_dirs[@]}"; do
		mkdir "$d" || fail "cannot create cgroup $d"
	done
}
# Every PID in our cgroups and below, one a line.
cg_pids() {
	local d
	for d in "${cg_dirs[@]}"; do
		[ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -un
}
cg_kill() {
	local d pid
	for d in "${cg_dirs[@]}"; do
		case $d in */layerbank-systemd-test.$$) ;; *) continue ;; esac
		[ -w "$d/cgroup.kill" ] && echo 1 >"$d/cgroup.kill" 2>/dev/null
	done
	for pid in $(cg_pids); do
		kill -KILL "$pid" 2>/dev/null
	done
}
cg_remove() {
	local d
	for d in "${cg_dirs[@]}"; do
		case $d in */layerbank-systemd-test.$$) ;; *) continue ;; esac
		[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
		[ -d "$d" ] && echo "warning: cgroup $d could not be removed"
	done
	cg_dirs=()
}

# Processes whose root directory is the tree (the container's, whatever cgroup they are in).
# (-ef: same device and inode, through the /proc/PID/root link; no process forked per PID.)
tree_procs() {
	local p
	[ -d "$tree" ] || return 0
	for p in /proc/[0-9]*; do
		[ "$p/root" -ef "$tree" ] && echo "${p#/proc/}"
	done
	return 0
}

# Lazily unmount whatever a killed debootstrap left mounted below DIR (deepest first).
unmount_under() {
	findmnt -rn -o TARGET | awk -v d="$1/" 'index($0, d) == 1' | sort -r | while read -r m; do
		umount -l "$m"
	done
}
# Remove a tree below the cache, never crossing into a mount.
remove_tree() {
	case $1 in "$cache"/?*) ;; *) echo "refusing to remove '$1' (not below $cache)"; return 1 ;; esac
	unmount_under "$1"
	if [ -n "$(findmnt -rn -o TARGET | awk -v d="$1/" 'index($0, d) == 1')" ]; then
		echo "mounts remain below $1: not removing it"
		return 1
	fi
	rm -rf --one-file-system "$1"
}

# The canaries must outlive the container: a systemd that reached the host's files would
# have emptied /tmp (systemd-tmpfiles --remove at boot) the way the issue describes.
check_canaries() {
	local c ok=0
	for c in "${canaries[@]}"; do
		if [ "$(cat "$c" 2>/dev/null)" != "$machine" ]; then
			echo "FAIL: THE HOST CANARY $c IS GONE OR CHANGED: something in the container reached the host's files"
			ok=1
		fi
	done
	return $ok
}

# Power the container off (nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd),
# then kill whatever is left. Sets nspawn_rc.
nspawn_rc=
stop_container() {
	local deadline p
	[ -n "$nspawn_pid" ] || return 0
	if kill -0 "$nspawn_pid" 2>/dev/null; then
		say "powering the container off"
		kill -TERM "$nspawn_pid"
		deadline=$((SECONDS + T_POWEROFF))
		while kill -0 "$nspawn_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
			sleep 0.1
		done
	fi
	if kill -0 "$nspawn_pid" 2>/dev/null; then
		echo "the container did not power off within ${T_POWEROFF}s: killing its cgroup"
		kill -KILL "$nspawn_pid" 2>/dev/null
	fi
	wait "$nspawn_pid" 2>/dev/null
	nspawn_rc=$?
	nspawn_pid=
	deadline=$((SECONDS + T_KILL))
	while [ -n "$(cg_pids)$(tree_procs)" ] && [ $SECONDS -lt $deadline ]; do
		cg_kill
		for p in $(tree_procs); do kill -KILL "$p" 2>/dev/null; done
		sleep 0.1
	done
}

# What nspawn leaves in the host's /run when /run is not a tmpfs (as here): its lock for the
# tree and the mount propagation folder, and the folders above them if it made those.
clean_run_state() {
	local id
	[ -n "$booted" ] || return 0
	id=$(stat -c %d:%i "$tree" 2>/dev/null)
	[ -n "$id" ] && rm -f "/run/systemd/nspawn/locks/inode-$id"
	[ -d "/run/systemd/nspawn/propagate/$machine" ] \
		&& rm -rf --one-file-system "/run/systemd/nspawn/propagate/$machine"
	rm -f "$cache/.#tree.lck"
	if [ "$run_nspawn_existed" = no ]; then
		rmdir /run/systemd/nspawn/locks /run/systemd/nspawn/propagate /run/systemd/nspawn 2>/dev/null
	fi
	[ "$run_systemd_existed" = no ] && rmdir /run/systemd 2>/dev/null
	return 0
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$debootstrap_pid" ]; then
		kill -TERM "$debootstrap_pid" 2>/dev/null
		wait "$debootstrap_pid"
	fi
	stop_container
	local left
	left=$(cg_pids; tree_procs)
	if [ -n "$left" ]; then
		echo "FAIL: processes of the container remain: $(echo $left)"
		rc=1
	fi
	cg_remove
	clean_run_state
	[ -n "$new_tree" ] && [ -d "$new_tree" ] && remove_tree "$new_tree"
	check_canaries || rc=1
	rm -f "${canaries[@]}"
	rm -rf "$run"
	[ $rc -ne 0 ] && [ $status -eq 0 ] && echo "FAIL"
	exit $rc
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 1' INT TERM

mkdir -p "$cache" || fail "cannot create $cache"
# One run per tree at a time.
exec 9>"$cache/lock"
flock -w 60 9 || fail "another test_systemd holds $cache/lock"
# Taken under the lock, so that a run that ends meanwhile is not mistaken for the host's.
run_nspawn_existed=$([ -e /run/systemd/nspawn ] && echo yes || echo no)
run_systemd_existed=$([ -e /run/systemd ] && echo yes || echo no)

# ---- 1. the tree: debootstrap, cached under a key of the recipe and the packages --------------

# The packages the installed daemon and ctl need at run time: the owners of their shared
# libraries (liblayerbank aside, which comes from the build). dpkg knows each file under the
# /usr or the / spelling, so both are asked, all in one (slow) dpkg-query.
mapfile -t libs < <(ldd "$daemon" "$ctl" | awk -v b="$build/" '$3 ~ /^\// && index($3, b) != 1 { print $3 }' | sort -u)
[ ${#libs[@]} -gt 0 ] || fail "ldd found no shared libraries in $daemon and $ctl"
spellings=()
for lib in "${libs[@]}"; do
	spellings+=("/usr${lib#/usr}" "${lib#/usr}" "$(readlink -f "$lib")")
done
declare -A owner=()
while IFS= read -r line; do # "pkg:arch: /path" or "pkg1, pkg2: /path"
	pkg=${line%%: *}
	owner[${line#*: }]=${pkg%%[:,]*}
done < <(dpkg-query -S "${spellings[@]}" 2>/dev/null | grep -v '^diversion')
packages=("${BASE_PACKAGES[@]}")
for lib in "${libs[@]}"; do
	pkg=${owner["/usr${lib#/usr}"]:-${owner["${lib#/usr}"]:-${owner["$(readlink -f "$lib")"]:-}}}
	[ -n "$pkg" ] || fail "no Debian package ships $lib (needed by the daemon or ctl)"
	packages+=("$pkg")
done
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
key="layerbank systemd tree v$TREE_VERSION $SUITE minbase ${packages[*]}"

# The mirror the host's apt uses for its main suite (LAYERBANK_SYSTEMD_MIRROR overrides it).
apt_mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		awk 'BEGIN { RS = ""; FS = "\n" }
			{ types = uris = suites = ""
			  for (i = 1; i <= NF; i++) {
				if ($i ~ /^Types:/) types = $i
				if ($i ~ /^URIs:/) uris = $i
				if ($i ~ /^Suites:/) suites = $i
			  }
			  if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ /[ \t][a-z]+([ \t]|$)/) {
				sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
			  } }' "$f"
	done
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++
			if ($(i + 1) ~ /^[a-z]+$/) { print $i; exit } }'
}

t_tree=$SECONDS
if [ -d "$tree" ] && [ "$(cat "$cache/key" 2>/dev/null)" = "$key" ]; then
	say "reusing the tree in $tree ($key)"
	tree_built="reused"
else
	mirror=${LAYERBANK_SYSTEMD_MIRROR:-$(apt_mirror | grep -m1 .)}
	[ -n "$mirror" ] || fail "no Debian mirror in the host's apt sources; set LAYERBANK_SYSTEMD_MIRROR"
	if [ -d "$tree" ]; then
		say "the tree's key changed: rebuilding"
		remove_tree "$tree" || fail "cannot remove the old tree"
	fi
	rm -f "$cache/key"
	for old in "$cache"/tree.new.*; do
		[ -d "$old" ] && { remove_tree "$old" || fail "cannot remove $old"; }
	done
	new_tree=$(mktemp -d "$cache/tree.new.XXXXXX") || fail "mktemp in $cache"
	chmod 755 "$new_tree" # it becomes the container's /, which every user must traverse
	say "debootstrap $SUITE from $mirror into $new_tree (a few minutes): ${packages[*]}"
	# In the background, so that a signal reaches the trap at once (bash runs it only between
	# commands): the trap stops debootstrap, which unmounts what it mounted in the tree.
	timeout --kill-after=30 "$T_DEBOOTSTRAP" debootstrap --variant=minbase \
		--include="$(IFS=,; echo "${packages[*]}")" "$SUITE" "$new_tree" "$mirror" \
		>"$run/debootstrap.log" 2>&1 &
	debootstrap_pid=$!
	wait "$debootstrap_pid"
	rc=$?
	debootstrap_pid=
	unmount_under "$new_tree"
	[ $rc -eq 0 ] || { show "$run/debootstrap.log"; fail "debootstrap exited $rc (124: timed out after ${T_DEBOOTSTRAP}s)"; }
	# Units the test boot has no use for: timers that would download or scan, and a login
	# prompt on a console nobody types into.
	for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		console-getty.service; do
		ln -sf /dev/null "$new_tree/etc/systemd/system/$unit"
	done
	# The journal in the container's /run only: nothing piles up in the cached tree, boot
	# after boot (the checks read the current boot's journal).
	mkdir -p "$new_tree/etc/systemd/journald.conf.d" &&
		printf '[Journal]\nStorage=volatile\n' >"$new_tree/etc/systemd/journald.conf.d/layerbank-test.conf" \
		|| fail "cannot configure the tree's journal"
	# The user database as debootstrap left it: restored before each boot, so that the
	# project's sysusers.d entry has to create the layerbank account every time.
	mkdir -p "$new_tree/usr/local/share/layerbank-test/etc" &&
		cp -a "$new_tree"/etc/{passwd,group,shadow,gshadow} "$new_tree/usr/local/share/layerbank-test/etc/" \
		|| fail "cannot save the tree's user database"
	mv "$new_tree" "$tree" || fail "cannot move $new_tree to $tree"
	new_tree=
	echo "$key" >"$cache/key"
	tree_built="built by debootstrap in $((SECONDS - t_tree))s"
fi
t_tree=$((SECONDS - t_tree))

# ---- 2. the project into the tree --------------------------------------------------------------
t_install=$SECONDS
cp -a "$tree/usr/local/share/layerbank-test/etc"/{passwd,group,shadow,gshadow} "$tree/etc/" \
	|| fail "cannot restore the tree's user database"
DESTDIR=$tree timeout "$T_INSTALL" cmake --install "$build" >"$run/install.log" 2>&1 \
	|| { show "$run/install.log"; fail "cmake --install with DESTDIR=$tree"; }
# The installed files' paths as the container sees them.
installed() {
	sed -n 's/^-- \(Installing\|Up-to-date\): //p' "$run/install.log" | sed "s|^$tree||" | grep -m1 "$1"
}
unit=$(installed '/layerbankd\.service$') socket_unit=$(installed '/layerbankd\.socket$')
sysusers=$(installed '/sysusers\.d/layerbank\.conf$') tmpfiles=$(installed '/tmpfiles\.d/layerbank\.conf$')
ctl_in=$(installed '/layerbank-ctl$')
for v in unit socket_unit sysusers tmpfiles ctl_in; do
	[ -n "${!v}" ] || fail "cmake --install did not install a $v"
done
# A prefix outside the paths systemd searches: link the files into /etc, as an admin would.
link_into() { # FILE DIR SEARCHED_DIRS...
	local f=$1 dir=$2 d
	shift 2
	for d in "$@"; do [ "$(dirname "$f")" = "$d" ] && return 0; done
	mkdir -p "$tree$dir" && ln -sf "$f" "$tree$dir/"
}
for f in "$unit" "$socket_unit"; do
	link_into "$f" /etc/systemd/system /etc/systemd/system /usr/local/lib/systemd/system \
		/usr/lib/systemd/system /lib/systemd/system
done
link_into "$sysusers" /etc/sysusers.d /etc/sysusers.d /usr/local/lib/sysusers.d /usr/lib/sysusers.d
link_into "$tmpfiles" /etc/tmpfiles.d /etc/tmpfiles.d /usr/local/lib/tmpfiles.d /usr/lib/tmpfiles.d

# The configuration the unit's ExecStart= names, with a small arena of ordinary pages: the
# container shares the host's kernel, whose hugepage pool belongs to the other tests.
conf=$(sed -n 's/^ExecStart=.*--config \([^ ]*\).*/\1/p' "$tree$unit")
[ -n "$conf" ] && [ -f "$tree$conf" ] || fail "the unit $unit names no installed --config file ('$conf')"
sed -i -e 's/^arena-size = .*/arena-size = 64M/' -e 's/^hugepages = .*/hugepages = off/' "$tree$conf"
[ "$(grep -cE '^(arena-size = 64M|hugepages = off)$' "$tree$conf")" = 2 ] \
	|| fail "cannot set arena-size and hugepages in $conf"

# The guest half and the oneshot unit that runs it once the container has booted.
mkdir -p "$tree/usr/local/libexec/layerbank-test" "$tree$guest_dir" &&
	install -m 755 "$src/tests/test_systemd_guest.sh" "$tree/usr/local/libexec/layerbank-test/guest.sh" \
	|| fail "cannot install the guest script"
cat >"$tree/etc/systemd/system/layerbank-test.service" <<EOF
# tests/test_systemd.sh: the checks inside the container, started by systemd.wants= on the
# container's command line (a plain boot of this tree does not run them).
[Unit]
Description=layerbank systemd test (guest half)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/libexec/layerbank-test/guest.sh
StandardOutput=journal+console
TimeoutStartSec=$((T_GUEST - 60))s
EOF
rm -f "$tree$guest_dir/result"
t_install=$((SECONDS - t_install))

# ---- 3. boot the tree (4., the checks inside, is test_systemd_guest.sh) ---------------------
for d in /tmp /var/tmp; do
	c=$(mktemp "$d/layerbank-systemd-canary.XXXXXX") || fail "cannot put a canary in $d"
	canaries+=("$c")
	echo "$machine" >"$c"
done
# What the guest compares its own view with: the tree's /, /etc and /var, the host's canaries.
{
	printf 'CTL=%q\n' "$ctl_in"
	printf 'TREE_ROOT_ID=%q\n' "$(stat -c %d:%i "$tree")"
	printf 'TREE_ETC_ID=%q\n' "$(stat -c %d:%i "$tree/etc")"
	printf 'TREE_VAR_ID=%q\n' "$(stat -c %d:%i "$tree/var")"
	printf 'HOST_TMP_ID=%q\n' "$(stat -c %d:%i /tmp)"
	printf 'HOST_CANARIES=%q\n' "${canaries[*]}"
} >"$tree$guest_dir/env"

cg_setup
say "booting $tree with systemd-nspawn (machine $machine)"
t_boot=$SECONDS
booted=1
# --register=no --keep-unit: no machined or host systemd to ask (none runs here).
# --private-network: no host network; --link-journal=no, --resolv-conf=off, --timezone=off:
# nothing of the host's /var or /etc is linked, bound or copied in. After "--": the
# container's init arguments: run the guest unit, no colours in the log.
(
	for d in "${cg_dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs" || exit 125; done
	exec systemd-nspawn --directory="$tree" --boot --machine="$machine" \
		--register=no --keep-unit --private-network --link-journal=no \
		--resolv-conf=off --timezone=off --console=read-only \
		-- systemd.wants=layerbank-test.service systemd.log_color=0
) </dev/null >"$run/boot.log" 2>&1 &
nspawn_pid=$!

# Wait for the guest to finish (its last line is DONE) or the container to end.
result=$tree$guest_dir/result
deadline=$((SECONDS + T_GUEST))
while [ $SECONDS -lt $deadline ] && kill -0 "$nspawn_pid" 2>/dev/null; do
	grep -qx DONE "$result" 2>/dev/null && break
	sleep 0.2
done
t_boot=$((SECONDS - t_boot))
done_ok=$(grep -qx DONE "$result" 2>/dev/null && echo 1)

# ---- 5. power off, nothing left ----------------------------------------------------------------
# The checks for leftovers must see the running container, or their silence proves nothing.
running_before=$(kill -0 "$nspawn_pid" 2>/dev/null && echo 1)
n_cg=$(cg_pids | wc -l) n_root=$(tree_procs | wc -l)
say "running: $n_cg processes in the test's cgroups, $n_root with the tree as their root"
t_off=$SECONDS
stop_container
t_off=$((SECONDS - t_off))
left=$(cg_pids; tree_procs)

echo "---- the guest's checks ----"
cat "$result" 2>/dev/null || echo "(no result file)"
echo "----"
bad=
[ -n "$done_ok" ] || { show "$run/boot.log" 60; bad="the guest did not finish within ${T_GUEST}s"; }
[ -z "$bad" ] && ! grep -qx PASS "$result" && bad="the guest's checks failed"
[ -z "$bad" ] && [ -z "$running_before" ] && bad="the container ended before it was powered off"
[ -z "$bad" ] && { [ "$n_cg" -lt 2 ] || [ "$n_root" -lt 1 ]; } \
	&& bad="the container's processes are not seen in its cgroups ($n_cg) or by their root ($n_root)"
[ -z "$bad" ] && [ "$nspawn_rc" != 0 ] && { show "$run/boot.log" 20; bad="systemd-nspawn exited $nspawn_rc on power-off"; }
[ -z "$bad" ] && [ -n "$left" ] && bad="processes of the container remain after power-off: $(echo $left)"
[ -z "$bad" ] || fail "$bad"
check_canaries || fail "a host canary is gone"
echo "no process of the container remains; the canaries in the host's /tmp and /var/tmp are intact"
say "tree: $tree_built; install ${t_install}s; boot and checks ${t_boot}s; power-off ${t_off}s; total $((SECONDS - t0))s"
status=0
echo "PASS"
