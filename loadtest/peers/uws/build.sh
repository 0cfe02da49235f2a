#!/usr/bin/env bash
# build.sh: builds the µWebSockets peer (server.cpp) into
# target/peers/uws-server.
#
# UWS_DIR is a checkout of github.com/uNetworking/uWebSockets with its
# uSockets submodule (git clone --recursive); it is not vendored here. Built
# as uWebSockets' own examples are (C++20, -O3, -flto, no SSL, zlib for its
# unused compression) but without -march=native: the binary is carried to
# other machines, and chinwag is built for plain x86-64 too. Needs g++ >= 10,
# make and zlib1g-dev.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
: "${UWS_DIR:?set UWS_DIR to a uWebSockets checkout with its uSockets submodule}"
OUT=$ROOT/target/peers
mkdir -p "$OUT"
make -s -C "$UWS_DIR/uSockets" WITH_OPENSSL=0 WITH_LTO=1 >&2
g++ -std=c++20 -O3 -flto \
    -I"$UWS_DIR/src" -I"$UWS_DIR/uSockets/src" \
    "$HERE/server.cpp" "$UWS_DIR/uSockets/uSockets.a" -lz -o "$OUT/uws-server"
echo "$OUT/uws-server"
