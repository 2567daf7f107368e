#!/usr/bin/env bash
# lightdist's front door: run locally, submit to SLURM, or run the tests.
#
#   ./launch.sh local [--devices N] [--cpu|--gpu] [--dry-run] [--] <hydra overrides>
#   ./launch.sh slurm [--nodes N] [--gpus G] [--cpu] [--tasks-per-node T] [--cpus-per-task C]
#                     [--time HH:MM:SS] [--partition P] [--mem M] [--account A] [--job-name J]
#                     [--sweep] [--dry-run] [--] <hydra overrides>
#   ./launch.sh test [pytest arguments]
#
# local: `python -m lightdist` with N processes (trainer=gpu when GPUs are visible, else cpu/cpu_ddp).
# slurm: picks the template (train.sbatch, multinode.sbatch for --nodes>1, train_cpu.sbatch with
#        --cpu, sweep.sbatch with --sweep: one array task per sweep point), runs the preflight
#        (the config composes, devices match the allocation, the partition has the GPUs asked
#        for, the dataset is there) and submits. --dry-run prints what would run or be submitted.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${LIGHTDIST_PYTHON:-$(command -v python || command -v python3)}

die() { echo "launch.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != --* ]] || die "$1 needs a value"; }
need_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

quote() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; echo "${out# }"; }

have_gpus() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

cmd_local() {
  local devices="" mode="" dry=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --devices) need_value "$@"; need_int "$1" "$2"; devices=$2; shift 2 ;;
      --cpu) mode=cpu; shift ;;
      --gpu) mode=gpu; shift ;;
      --dry-run) dry=1; shift ;;
      --) shift; break ;;
      -h|--help) usage; exit 0 ;;
      --*) die "unknown option for local: $1 (see ./launch.sh --help)" ;;
      *) break ;;
    esac
  done
  if [ -z "$mode" ]; then if have_gpus; then mode=gpu; else mode=cpu; fi; fi
  local trainer=()
  if [ "$mode" = gpu ]; then trainer=(trainer=gpu)
  elif [ "${devices:-1}" -gt 1 ]; then trainer=(trainer=cpu_ddp)
  else trainer=(trainer=cpu); fi
  [ -n "$devices" ] && trainer+=("trainer.devices=$devices")
  local cmd=("$PYTHON" -m lightdist "${trainer[@]}" "$@")
  if [ "$dry" = 1 ]; then echo "$(quote "${cmd[@]}")"; return 0; fi
  exec "${cmd[@]}"
}

partition_has_gpus() {  # $1: partition ('' = default). Prints yes/no/unknown.
  command -v sinfo >/dev/null 2>&1 || { echo unknown; return; }
  local line
  if [ -n "$1" ]; then line=$(sinfo -h -p "$1" -o "%G" 2>/dev/null | sort -u | tr '\n' ' ')
  else line=$(sinfo -h -o "%P %G" 2>/dev/null | awk '$1 ~ /\*$/ {print $2}' | sort -u | tr '\n' ' '); fi
  [ -z "$line" ] && { echo unknown; return; }
  case "$line" in *gpu*) echo yes ;; *) echo no ;; esac
}

cmd_slurm() {
  local nodes=1 gpus="" cpu=0 tasks="" cpus="" time="" partition="" mem="" account="" name="" sweep=0 dry=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) need_value "$@"; need_int "$1" "$2"; nodes=$2; shift 2 ;;
      --gpus) need_value "$@"; need_int "$1" "$2"; gpus=$2; shift 2 ;;
      --cpu) cpu=1; shift ;;
      --tasks-per-node) need_value "$@"; need_int "$1" "$2"; tasks=$2; shift 2 ;;
      --cpus-per-task) need_value "$@"; need_int "$1" "$2"; cpus=$2; shift 2 ;;
      --time) need_value "$@"; [[ "$2" =~ ^([0-9]+-)?[0-9]{1,2}(:[0-9]{2}){0,2}$ ]] || die "--time must look like HH:MM:SS or D-HH:MM:SS, got '$2'"; time=$2; shift 2 ;;
      --partition) need_value "$@"; partition=$2; shift 2 ;;
      --mem) need_value "$@"; [[ "$2" =~ ^[0-9]+[KMGT]?$ ]] || die "--mem must look like 16G, got '$2'"; mem=$2; shift 2 ;;
      --account) need_value "$@"; account=$2; shift 2 ;;
      --job-name) need_value "$@"; name=$2; shift 2 ;;
      --sweep) sweep=1; shift ;;
      --dry-run) dry=1; shift ;;
      --) shift; break ;;
      -h|--help) usage; exit 0 ;;
      --*) die "unknown option for slurm: $1 (see ./launch.sh --help)" ;;
      *) break ;;
    esac
  done
  [ "$cpu" = 1 ] && [ -n "$gpus" ] && die "--cpu and --gpus exclude each other"
  local template trainer per_node gpus_per_node
  if [ "$cpu" = 1 ]; then
    per_node=${tasks:-2}; gpus_per_node=0; trainer=trainer=cpu_ddp; template=train_cpu.sbatch
  else
    gpus_per_node=${gpus:-1}
    [ -n "$tasks" ] && [ "$tasks" != "$gpus_per_node" ] && \
      die "--tasks-per-node=$tasks but --gpus=$gpus_per_node: one task per GPU"
    per_node=$gpus_per_node; trainer=trainer=gpu
    template=$([ "$nodes" -gt 1 ] && echo multinode.sbatch || echo train.sbatch)
    if [ "$(partition_has_gpus "$partition")" = no ]; then
      die "partition '${partition:-default}' has no GPUs (no gpu GRES in sinfo); use --cpu or another --partition"
    fi
  fi
  [ "$sweep" = 1 ] && template=sweep.sbatch

  local opts=("--nodes=$nodes" "--ntasks-per-node=$per_node")
  [ "$gpus_per_node" -gt 0 ] && opts+=("--gpus-per-node=$gpus_per_node")
  [ -n "$cpus" ] && opts+=("--cpus-per-task=$cpus")
  [ -n "$time" ] && opts+=("--time=$time")
  [ -n "$partition" ] && opts+=("--partition=$partition")
  [ -n "$mem" ] && opts+=("--mem=$mem")
  [ -n "$account" ] && opts+=("--account=$account")
  [ -n "$name" ] && opts+=("--job-name=$name")

  # Preflight (every point of a sweep): the job's own trainer settings first, the user's
  # overrides after (they win, and a trainer.devices that disagrees with the allocation is refused).
  local check=("$trainer" "trainer.devices=$per_node" "trainer.num_nodes=$nodes" "$@")
  local cores_per_node=$(( per_node * ${cpus:-1} ))
  if [ "$sweep" = 1 ]; then
    local count
    count=$("$PYTHON" -m lightdist sweep count=true "$@") || exit 2
    opts+=("--array=0-$((count - 1))")
  fi
  "$PYTHON" -m lightdist preflight nodes="$nodes" tasks_per_node="$per_node" gpus_per_node="$gpus_per_node" \
    cpus_per_node="$cores_per_node" "${check[@]}" >/dev/null || exit 2

  local submit=(sbatch "${opts[@]}")
  [ "$sweep" = 1 ] && submit=(env "LIGHTDIST_TRAINER=$trainer" "${submit[@]}")
  submit+=("$HERE/slurm/$template" "$@")
  if [ "$dry" = 1 ]; then echo "$(quote "${submit[@]}")"; return 0; fi
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found: is this a SLURM login node?"
  "${submit[@]}"
}

case "${1:-}" in
  local) shift; cmd_local "$@" ;;
  slurm) shift; cmd_slurm "$@" ;;
  test) shift; cd "$HERE"; exec "$PYTHON" -m pytest "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown mode '$1': use local, slurm or test" ;;
esac
