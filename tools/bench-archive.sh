#!/usr/bin/env bash
# Benchmarks `qsplit archive write/restore` against the usual copy tools, all in one run, page
# cache warm, median of 3 (issue 3). Prints a Markdown table for docs/BENCHMARKS.md.
#
#   tools/bench-archive.sh            # work dir: $BENCH_DIR or /var/tmp/qsplit-bench (needs ~8 GiB)
#
# Image: 2 GiB, 1 GiB of random data in 1024 scattered 1 MiB pieces (raw, and the same as
# qcow2). Peak RSS: a 1 TiB sparse image holding 1 GiB of data (raw and qcow2).
# Needs: qemu-img, tar, GNU time (/usr/bin/time, Debian package `time`), shuf, a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${BENCH_DIR:-/var/tmp/qsplit-bench}
mkdir -p "$W"
cargo build --release -q
Q="${CARGO_TARGET_DIR:-target}/release/qsplit"
Q=$(realpath "$Q")
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }

# --- images ----------------------------------------------------------------------------
make_image() { # $1 path, $2 size, $3 number of slots (1 MiB each) to pick 1024 from
  local p=$1 size=$2 slots=$3
  [ -f "$p" ] && return
  head -c 1G /dev/urandom > "$W/rand.bin"
  truncate -s "$size" "$p.tmp"
  local i=0
  for slot in $(shuf -i 0-$((slots - 1)) -n 1024 --random-source=<(yes qsplit) | sort -n); do
    dd if="$W/rand.bin" of="$p.tmp" bs=1M skip=$i seek="$slot" count=1 conv=notrunc,sparse status=none
    i=$((i + 1))
  done
  rm -f "$W/rand.bin"
  mv "$p.tmp" "$p"
}
make_image "$W/img.raw" 2G 2048
[ -f "$W/img.qcow2" ] || qemu-img convert -f raw -O qcow2 "$W/img.raw" "$W/img.qcow2"
make_image "$W/huge.raw" 1T $((1 << 20))
[ -f "$W/huge.qcow2" ] || qemu-img convert -f raw -O qcow2 "$W/huge.raw" "$W/huge.qcow2"

# --- timing ----------------------------------------------------------------------------
# t NAME CLEANUP CMD...: runs CMD 3 times after CLEANUP, records median wall seconds, median
# CPU seconds (user + system, less sensitive to other load on the machine) and max RSS.
declare -A T M C
t() {
  local name=$1 cleanup=$2; shift 2
  local ws=() rs=() cs=()
  for _ in 1 2 3; do
    eval "$cleanup"
    sync
    /usr/bin/time -f "%e %M %U %S" -o "$W/time.out" "$@" >/dev/null
    read -r w r u k < "$W/time.out"
    ws+=("$w"); rs+=("$r"); cs+=("$(awk -v u="$u" -v k="$k" 'BEGIN { printf "%.2f", u + k }')")
  done
  T[$name]=$(printf '%s\n' "${ws[@]}" | sort -n | sed -n 2p)
  M[$name]=$(printf '%s\n' "${rs[@]}" | sort -n | tail -1)
  C[$name]=$(printf '%s\n' "${cs[@]}" | sort -n | sed -n 2p)
}
warm() { cat "$@" > /dev/null; }

for f in raw qcow2; do
  img="$W/img.$f"
  warm "$img"
  t "cat_$f" ":" sh -c "cat '$img' > /dev/null"
  t "tar_$f" "rm -f '$W/out.tar'" tar --sparse -cf "$W/out.tar" -C "$W" "img.$f"
  t "conv_$f" "rm -f '$W/out.raw'" qemu-img convert -f "$f" -O raw "$img" "$W/out.raw"
  # qsplit fsyncs what it wrote (a finished set must survive a crash); these baselines do not,
  # so the same baselines are also timed followed by an fsync of their output (`sync FILE`).
  t "convs_$f" "rm -f '$W/out.raw'" sh -c "qemu-img convert -f '$f' -O raw '$img' '$W/out.raw' && sync '$W/out.raw'"
  t "tars_$f" "rm -f '$W/out.tar'" sh -c "tar --sparse -cf '$W/out.tar' -C '$W' 'img.$f' && sync '$W/out.tar'"
  t "write_$f" "rm -f '$W/a.tap'" "$Q" --json archive write "$img" "$W/a.tap"
  warm "$W/a.tap"
  t "restore_$f" "rm -f '$W/out.raw'" "$Q" --json archive restore "$W/a.tap" "$W/out.raw"
  qemu-img compare -q -f "$f" -F raw "$img" "$W/out.raw" || { echo "restore of $f differs!" >&2; exit 1; }
  # the restore baseline: qemu-img convert of the same image to raw (conv_$f)
done
rm -f "$W/out.tar" "$W/out.raw" "$W/a.tap"

for f in raw qcow2; do
  img="$W/huge.$f"   # not pre-read: cat would read 1 TiB of holes; only RSS matters here
  t "hwrite_$f" "rm -f '$W/h.tap'" "$Q" --json archive write "$img" "$W/h.tap"
  t "hrestore_$f" "rm -f '$W/h.out'" "$Q" --json archive restore "$W/h.tap" "$W/h.out"
  rm -f "$W/h.tap" "$W/h.out"
done

r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "Wall seconds, median of 3. \"+ sync\": the baseline followed by an fsync of its output, as qsplit does."
echo
echo "| image | cat > /dev/null | tar --sparse -cf | tar + sync | qemu-img convert -O raw | convert + sync | archive write | archive restore |"
echo "|---|---|---|---|---|---|---|---|"
for f in raw qcow2; do
  echo "| 2 GiB $f, 1 GiB data | ${T[cat_$f]} | ${T[tar_$f]} | ${T[tars_$f]} | ${T[conv_$f]} | ${T[convs_$f]} | ${T[write_$f]} | ${T[restore_$f]} |"
done
echo
echo "| ratio | write / convert (goal <= 0.8) | write / tar (goal <= 0.35) | restore / convert (goal <= 1.0) | write / (convert + sync) | write / (tar + sync) | restore / (convert + sync) |"
echo "|---|---|---|---|---|---|---|"
for f in raw qcow2; do
  echo "| $f | $(r "${T[write_$f]}" "${T[conv_$f]}") | $(r "${T[write_$f]}" "${T[tar_$f]}") | $(r "${T[restore_$f]}" "${T[conv_$f]}") | $(r "${T[write_$f]}" "${T[convs_$f]}") | $(r "${T[write_$f]}" "${T[tars_$f]}") | $(r "${T[restore_$f]}" "${T[convs_$f]}") |"
done
echo
echo "CPU seconds (user + system), median of 3:"
echo
echo "| image | tar --sparse -cf | qemu-img convert -O raw | archive write | archive restore |"
echo "|---|---|---|---|---|"
for f in raw qcow2; do
  echo "| $f | ${C[tar_$f]} | ${C[conv_$f]} | ${C[write_$f]} | ${C[restore_$f]} |"
done
echo
echo "| 1 TiB sparse image, 1 GiB data | archive write | peak RSS | archive restore | peak RSS |"
echo "|---|---|---|---|---|"
for f in raw qcow2; do
  echo "| $f | ${T[hwrite_$f]} s | $((M[hwrite_$f] / 1024)) MiB | ${T[hrestore_$f]} s | $((M[hrestore_$f] / 1024)) MiB |"
done
echo
echo "Peak RSS of archive write on the 2 GiB images: raw $((M[write_raw] / 1024)) MiB, qcow2 $((M[write_qcow2] / 1024)) MiB."
