#!/usr/bin/env bash
# Regenerates docs/report.png: `burstq report` of the shipped sample (samples/sentiment-200.jsonl)
# run against the mock server with faults and a server rpm below burstq's --rpm, so the charts
# show retries, 429s and failed records. Needs `pip install -e '.[dev]'` and chromium.
#
#     bash docs/report-screenshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-18765}
work=$(mktemp -d)
burstq mock-server --port "$port" --rpm 900 --latency 0.25 --jitter 0.5 --fault-rate 0.15 \
    --hang-seconds 1.5 --seed 7 >"$work/mock.log" 2>&1 &
mock=$!
trap 'kill "$mock" 2>/dev/null || true; wait "$mock" 2>/dev/null || true; rm -rf "$work"' EXIT
python - "$port" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
PY
# Exit 1 is expected: some requests fail for good (1 retry against a 15 % fault rate).
burstq run samples/sentiment-200.jsonl -o "$work/out.jsonl" --base-url "http://127.0.0.1:$port/v1" \
    --api-key sk-mock --rpm 1500 --max-retries 1 --timeout 1 --progress quiet || [ $? -eq 1 ]
burstq report "$work/out.jsonl" -o "$work/report.html" --title "burstq report: samples/sentiment-200.jsonl"
python -m tests.browser "$work/report.html" docs/report.png 1000
