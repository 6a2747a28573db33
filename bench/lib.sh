# Shared by the bench/ scripts (sourced): the servers a script starts are
# remembered in `pids` and stopped by `stop_all`, which the script's EXIT
# trap calls.
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

# A loopback port free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something listens on it (at most 10 s).
wait_port() {
    for _ in $(seq 1000); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.01
    done
    echo "nothing listens on port $1" >&2; return 1
}
