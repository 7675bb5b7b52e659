#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and CI (Debian slurm-wlm + munge).
#   cluster.sh install   apt-get the packages if missing (root): slurm-wlm, munge
#   cluster.sh start     (re)start munged, slurmctld, slurmd; wait until the node is idle;
#                        prints "started" (this call started them) or "running" (already up)
#   cluster.sh stop      stop the daemons this script started and remove their folder
#   cluster.sh env       print the variables a client needs (SLURM_CONF)
# Idempotent and safe after a crash: a start first clears whatever an earlier, killed run left
# (daemons, pid files, a stale munge socket, old job state), so a half-dead cluster never makes
# a client wait on an unreachable controller.
# The cluster's files live in a fresh `mktemp -d` folder (no fixed path in world-writable /tmp
# that someone could plant a symlink at); its name is kept in $POINTER, in root-only /run.
set -euo pipefail

POINTER=${ORDERMERGE_SLURM_POINTER:-/run/ordermerge-slurm.dir}
DIR=$(cat "$POINTER" 2>/dev/null || true)
CONF=$DIR/slurm.conf
ETC=/etc/slurm/slurm.conf
MUNGE_SOCKET=/run/munge/munge.socket.2

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and installing them needs root"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and apt-get is not available"
    say "installing Debian's slurm-wlm and munge (apt-get) for the SLURM tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge </dev/null >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
}

kill_pidfile() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

node_idle() {
    # timeout: a client whose controller is gone retries for a minute before it gives up
    SLURM_CONF=$CONF timeout 10 sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'
}

stop() {
    [ -n "$DIR" ] || return 0
    kill_pidfile "$DIR/slurmd.pid"
    kill_pidfile "$DIR/slurmctld.pid"
    kill_pidfile "$DIR/munged.pid"
    # ours even when its pid file is gone (a munged that exits deletes the file, which an older
    # one sharing the path can do after ours has written it)
    pkill -f -- "munged --force --pid-file=$DIR/munged.pid" 2>/dev/null || true
    # our link only: a cluster's own /etc/slurm/slurm.conf is never touched
    if [ -L "$ETC" ] && [ "$(readlink "$ETC")" = "$CONF" ]; then rm -f "$ETC"; fi
    case "$DIR" in  # our mktemp folder, and nothing else
        "${TMPDIR:-/tmp}"/ordermerge-slurm.*) rm -rf "$DIR" ;;
    esac
    rm -f "$POINTER"
    DIR=""
}

write_conf() {
    local host mem cpus
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<CONF
# written by tests/slurm/cluster.sh: a one-node test cluster
ClusterName=ordermerge
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# keep finished jobs visible to squeue for 10 min (Snakemake's status polling needs them)
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
    install
    if [ -n "$DIR" ] && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && [ -f "$CONF" ] \
        && node_idle; then
        link_conf
        echo running
        return 0
    fi
    # whatever a killed earlier run left behind
    stop
    pkill -x slurmctld 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/ordermerge-slurm.XXXXXX")
    chmod 755 "$DIR"
    CONF=$DIR/slurm.conf
    echo "$DIR" >"$POINTER"
    write_conf
    link_conf

    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null; then mungekey -c -f -k /etc/munge/munge.key
        else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    if ! timeout 5 munge -n </dev/null >/dev/null 2>&1; then
        pkill -x munged 2>/dev/null || true
        for _ in $(seq 50); do pgrep -x munged >/dev/null || break; sleep 0.1; done
        mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
        # --force: a socket left by a killed munged would otherwise stop it from starting
        if id munge >/dev/null 2>&1; then
            runuser -u munge -- munged --force --pid-file="$DIR/munged.pid" 2>>"$DIR/log/munged.log" \
                || die "munged did not start: $(tail -n 3 "$DIR/log/munged.log" | tr '\n' ' ')"
        else
            munged --force --pid-file="$DIR/munged.pid" 2>>"$DIR/log/munged.log" \
                || die "munged did not start: $(tail -n 3 "$DIR/log/munged.log" | tr '\n' ' ')"
        fi
        timeout 5 munge -n </dev/null >/dev/null 2>&1 || die "munge does not work after starting munged"
    fi

    SLURM_CONF=$CONF slurmctld -i || die "slurmctld did not start: $(tail -n 5 "$DIR/log/slurmctld.log" | tr '\n' ' ')"
    SLURM_CONF=$CONF slurmd || die "slurmd did not start: $(tail -n 5 "$DIR/log/slurmd.log" | tr '\n' ' ')"
    for _ in $(seq 60); do
        if node_idle; then
            say "one-node cluster up ($(hostname -s), $(nproc) CPUs), SLURM_CONF=$CONF"
            echo started
            return 0
        fi
        sleep 1
    done
    say "the node did not become idle within 60 s; sinfo says: $(SLURM_CONF=$CONF timeout 10 sinfo 2>&1 | tr '\n' ' ')"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

link_conf() {
    # Slurm does not pass SLURM_CONF on to a batch job, so the srun inside it reads the
    # default path; link ours there unless a real config already lives there.
    mkdir -p /etc/slurm
    if [ -e "$ETC" ] && ! [ -L "$ETC" ]; then
        cmp -s "$ETC" "$CONF" || say "warning: $ETC exists and is not ours; jobs will read it"
        return 0
    fi
    ln -sfn "$CONF" "$ETC"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    env) [ -n "$DIR" ] || die "no cluster is running (cluster.sh start)"; echo "SLURM_CONF=$CONF" ;;
    *) die "usage: cluster.sh install|start|stop|env" ;;
esac
