#!/usr/bin/env bash
# Boots the qsplit test guest with the given data disks (vda, vdb, ... in argument order).
#
#   images/run-guest.sh [options] DISK [DISK...]
#     --dir DIR         where qmp.sock, qga.sock, ctl.sock, console.log and qemu.pid go
#                       (default: a new temporary folder, printed)
#     --append "ARGS"   extra kernel parameters, e.g. "qsplit.workload=off qsplit.rate=1048576"
#     --accel ACCEL     tcg (default, or $QSPLIT_ACCEL) | kvm | ...
#     --machine TYPE    QEMU machine type (default q35)
#     --mem MB          guest memory (default 256)
#     --smp N           vCPUs (default 1)
#     --background      start QEMU daemonized, print its pid and the paths, return at once
#     --print           only print the QEMU command line
#   A disk's format is what `qemu-img info` says (qcow2 or raw). A blank disk (zeros) is
#   formatted ext4 by the guest at boot; an ext4 disk is mounted as it is.
#
# The QEMU command line (what the Rust harness replicates; N = 0, 1, ... per disk):
#   qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
#     -machine q35,accel=tcg -cpu max -m 256 -smp 1
#     -kernel images/out/vmlinuz -initrd images/out/initrd.gz
#     -append 'console=ttyS0 panic=-1 loglevel=4 qsplit.workload=on ...'
#     -serial file:DIR/console.log
#     -qmp unix:DIR/qmp.sock,server=on,wait=off
#     -device "virtio-serial-pci,id=vser0"
#     -chardev socket,id=qga0,path=DIR/qga.sock,server=on,wait=off
#     -device "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"
#     -chardev socket,id=ctl0,path=DIR/ctl.sock,server=on,wait=off
#     -device virtserialport,bus=vser0.0,chardev=ctl0,name=org.qsplit.ctl
#     -blockdev driver=qcow2,node-name=diskN,file.driver=file,file.filename=PATH,cache.direct=off
#     -device virtio-blk-pci,drive=diskN,id=vdN
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "run-guest: error: $*" >&2; exit 1; }

dir="" append="" accel=${QSPLIT_ACCEL:-tcg} machine=q35 mem=256 smp=1 background=0 print=0
disks=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --machine) machine=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --background) background=1; shift ;;
    --print) print=1; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) disks+=("$1"); shift ;;
  esac
done

kernel=$here/out/vmlinuz
initrd=$here/out/initrd.gz
if [ ! -s "$kernel" ] || [ ! -s "$initrd" ]; then
  die "no guest built: run images/build-guest.sh first"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (tools/install.sh)"
if [ -z "$dir" ]; then
  if [ "$print" -eq 1 ]; then dir=DIR; else dir=$(mktemp -d /tmp/qsplit-guest.XXXXXX); fi
fi
if [ "$print" -eq 0 ]; then
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
fi

cmd=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
  -machine "$machine,accel=$accel" -cpu max -m "$mem" -smp "$smp"
  -kernel "$kernel" -initrd "$initrd"
  -append "console=ttyS0 panic=-1 loglevel=4 $append"
  -serial "file:$dir/console.log"
  -qmp "unix:$dir/qmp.sock,server=on,wait=off"
  -device "virtio-serial-pci,id=vser0"
  -chardev "socket,id=qga0,path=$dir/qga.sock,server=on,wait=off"
  -device "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"
  -chardev "socket,id=ctl0,path=$dir/ctl.sock,server=on,wait=off"
  -device "virtserialport,bus=vser0.0,chardev=ctl0,name=org.qsplit.ctl")
i=0
for d in "${disks[@]}"; do
  [ -f "$d" ] || die "no such disk image: $d"
  info=$(qemu-img info -U "$d") || die "qemu-img info $d failed"
  fmt=$(sed -n 's/^file format: //p' <<<"$info" | head -1)
  case "$fmt" in qcow2 | raw) ;; *) die "$d: unsupported format $fmt (qcow2 or raw)" ;; esac
  cmd+=(-blockdev "driver=$fmt,node-name=disk$i,file.driver=file,file.filename=$(realpath "$d"),cache.direct=off"
    -device "virtio-blk-pci,drive=disk$i,id=vd$i")
  i=$((i + 1))
done

if [ "$print" -eq 1 ]; then
  # shell-quoted only where needed (single quotes), one line
  for a in "${cmd[@]}"; do
    case "$a" in
      *[!A-Za-z0-9_./,=:+@%-]*) printf "'%s' " "${a//\'/\'\\\'\'}" ;;
      *) printf '%s ' "$a" ;;
    esac
  done
  echo
  exit 0
fi
rm -f "$dir/console.log" "$dir/qemu.pid"
if [ "$background" -eq 1 ]; then
  "${cmd[@]}" -daemonize -pidfile "$dir/qemu.pid" || die "QEMU failed to start"
  echo "pid=$(cat "$dir/qemu.pid")"
  echo "dir=$dir"
  echo "console=$dir/console.log"
  echo "qmp=$dir/qmp.sock"
  echo "qga=$dir/qga.sock"
  echo "ctl=$dir/ctl.sock"
else
  echo "run-guest: console log $dir/console.log; QMP $dir/qmp.sock; agent $dir/qga.sock; ctl $dir/ctl.sock" >&2
  exec "${cmd[@]}"
fi
