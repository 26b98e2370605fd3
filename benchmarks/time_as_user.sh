#!/usr/bin/env bash
# Times what README and the notebooks promise, as a user runs it: notebooks 02 and 06 by
# `jupyter execute` with their full parameters (kernel start included) and `sxtlab demo`
# twice, each in a fresh temporary folder. Run it alone on the machine; the load average
# is printed beside each time. Record the output in benchmarks/results/user_times.md.
#
#     bash benchmarks/time_as_user.sh [NOTEBOOK ...]    # default: 02_segment_and_measure 06_study
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
notebooks=("${@:-02_segment_and_measure 06_study}")
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, sxtlab at $(git -C "$repo" rev-parse --short HEAD)"
for nb in ${notebooks[@]}; do
    mkdir "$tmp/$nb" && cp "$repo/notebooks/$nb.ipynb" "$tmp/$nb/"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$tmp/$nb" && /usr/bin/time -f "notebook $nb: %e s wall, %U + %S CPU s (user + system); load before: $load" \
        jupyter execute "$nb.ipynb" > log 2>&1; tail -1 log)
done
for i in 1 2; do
    mkdir "$tmp/demo$i"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$tmp/demo$i" && /usr/bin/time -f "sxtlab demo, run $i: %e s wall, %U + %S CPU s (user + system); load before: $load" \
        sxtlab demo > log 2>&1; tail -1 log; grep "Dice against" log | sed 's/.*Dice against/  Dice against/')
done
