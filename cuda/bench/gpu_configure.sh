# gpu_configure.sh — sourced by the quick loops (quick_m2rnn.sh, quick_attention.sh): unpacks Lua 5.4 from the
# Debian packages in .deps/ (the GPU machine has no Lua) and configures the Release CUDA build in $build for Hopper
# unless it is configured already. Needs $root, $build and $out; the configure log goes to $out/build.log.
mkdir -p "$out" /tmp/lua
for d in "$root"/.deps/liblua5.4-0_*.deb "$root"/.deps/liblua5.4-dev_*.deb; do dpkg -x "$d" /tmp/lua; done
[ -f "$build/build.ninja" ] || cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DM2_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DLUA_INCLUDE_DIRS="/tmp/lua/usr/include/lua5.4;/tmp/lua/usr/include/x86_64-linux-gnu" \
  -DLUA_LIBRARIES=/tmp/lua/usr/lib/x86_64-linux-gnu/liblua5.4.a >"$out/build.log" 2>&1
