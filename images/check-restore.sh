#!/usr/bin/env bash
# Verifies restored data disks of the qsplit test guest (raw ext4 images), without mounting.
#
#   images/check-restore.sh [--crash] IMAGE.raw [IMAGE.raw ...]
#
# Per image:
#   default (consistent, e.g. split with the guest frozen): the journal must not need recovery
#     (FIFREEZE flushes it and clears needs_recovery, so this proves the freeze happened), and
#     `e2fsck -fn IMAGE` must find the filesystem clean.
#   --crash (crash-consistent, split without freeze): a sparse copy of IMAGE gets `e2fsck -fy`
#     (journal replay + repairs; exit 0 or 1 accepted), then `e2fsck -fn` on the copy must be
#     clean; files are read from the repaired copy. IMAGE itself is never modified.
#   Files are read with debugfs (e2fsprogs): MANIFEST, DISK, SEQ and every file the manifest names.
#   Manifest check, for every file name listed in /MANIFEST (lines "SEQ NAME SHA256"):
#     the file's sha256 equals that of the name's LAST manifest entry, except for at most one
#     in-flight rewrite: the LAST line of the manifest may be ahead of its file if /.NAME.tmp holds
#     exactly that content and NAME still holds its previous entry's content (or is absent when
#     there is no previous entry). A final line without newline is ignored (reported).
#   SEQ checks: the manifest's highest seq M and the SEQ file S satisfy S <= M <= S+1; and, with
#   several images, ordered by their DISK name (vda, vdb, ...), SEQ values are non-increasing and
#   differ by at most 1 (first - last <= 1): what one instant across all disks must show.
#
# Output: human-readable lines on stderr, one JSON object per image on stdout, and a final JSON
# line on stdout:
#   {"ok":true,"mode":"consistent","seq_rule":"ok","images":[{"image":...,"disk":"vda",
#    "fsck":"clean","journal":"clean","entries":N,"files":F,"bad":0,"inflight":0,"partial_line":false,
#    "seq":S,"manifest_seq":M}, ...]}
# "fsck": clean | repaired (--crash: e2fsck -fy fixed things, then clean) | needs_recovery
# (consistent mode, journal not flushed) | errors. "journal": needs_recovery | clean, as found.
# Exit status: 0 all good, 1 any check failed, 2 usage or tool error.
set -euo pipefail

die() { echo "check-restore: error: $*" >&2; exit 2; }
say() { echo "check-restore: $*" >&2; }

mode=consistent
imgs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --crash) mode=crash; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) imgs+=("$1"); shift ;;
  esac
done
[ ${#imgs[@]} -gt 0 ] || die "usage: check-restore.sh [--crash] IMAGE.raw [IMAGE.raw ...]"
# e2fsprogs may live in /sbin, which is not on a non-root PATH.
PATH=$PATH:/sbin:/usr/sbin
for t in e2fsck debugfs dumpe2fs sha256sum awk; do command -v "$t" >/dev/null || die "missing tool $t (e2fsprogs)"; done

work=$(mktemp -d "${TMPDIR:-/tmp}/qsplit-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

fail=0
objs=()
declare -A seq_of=()
n=0
for img in "${imgs[@]}"; do
  n=$((n + 1))
  [ -f "$img" ] || die "no such image: $img"
  if head -c 4 "$img" | grep -q 'QFI'; then
    die "$img is qcow2: convert first (qemu-img convert -O raw $img OUT.raw)"
  fi
  w=$work/$n
  mkdir -p "$w/files"
  src=$img
  fsck=clean
  # A filesystem frozen at the split (FIFREEZE) has its journal flushed and the needs_recovery
  # feature cleared; one copied while live (crash-consistent) still has it set.
  if dumpe2fs -h "$img" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
    journal=needs_recovery
  else
    journal=clean
  fi
  if [ "$mode" = consistent ] && [ "$journal" = needs_recovery ]; then
    fsck=needs_recovery
    say "$img: journal needs recovery: not a frozen (consistent) image; use --crash for crash-consistent ones"
  fi
  if [ "$mode" = crash ]; then
    src=$w/repaired.raw
    cp --sparse=always "$img" "$src"
    set +e
    e2fsck -fy "$src" >"$w/fsck-fix.log" 2>&1
    rc=$?
    set -e
    case $rc in
      0) fsck=clean ;;
      1 | 2) fsck=repaired ;;
      *) fsck=errors ;;
    esac
    say "$img: e2fsck -fy exit $rc ($fsck)"
    [ "$fsck" = errors ] && sed 's/^/  /' "$w/fsck-fix.log" | tail -20 >&2
  fi
  if [ "$fsck" = clean ] || [ "$fsck" = repaired ]; then
    set +e
    e2fsck -fn "$src" >"$w/fsck.log" 2>&1
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
      fsck=errors
      say "$img: e2fsck -fn exit $rc (not clean):"
      sed 's/^/  /' "$w/fsck.log" | tail -20 >&2
    fi
  fi

  # Read MANIFEST, DISK, SEQ, then the files the manifest names (and their .tmp names).
  dump() { # paths... (relative to the fs root) -> $w/files/<same name>
    : >"$w/cmds"
    for p in "$@"; do echo "dump -p \"/$p\" \"$w/files/$p\"" >>"$w/cmds"; done
    debugfs -f "$w/cmds" "$src" >/dev/null 2>"$w/debugfs.err" || true
  }
  dump MANIFEST DISK SEQ
  disk="" seq=""
  [ -f "$w/files/DISK" ] && disk=$(tr -d '\n' <"$w/files/DISK")
  [ -f "$w/files/SEQ" ] && seq=$(tr -d '\n' <"$w/files/SEQ")
  [[ "$seq" =~ ^[0-9]+$ ]] || seq=0
  man=$w/files/MANIFEST
  touch "$man"
  partial=false
  if [ -s "$man" ] && [ "$(tail -c 1 "$man" | od -An -tx1 | tr -d ' ')" != 0a ]; then
    partial=true
  fi
  # Full lines only. Per name: last entry, previous entry; and the manifest's last line.
  awk -v partial="$partial" '
    { lines[NR] = $0 }
    END {
      n = NR; if (partial == "true") n--
      bad = 0; maxseq = 0
      for (i = 1; i <= n; i++) {
        split(lines[i], f, " ")
        if (lines[i] !~ /^[0-9]+ [A-Za-z0-9._-]+ [0-9a-f]+$/ || length(f[3]) != 64) { print "MALFORMED " i; bad++; continue }
        if (f[1] + 0 > maxseq) maxseq = f[1] + 0
        if (f[2] in last) prev[f[2]] = last[f[2]]
        last[f[2]] = f[3]; lastline[f[2]] = i
      }
      for (k in last) print "FILE " k " " last[k] " " ((k in prev) ? prev[k] : "-") " " (lastline[k] == n ? 1 : 0)
      print "ENTRIES " n - bad
      print "MAXSEQ " maxseq
    }' "$man" >"$w/plan"
  mapfile -t names < <(awk '$1 == "FILE" {print $2}' "$w/plan")
  if [ ${#names[@]} -gt 0 ]; then
    dumpl=()
    for f in "${names[@]}"; do dumpl+=("$f" ".$f.tmp"); done
    dump "${dumpl[@]}"
  fi
  sum() { if [ -f "$1" ]; then sha256sum "$1" | cut -c1-64; else echo "-"; fi; }
  bad=0 inflight=0 files=0
  bad=$((bad + $(grep -c '^MALFORMED' "$w/plan" || true)))
  grep '^MALFORMED' "$w/plan" | head -5 | sed "s|^MALFORMED|  $img: malformed manifest line|" >&2 || true
  while read -r _ name want prev islast; do
    files=$((files + 1))
    got=$(sum "$w/files/$name")
    [ "$got" = "$want" ] && continue
    tmp=$(sum "$w/files/.$name.tmp")
    if [ "$islast" = 1 ] && [ "$tmp" = "$want" ] && [ "$got" = "$prev" ] && [ $inflight -eq 0 ]; then
      inflight=1
      continue
    fi
    bad=$((bad + 1))
    say "$img: $name: sha256 $got, manifest says $want (previous $prev, .tmp $tmp)"
  done < <(grep '^FILE ' "$w/plan")
  entries=$(awk '$1 == "ENTRIES" {print $2}' "$w/plan")
  mseq=$(awk '$1 == "MAXSEQ" {print $2}' "$w/plan")
  if [ "$entries" -gt 0 ] && { [ "$mseq" -lt "$seq" ] || [ "$mseq" -gt $((seq + 1)) ]; }; then
    bad=$((bad + 1))
    say "$img: SEQ $seq and manifest's highest seq $mseq break S <= M <= S+1"
  fi
  case "$fsck" in clean | repaired) ;; *) fail=1 ;; esac
  [ $bad -eq 0 ] || fail=1
  [ -n "$disk" ] || disk="image$n"
  seq_of[$disk]=$seq
  obj="{\"image\":$(json_str "$img"),\"disk\":$(json_str "$disk"),\"mode\":\"$mode\",\"fsck\":\"$fsck\",\"journal\":\"$journal\",\"entries\":$entries,\"files\":$files,\"bad\":$bad,\"inflight\":$inflight,\"partial_line\":$partial,\"seq\":$seq,\"manifest_seq\":$mseq}"
  objs+=("$obj")
  echo "$obj"
  say "$img: disk=$disk fsck=$fsck entries=$entries files=$files bad=$bad inflight=$inflight seq=$seq"
done

seq_rule=n/a
if [ ${#imgs[@]} -gt 1 ]; then
  seq_rule=ok
  mapfile -t order < <(printf '%s\n' "${!seq_of[@]}" | sort)
  first=${seq_of[${order[0]}]}
  prev=$first
  for d in "${order[@]}"; do
    s=${seq_of[$d]}
    if [ "$s" -gt "$prev" ] || [ $((first - s)) -gt 1 ]; then seq_rule=violated; fi
    prev=$s
  done
  line=""
  for d in "${order[@]}"; do line="$line $d=${seq_of[$d]}"; done
  say "SEQ$line: $seq_rule (same instant: non-increasing in disk order, first - last <= 1)"
  [ "$seq_rule" = ok ] || fail=1
fi
ok=true
[ $fail -eq 0 ] || ok=false
printf '{"ok":%s,"mode":"%s","seq_rule":"%s","images":[%s]}\n' "$ok" "$mode" "$seq_rule" "$(IFS=,; echo "${objs[*]}")"
exit $fail
