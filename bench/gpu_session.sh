#!/usr/bin/env bash
# Issue 30's checks on a lent GPU machine, as one call of at most 9.5 minutes: the carried packages
# unpacked and checked, bench/gpu_e2e.sh (the user's commands end to end, at most 7 minutes here),
# then bench/gpu_check.sh, ours beside timm's implementation, compiled, until the call's time is
# spent (ViT-B/16 first, then R50x1, then R50+ViT-B/16). Logs and rows go to $OUT.
#   here, first:  python bench/device_env.py build        # .devenv/site.tar.xz: Ray, MLflow, fvcore ...
#   there:        the device tool's run: carry [".devenv"], timeout_s 600, command:
#                 bash bench/gpu_session.sh
#   a second call for the rows the first had no time for, e.g.:
#                 bash bench/gpu_session.sh --no-e2e --models R50x1 R50+ViT-B/16
#   bash bench/gpu_session.sh --dry     # on a CPU: the same steps in their dry modes (checks the script)
# Arguments other than --dry and --no-e2e go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
out=${OUT:-$PWD/gpu_session-out}
site=${DEVICE_SITE:-/tmp/site}
dry=() e2e=1 check=()
for arg in "$@"; do
    case $arg in
        --dry) dry=(--dry) ;;
        --no-e2e) e2e=0 ;;
        *) check+=("$arg") ;;
    esac
done
mkdir -p "$out"
if [ ! -d "$site/ray" ]; then
    mkdir -p "$site" && tar xJf .devenv/site.tar.xz -C "$site" || { echo "gpu_session: no .devenv/site.tar.xz (python bench/device_env.py build, then carry .devenv)"; exit 1; }
fi
export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 bench/device_env.py check 2>&1 | tee "$out/env.log"
status=${PIPESTATUS[0]}
# a package that does not import stops the pipeline, not the timing of the models (torch and fvcore)
[ "$status" = 0 ] || { echo "gpu_session: the packages do not all import (env.log): gpu_e2e left out"; e2e=0; }
if [ $e2e = 1 ]; then
    rm -rf /tmp/gpu_e2e
    timeout 420 bash bench/gpu_e2e.sh "${dry[@]}" --work /tmp/gpu_e2e --out "$out/e2e.json" 2>&1 | tee "$out/e2e.log"
    status=${PIPESTATUS[0]}
    (cd /tmp/gpu_e2e && tar czf "$out/e2e-logs.tgz" ./*.log ./*.err) 2>/dev/null
fi
left=$(( 560 - (SECONDS - start) ))
if [ $left -gt 60 ]; then
    modes=(--modes compiled "compiled channels-last")
    [ ${#dry[@]} = 1 ] && modes=()
    # no model starts in the last 2 minutes: a compiled R50+ViT-B/16 takes about that
    timeout $left python3 bench/gpu_check.py "${dry[@]}" --timm --no-loader "${modes[@]}" \
        --budget-s $(( left - 120 > 0 ? left - 120 : 0 )) --out "$out/check.jsonl" "${check[@]}" 2>&1 | tee "$out/check.log"
fi
echo "gpu_session: exit $status (the packages, then gpu_e2e); $(( SECONDS - start )) s in all; files in $out"
exit $status
