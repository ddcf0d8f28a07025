#!/usr/bin/env bash
# The main job on an embedded default, on a new machine: installs what is missing (QEMU 10
# from bookworm-backports, simh, e2fsprogs), builds qsplit and the test guest, boots a throwaway
# VM with two data disks whose workload keeps writing, attaches qsplit, creates the pairs, runs
# two backup cycles (full, then incremental, guest frozen through its agent) into a tape
# archive, verifies the archive, restores both disks of both cycles, checks the restored
# filesystems (e2fsck, every file against its manifest checksum, both disks from one instant),
# prints a summary, and removes everything it started and made.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
./tools/install.sh >/dev/null
echo "== building qsplit (release) and the test guest"
cargo build --release --quiet
./images/build-guest.sh >/dev/null
Q=$ROOT/target/release/qsplit
[ -n "${CARGO_TARGET_DIR:-}" ] && Q=$CARGO_TARGET_DIR/release/qsplit

W=$(mktemp -d /tmp/qsplit-demo.XXXXXX)
QEMU_PID="" DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
  for _ in $(seq 50); do [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null && sleep 0.1; done
  [ -n "$QEMU_PID" ] && kill -9 "$QEMU_PID" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

SIZE=256M
qemu-img create -q -f qcow2 "$W/vda.qcow2" $SIZE
qemu-img create -q -f qcow2 "$W/vdb.qcow2" $SIZE
echo "== booting a throwaway VM with two ${SIZE} data disks (TCG)"
./images/run-guest.sh --dir "$W/vm" --background --append "qsplit.workload=on" "$W/vda.qcow2" "$W/vdb.qcow2" >"$W/run.out"
QEMU_PID=$(cat "$W/vm/qemu.pid")
for _ in $(seq 900); do grep -q "QSPLIT-GUEST: workload started" "$W/vm/console.log" 2>/dev/null && break; sleep 0.1; done
grep -q "QSPLIT-GUEST: workload started" "$W/vm/console.log" || { echo "guest did not come up:"; cat "$W/vm/console.log"; exit 1; }

export QSPLIT_SOCKET=$W/qsplit.sock
"$Q" daemon --state-dir "$W/state" >"$W/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$QSPLIT_SOCKET" ] && break; sleep 0.1; done

"$Q" vm attach demo --qmp "$W/vm/qmp.sock" --qga "$W/vm/qga.sock"
"$Q" pair create demo vd0 --target "$W/vda-mirror.qcow2"
"$Q" pair create demo vd1 --target "$W/vdb-mirror.qcow2"
"$Q" pair wait demo --state duplex --timeout 300
"$Q" pair status demo

A=$W/demo.tap
echo "== backup cycle 1 (full)"
"$Q" backup demo --archive "$A" --freeze --json >"$W/c1.json"
sleep 3   # let the guest's workload change a few files
echo "== backup cycle 2 (incremental)"
"$Q" backup demo --archive "$A" --freeze --json >"$W/c2.json"
"$Q" archive list "$A"
"$Q" archive verify "$A" >/dev/null && echo "archive verified: every record CRC and every set digest"

echo "== restoring both disks of both cycles and checking the filesystems"
checks=()
for c in c1 c2; do
  for d in 0 1; do
    set=$(python3 -c "import json,sys; print([x for x in json.load(open('$W/$c.json'))['disks'] if x['drive']=='vd$d'][0]['archive_set'])")
    "$Q" archive restore "$A" "$W/$c-vd$d.raw" --set "$set" --json >/dev/null
  done
  ./images/check-restore.sh "$W/$c-vd0.raw" "$W/$c-vd1.raw" >"$W/$c.check" 2>&1 || { cat "$W/$c.check"; exit 1; }
  checks+=("$c: $(tail -1 "$W/$c.check" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("ok=%s files=%s seq=%s" % (v["ok"], sum(i["files"] for i in v["images"]), [i["seq"] for i in v["images"]]))')")
done

python3 - "$W" "$A" "${checks[@]}" <<'PY'
import json, os, sys
w, a, checks = sys.argv[1], sys.argv[2], sys.argv[3:]
def mib(n): return "%.1f MiB" % (n / 1048576)
print("\n== summary")
for i, c in enumerate(["c1", "c2"]):
    r = json.load(open(os.path.join(w, c + ".json")))
    print("cycle %d: split %d (%s consistent), freeze %.0f ms, pause %.1f ms, total %.0f ms, QEMU read %s of its disks while archiving"
          % (i + 1, r["split_seq"], r["consistency"], r["freeze_ms"] or 0, r["pause_ms"], r["total_ms"], r["primary_bytes_read"]))
    for d in r["disks"]:
        print("  %s: set %d %-11s archived %s of a 256 MiB disk, resync copied %s"
              % (d["drive"], d["archive_set"], d["type"], mib(d["bytes_archived"]), mib(d["resync_bytes"])))
print("  (an incremental holds the clusters the guest changed between the two splits; the full")
print("   set holds what the guest had written when the first split was taken)")
size = sum(os.path.getsize(p) for p in [a] + [os.path.join(os.path.dirname(a), f) for f in os.listdir(os.path.dirname(a)) if f.startswith("demo.") and f.endswith(".tap") and f != "demo.tap"])
print("archive: %s on disk" % mib(size))
for c in checks: print("restore check " + c)
PY
