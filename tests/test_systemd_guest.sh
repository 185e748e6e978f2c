#!/bin/bash
# The guest half of test_systemd.sh: runs INSIDE the booted test container, as the oneshot
# unit layerbank-test.service, and does what the README's "Running as a service" says against
# the container's real systemd: sysusers and tmpfiles, start layerbankd.socket, connect,
# systemctl status, the journal, stop. One line per check in $out; the last line is DONE,
# after PASS or a FAIL line. It refuses to run anywhere but in that container.
# No "producer | grep -q" below: grep -q exits at the first match, the producer may then die
# of SIGPIPE, and pipefail would turn a match into a failure. Here-strings instead.
set -uo pipefail
dir=/var/lib/layerbank-test
out=$dir/result
T=30 # seconds for any one command

say() { printf '%s\n' "$*" | tee -a "$out"; }
done_() { say DONE; exit "$1"; }
fail() {
	say "FAIL: $*"
	{
		echo "---- systemctl status layerbankd.socket layerbankd.service ----"
		timeout $T systemctl status --no-pager --lines=20 layerbankd.socket layerbankd.service
		echo "---- journalctl -b -u layerbankd.service ----"
		timeout $T journalctl -b --no-pager -n 40 -u layerbankd.service -u layerbankd.socket
		echo "---- failed units ----"
		timeout $T systemctl --failed --no-pager --no-legend
	} >>"$out" 2>&1
	done_ 1
}
ok() { say "ok: $*"; }
# Run a command with a time limit; its output goes to the result file.
run() {
	timeout $T "$@" >>"$out" 2>&1
}
# Retry a check for up to T seconds (the journal and unit states settle asynchronously).
eventually() {
	local deadline=$((SECONDS + T))
	until "$@"; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.1
	done
}
active() { [ "$(systemctl is-active "$1")" = "$2" ]; }

# ---- where we are: the container's own root, nothing of the host's in reach ----
[ -r "$dir/env" ] || { echo "no $dir/env: this runs only inside test_systemd.sh's container" >&2; exit 1; }
# shellcheck source=/dev/null
. "$dir/env"
[ "$(stat -c %d:%i /)" = "$TREE_ROOT_ID" ] || { echo "/ is not the test tree: not running" >&2; exit 1; }
[ "$(systemd-detect-virt --container)" = systemd-nspawn ] || { echo "not in a container: not running" >&2; exit 1; }
: >"$out"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"
ok "PID 1 is systemd $(systemctl --version | head -n1 | cut -d' ' -f2), in a systemd-nspawn container"
[ "$(stat -c %d:%i /etc)" = "$TREE_ETC_ID" ] && [ "$(stat -c %d:%i /var)" = "$TREE_VAR_ID" ] \
	|| fail "/etc or /var is not the tree's"
[ "$(stat -c %d:%i /tmp)" != "$HOST_TMP_ID" ] || fail "/tmp is the host's /tmp"
for c in $HOST_CANARIES; do
	[ ! -e "$c" ] || fail "the host's canary $c is visible in the container"
done
ok "/, /etc and /var are the tree's; /tmp is $(stat -f -c %T /tmp), not the host's; the host's canaries are out of reach"

# ---- the README's set-up: the account and /run/layerbank ----
# The host reset the user database, so the account comes from the installed entry (at boot,
# when the tree is new, or here).
run systemd-sysusers layerbank.conf || fail "systemd-sysusers layerbank.conf exited $?"
run systemd-tmpfiles --create layerbank.conf || fail "systemd-tmpfiles --create layerbank.conf exited $?"
getent passwd layerbank >/dev/null && getent group layerbank >/dev/null \
	|| fail "systemd-sysusers made no layerbank user and group"
st=$(stat -c '%U:%G %a' /run/layerbank 2>&1)
[ "$st" = "layerbank:layerbank 755" ] || fail "/run/layerbank is '$st', not layerbank:layerbank 755"
ok "systemd-sysusers made layerbank ($(getent passwd layerbank | cut -d: -f3,7)); /run/layerbank is $st"
# Two more accounts: a worker in group layerbank and a user who is not.
run systemd-sysusers --inline 'u lbworker - "layerbank test worker"' 'm lbworker layerbank' \
	'u lbother - "not in group layerbank"' || fail "cannot add the test users"

# ---- the socket: systemd listens, the service waits for a connection ----
run systemctl daemon-reload || fail "systemctl daemon-reload"
active layerbankd.service inactive || fail "layerbankd.service runs before anything started it"
run systemctl start layerbankd.socket || fail "systemctl start layerbankd.socket exited $?"
active layerbankd.socket active || fail "layerbankd.socket is $(systemctl is-active layerbankd.socket)"
sock=/run/layerbank/layerbankd.sock
[ -S $sock ] || fail "no socket at $sock"
st=$(stat -c '%a %U:%G' $sock)
[ "$st" = "660 root:layerbank" ] || fail "$sock is '$st', not 660 root:layerbank"
active layerbankd.service inactive || fail "layerbankd.service started before any connection"
ok "systemctl start layerbankd.socket: listening on $sock ($st), the service not started yet"

# ---- connect: the first connection starts the daemon ----
stats=$(timeout $T "$CTL" stats 2>&1) || fail "layerbank-ctl stats (root) exited $?: $stats"
echo "$stats" >>"$out"
eventually active layerbankd.service active || fail "layerbankd.service is $(systemctl is-active layerbankd.service) after a connection"
ok "layerbank-ctl stats through the socket activated layerbankd.service"
pid=$(systemctl show -P MainPID layerbankd.service)
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
[ -n "$uid" ] && [ "$uid" = "$(id -u layerbank)" ] || fail "the daemon (pid $pid) runs as uid '$uid', not layerbank"
ok "the daemon (pid $pid) runs as layerbank (uid $uid)"
json=$(timeout $T setpriv --reuid=lbworker --regid=lbworker --init-groups -- "$CTL" stats --json 2>&1) \
	|| fail "layerbank-ctl stats as lbworker (group layerbank) exited $?: $json"
grep -qE '"arena_bytes": ?67108864' <<<"$json" && grep -qE '"hugepages": ?false' <<<"$json" \
	|| fail "the daemon did not take the installed config (arena-size 64M, hugepages off): $json"
ok "lbworker (group layerbank) connects; the daemon runs the unit's --config (64 MiB arena, no hugepages)"
err=$(timeout $T setpriv --reuid=lbother --regid=lbother --init-groups -- "$CTL" stats 2>&1) \
	&& fail "lbother (not in group layerbank) connected: $err"
grep -q 'Permission denied' <<<"$err" || fail "lbother was refused, but not by the socket's mode: $err"
ok "lbother (not in group layerbank) is refused: $err"

# ---- systemctl status: active, socket-activated, the daemon's STATUS= line ----
status=$(timeout $T systemctl status --no-pager --lines=0 layerbankd.service 2>&1)
echo "$status" >>"$out"
grep -q 'Active: active (running)' <<<"$status" || fail "systemctl status does not say active (running)"
grep -q 'TriggeredBy: .*layerbankd.socket' <<<"$status" || fail "systemctl status does not name the socket as trigger"
grep -qE 'Status: "clients [0-9]+, lookups [0-9]+, hit rate' <<<"$status" || fail "systemctl status shows no STATUS= line"
ok "systemctl status: active (running), triggered by layerbankd.socket, $(grep -o 'Status: .*' <<<"$status")"

# ---- the journal: the daemon's lines, with their priorities ----
journal() { timeout $T journalctl -b --no-pager -o cat -u layerbankd.service "$@"; }
ready="ready on $sock (from systemd)"
has_ready() { grep -qF "$ready" <<<"$(journal -p info..info)"; }
has_hello() { grep -q "'layerbank-ctl' (pid [0-9]* uid 0) said HELLO" <<<"$(journal)"; }
has_stopped() { grep -qx stopped <<<"$(journal)"; }
eventually has_ready || fail "the journal has no info-level line '$ready'"
eventually has_hello || fail "the journal has no HELLO line from layerbank-ctl"
lines=$(journal)
grep -q '^<[0-7]>' <<<"$lines" && fail "the journal shows raw <N> prefixes: $(grep -m1 '^<[0-7]>' <<<"$lines")"
ok "journal: '$(grep -m1 -F "$ready" <<<"$lines")' at priority info, and the clients' HELLOs"

# ---- stop the service alone: the socket stays and starts it again ----
run systemctl stop layerbankd.service || fail "systemctl stop layerbankd.service exited $?"
active layerbankd.service inactive || fail "layerbankd.service is $(systemctl is-active layerbankd.service) after stop"
[ "$(systemctl show -P Result layerbankd.service)" = success ] && [ "$(systemctl show -P ExecMainStatus layerbankd.service)" = 0 ] \
	|| fail "the daemon did not stop cleanly: result $(systemctl show -P Result layerbankd.service), status $(systemctl show -P ExecMainStatus layerbankd.service)"
eventually has_stopped || fail "the journal has no 'stopped' line"
active layerbankd.socket active && [ -S $sock ] || fail "stopping the service took the socket away"
out2=$(timeout $T "$CTL" stats 2>&1) || fail "layerbank-ctl stats after a service stop exited $?: $out2"
eventually active layerbankd.service active || fail "the socket did not start the service again"
ok "systemctl stop layerbankd.service: clean exit 0, the socket stays and starts it again"

# ---- stop both: nothing of the daemon left ----
run systemctl stop layerbankd.service layerbankd.socket || fail "systemctl stop layerbankd.service layerbankd.socket exited $?"
active layerbankd.service inactive && active layerbankd.socket inactive \
	|| fail "after stop: service $(systemctl is-active layerbankd.service), socket $(systemctl is-active layerbankd.socket)"
for p in /proc/[0-9]*; do
	[ "$(cat "$p/comm" 2>/dev/null)" = layerbankd ] && fail "layerbankd (pid ${p#/proc/}) still runs after stop"
done
ok "systemctl stop layerbankd.service layerbankd.socket: both inactive, no layerbankd process left"
say PASS
done_ 0
