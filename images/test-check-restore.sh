#!/usr/bin/env bash
# Host-only tests of check-restore.sh (no QEMU, no root): builds small ext4 images with
# `mke2fs -d` holding hand-made MANIFEST/SEQ/DISK/file states and checks the verdicts.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATH=$PATH:/sbin:/usr/sbin
work=$(mktemp -d /tmp/qsplit-checktest.XXXXXX)
trap 'rm -rf "$work"' EXIT
pass=0 fail=0

sha() { printf '%s' "$1" | sha256sum | cut -c1-64; }
# mkimg NAME DISK SEQ: image from $work/NAME.d (files already written there)
mkimg() {
  echo "$2" >"$work/$1.d/DISK"
  echo "$3" >"$work/$1.d/SEQ"
  mke2fs -q -F -t ext4 -d "$work/$1.d" "$work/$1.raw" 8M >/dev/null
}
newdir() { rm -rf "$work/$1.d"; mkdir -p "$work/$1.d"; }
# expect LABEL EXIT_CODE FRAGMENT ARGS...: runs check-restore, compares exit code and that
# the final JSON line contains the given fragment.
expect() {
  local label=$1 want_rc=$2 frag=$3 rc
  shift 3
  set +e
  "$here/check-restore.sh" "$@" >"$work/out" 2>"$work/err"
  rc=$?
  set -e
  if [ "$rc" -eq "$want_rc" ] && { [ -z "$frag" ] || tail -1 "$work/out" | grep -qF -- "$frag"; }; then
    pass=$((pass + 1))
    echo "ok   $label"
  else
    fail=$((fail + 1))
    echo "FAIL $label: exit $rc (want $want_rc), want fragment $frag in:"
    tail -1 "$work/out"
    sed 's/^/     /' "$work/err"
  fi
}

# good: f000 rewritten twice, f001 once; last entries match.
newdir good
printf 'A2' >"$work/good.d/f000"
printf 'B1' >"$work/good.d/f001"
printf '1 f000 %s\n2 f001 %s\n3 f000 %s\n' "$(sha A1)" "$(sha B1)" "$(sha A2)" >"$work/good.d/MANIFEST"
mkimg good vda 3
expect "consistent image, last entries match" 0 '"bad":0,"inflight":0,"partial_line":false,"seq":3' "$work/good.raw"

# in-flight: manifest's last line is ahead; .f000.tmp has it, f000 still has the previous one.
newdir infl
printf 'A1' >"$work/infl.d/f000"
printf 'A2' >"$work/infl.d/.f000.tmp"
printf '1 f000 %s\n2 f000 %s\n' "$(sha A1)" "$(sha A2)" >"$work/infl.d/MANIFEST"
mkimg infl vda 1
expect "in-flight rewrite on the last line" 0 '"bad":0,"inflight":1' "$work/infl.raw"

# in-flight first write of a file (no previous entry, file absent)
newdir first
printf 'A1' >"$work/first.d/.f000.tmp"
printf '1 f000 %s\n' "$(sha A1)" >"$work/first.d/MANIFEST"
mkimg first vda 0
expect "in-flight first write (file absent)" 0 '"bad":0,"inflight":1' "$work/first.raw"

# not the last line: the exception does not apply.
newdir notlast
printf 'A1' >"$work/notlast.d/f000"
printf 'A2' >"$work/notlast.d/.f000.tmp"
printf 'B1' >"$work/notlast.d/f001"
printf '1 f000 %s\n2 f000 %s\n2 f001 %s\n' "$(sha A1)" "$(sha A2)" "$(sha B1)" >"$work/notlast.d/MANIFEST"
mkimg notlast vda 2
expect "ahead-of-file entry that is not the last line" 1 '"bad":1' "$work/notlast.raw"

# tampered content
newdir bad
printf 'XX' >"$work/bad.d/f000"
printf '1 f000 %s\n' "$(sha A1)" >"$work/bad.d/MANIFEST"
mkimg bad vda 1
expect "file content differs from its last entry" 1 '"bad":1' "$work/bad.raw"

# missing file
newdir gone
printf '1 f000 %s\n' "$(sha A1)" >"$work/gone.d/MANIFEST"
mkimg gone vda 1
expect "listed file missing" 1 '"bad":1' "$work/gone.raw"

# partial final line is ignored
newdir part
printf 'A1' >"$work/part.d/f000"
printf '1 f000 %s\n2 f000 12ab' "$(sha A1)" >"$work/part.d/MANIFEST"
mkimg part vda 1
expect "partial last line ignored" 0 '"bad":0,"inflight":0,"partial_line":true' "$work/part.raw"

# SEQ vs manifest: M must be S or S+1
newdir ahead
printf 'A1' >"$work/ahead.d/f000"
printf '3 f000 %s\n' "$(sha A1)" >"$work/ahead.d/MANIFEST"
mkimg ahead vda 1
expect "manifest seq 2 ahead of SEQ" 1 '"bad":1' "$work/ahead.raw"

# SEQ pair rule across disks (DISK names decide the order, not the argument order)
for pair in "5 5 0 ok" "5 4 0 ok" "4 5 1 violated" "6 4 1 violated"; do
  read -r sa sb rc rule <<<"$pair"
  for d in a b; do newdir "p$d"; : >"$work/p$d.d/MANIFEST"; done
  mkimg pa vda "$sa"
  mkimg pb vdb "$sb"
  expect "SEQ vda=$sa vdb=$sb -> $rule" "$rc" "\"seq_rule\":\"$rule\"" "$work/pb.raw" "$work/pa.raw"
done

# --crash on a clean image works too (copy + e2fsck -fy, image untouched)
before=$(sha256sum "$work/good.raw")
expect "--crash on a clean image" 0 '"mode":"crash","seq_rule":"n/a"' --crash "$work/good.raw"
[ "$(sha256sum "$work/good.raw")" = "$before" ] || { echo "FAIL --crash modified the image"; fail=$((fail + 1)); }

# qcow2 is refused with a hint
qemu-img create -q -f qcow2 "$work/x.qcow2" 8M 2>/dev/null && expect "qcow2 refused" 2 '' "$work/x.qcow2"

echo "check-restore tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
