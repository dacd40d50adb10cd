#!/usr/bin/env bash
# Prints the medians of the last `cargo bench -p bench --bench codec` run as a markdown
# table (nanoseconds per operation, criterion's median point estimate and its 95% interval).
# Run from the workspace root; honours CARGO_TARGET_DIR. Needs jq.
set -euo pipefail
dir="${CARGO_TARGET_DIR:-target}/criterion"
cell() {
    local f="$dir/$1_$2/$3/new/estimates.json"
    if [[ -f $f ]]; then
        jq -r '.median | "\(.point_estimate * 10 | round / 10) (\(.confidence_interval.lower_bound * 10 | round / 10)–\(.confidence_interval.upper_bound * 10 | round / 10))"' "$f"
    else
        echo "n/a"
    fi
}
echo "| frame | operation | rkyv | JSON | prost |"
echo "| --- | --- | ---: | ---: | ---: |"
for frame in send delivery; do
    for op in encode access decode; do
        echo "| $frame | $op | $(cell "$frame" "$op" rkyv) | $(cell "$frame" "$op" json) | $(cell "$frame" "$op" prost) |"
    done
done
