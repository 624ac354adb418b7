#!/usr/bin/env bash
# Builds mysimbdp, mysimbdp-datagen and the example tenants' plugins (release), installs the plugins into
# plugins/, and runs the platform in this repository's folder on the embedded backend
# (nothing else to install). Extra arguments go to `mysimbdp serve` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
plugins=(
    clientbatchingestapp_client1_csv
    clientbatchingestapp_client1_json
    clientbatchingestapp_client2_txt
    clientstreamingestapp_client1
    clientstreamingestapp_client2
)
packages=(-p mysimbdp -p datagen)
for plugin in "${plugins[@]}"; do packages+=(-p "$plugin"); done
cargo build --release "${packages[@]}"
target="${CARGO_TARGET_DIR:-target}/release"
mkdir -p plugins
for plugin in "${plugins[@]}"; do
    # A temporary name, then a rename: a running platform never sees half a file.
    cp "$target/lib$plugin.so" "plugins/.lib$plugin.so.part"
    mv "plugins/.lib$plugin.so.part" "plugins/lib$plugin.so"
done
export MYSIMBDP_ADMIN_TOKEN="${MYSIMBDP_ADMIN_TOKEN:-admin-demo-token}"
exec "$target/mysimbdp" serve --root . "$@"
