#!/usr/bin/env bash
# Every benchmark of issue 7, one after the other, with the repo's venv (as root: the
# libvirt ones make real QEMU domains at qemu:///system and remove them at the end).
#
#   bench/run.sh                     # all of them
#   bench/run.sh overhead fleet      # a subset, by module name
#   bench/run.sh --quick             # smoke runs (--rounds N too) for every module
#   bench/run.sh --json DIR          # also DIR/<module>.json from each module
#
# Modules: core_scale (3), overhead (1), fleet (2), groups (issue 13), catalog (issue 14), and idle (4) when bench/idle.py is
# there.  Results belong in docs/performance.md with the machine and its load.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(overhead fleet core_scale groups catalog)
[[ -f bench/idle.py ]] && all+=(idle)

names=()
options=()
json_dir=""
while (($#)); do
    case "$1" in
        --json) json_dir="$2"; shift 2 ;;
        --rounds) options+=("$1" "$2"); shift 2 ;;
        -*) options+=("$1"); shift ;;
        *) names+=("$1"); shift ;;
    esac
done
((${#names[@]})) || names=("${all[@]}")
[[ -z "$json_dir" ]] || mkdir -p "$json_dir"

for name in "${names[@]}"; do
    if [[ ! -f "bench/$name.py" ]]; then
        echo "bench/run.sh: no benchmark $name (have: ${all[*]})" >&2
        exit 2
    fi
done

for name in "${names[@]}"; do
    printf '\n== %s (load average: %s)\n' "$name" "$(cut -d' ' -f1-3 /proc/loadavg)"
    extra=(${options[@]+"${options[@]}"})
    [[ -n "$json_dir" ]] && extra+=(--json "$json_dir/$name.json")
    if ((${#extra[@]})) && ! grep -q -- '"--quick"' "bench/$name.py"; then
        # A module without the common options (--rounds, --quick, --json FILE) runs as is.
        echo "($name takes none of: ${extra[*]}; running it without them)"
        .venv/bin/python "bench/$name.py"
    else
        .venv/bin/python "bench/$name.py" ${extra[@]+"${extra[@]}"}
    fi
done
