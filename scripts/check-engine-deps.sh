#!/usr/bin/env bash
# The engine must not link the command line's or the load generator's crates (issue 9): `cargo tree` of
# each crate named (default: the engine, port-sharding) must not list clap, hdrhistogram or indicatif among
# its normal (non-dev, non-build) dependencies. Only the engine qualifies: the CLI links all three (it runs
# the load generator), and so do the Python and Ruby extensions, which link the CLI on purpose.
set -euo pipefail
CARGO=${CARGO:-cargo}
crates=("$@")
[ ${#crates[@]} -gt 0 ] || crates=(port-sharding)
status=0
for crate in "${crates[@]}"; do
    tree=$("$CARGO" tree --locked -e normal -p "$crate" --prefix none)
    bad=$(grep -E '^(clap|hdrhistogram|indicatif)( |$)' <<<"$tree" | sort -u || true)
    if [ -n "$bad" ]; then
        echo "check-engine-deps: $crate links what only the command line and the load generator need:" >&2
        sed 's/^/  /' <<<"$bad" >&2
        status=1
    fi
done
[ $status -ne 0 ] || echo "check-engine-deps: ${crates[*]} links no clap, hdrhistogram or indicatif"
exit $status
