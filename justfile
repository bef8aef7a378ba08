# Sluice: every build, run, test and bench entry point. `just` lists them.

set dotenv-load := true
set shell := ["bash", "-euo", "pipefail", "-c"]

# The recipes read what cargo builds under ./target (policies, the release binary, the edge
# build), so cargo builds there even where the environment points CARGO_TARGET_DIR elsewhere.
export CARGO_TARGET_DIR := justfile_directory() / "target"

wasm_target := "wasm32-unknown-unknown"
dist := "policies/dist"
var := justfile_directory() / "var"

# List the recipes
default:
    @just --list

# Build every policy under policies/ into policies/dist/<name>.wasm (size-optimised)
build-policies: (_build-wasm "policies" dist)

# Build the test-only policies under tests/policies/ into target/test-policies/
build-test-policies: (_build-wasm "tests/policies" "target/test-policies")

_build-wasm src out:
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p {{out}}
    crates=(); for dir in {{src}}/*/; do [ -f "$dir/Cargo.toml" ] && crates+=(-p "policy-$(basename "$dir")"); done
    cargo build --quiet --target {{wasm_target}} --profile policy "${crates[@]}"
    for dir in {{src}}/*/; do
        [ -f "$dir/Cargo.toml" ] || continue
        name=$(basename "$dir")
        # Copy then rename, so a running service never sees a half-written module.
        cp "target/{{wasm_target}}/policy/policy_${name//-/_}.wasm" "{{out}}/.$name.wasm.tmp"
        mv "{{out}}/.$name.wasm.tmp" "{{out}}/$name.wasm"
        echo "{{out}}/$name.wasm: $(stat -c %s "{{out}}/$name.wasm") bytes"
    done

# Create policies/NAME from the template (5/s, paid 50/s), run its tests and build it to wasm
new-policy NAME:
    #!/usr/bin/env bash
    set -euo pipefail
    [[ "{{NAME}}" =~ ^[a-z0-9_-]{1,64}$ ]] || { echo "policy names are [a-z0-9_-]{1,64}"; exit 1; }
    [ ! -e "policies/{{NAME}}" ] || { echo "policies/{{NAME}} already exists"; exit 1; }
    mkdir -p "policies/{{NAME}}/src"
    sed "s/NAME/{{NAME}}/g" limiter-wasm/template/Cargo.toml.tmpl > "policies/{{NAME}}/Cargo.toml"
    sed "s/NAME/{{NAME}}/g" limiter-wasm/template/lib.rs.tmpl > "policies/{{NAME}}/src/lib.rs"
    cargo test --quiet -p "policy-{{NAME}}"
    just build-policies
    echo "policies/{{NAME}} created; edit policies/{{NAME}}/src/lib.rs, then just build-policies"

# Check that `just new-policy` yields a crate that tests and builds (creates and removes a scratch policy)
test-new-policy:
    #!/usr/bin/env bash
    set -euo pipefail
    name="zz-template-check"
    trap 'rm -rf "policies/$name" "{{dist}}/$name.wasm"' EXIT
    just new-policy "$name"
    test -s "{{dist}}/$name.wasm"

# Build the example policies with wasm-bindgen for JS edge runtimes into target/edge/
build-edge:
    cargo build --quiet --target {{wasm_target}} --release -p limiter-edge
    wasm-bindgen --target nodejs --out-dir target/edge target/{{wasm_target}}/release/limiter_edge.wasm

# Run the edge build under Node and check it decides like the native test double
test-edge: build-edge
    cargo test --quiet -p limiter-edge
    # Files, not the directory: from Node 21 a directory argument matches itself and is loaded
    # as a module (MODULE_NOT_FOUND; nodejs/node#64555).
    node --test tests/edge/*.test.mjs

# Build the policies and the release binary
build: build-policies
    cargo build --release -p sluice

# Build and serve on $PORT (3000); starts a local Redis under ./var unless REDIS_URL is set
run: build
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "${REDIS_URL:-}" ]; then
        mkdir -p "{{var}}"
        if ! redis-cli -s "{{var}}/redis.sock" ping >/dev/null 2>&1; then
            redis-server redis.conf --port 0 --unixsocket "{{var}}/redis.sock" --unixsocketperm 700 --dir "{{var}}" \
                --daemonize yes --pidfile "{{var}}/redis.pid" --logfile "{{var}}/redis.log"
            for _ in $(seq 50); do redis-cli -s "{{var}}/redis.sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
            echo "started local Redis (AOF) at {{var}}/redis.sock; stop it with: just stop-redis"
        fi
        export REDIS_URL="unix://{{var}}/redis.sock"
    fi
    exec target/release/sluice

# Stop the local Redis that `just run` started
stop-redis:
    -redis-cli -s "{{var}}/redis.sock" shutdown

# Format check, lints, policies, then every test (unit, policy, integration with real Redis, heavy ones alone)
test: build-policies build-test-policies
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    cargo test --workspace
    cargo test --workspace -- --ignored --test-threads 1
    just test-new-policy
    just test-edge

# Benchmark a release build on this machine: throughput, latency by outcome, Redis and CPU cost, memory, queue lateness, micro-benchmarks
bench: build
    cargo build --release --quiet -p sluice-bench
    npm ci --prefix bench/seed --no-audit --no-fund --silent
    cargo run --release --quiet -p sluice-bench --bin sluice-bench
    cargo bench -p sluice --bench policy

# Redis bytes per task with a payload of PAYLOAD_BYTES, for sizing Redis (a fresh Redis and a release Sluice)
bench-memory PAYLOAD_BYTES="0": build
    bench/task-bytes.py {{PAYLOAD_BYTES}}

# Redis instructions per reserve.lua call under callgrind: repeatable where throughput on a shared VM is not (pass other scripts to compare)
bench-script *SCRIPTS:
    bench/reserve-instructions.sh {{SCRIPTS}}
