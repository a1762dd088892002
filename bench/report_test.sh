#!/usr/bin/env bash
# ctest bench_report: bench/make_report.py on results recorded by a real `bench/run --quick`
# (bench/testdata/report/), in a temporary directory removed on exit. Checks that
# report.md carries the host facts and every suite's table, that every chart it embeds is
# a PNG drawn from the recorded figures, that a failed suite is reported with its log tail
# while the others keep their charts, and that a missing gnuplot makes the report say so
# and the exit status 1. Exit 77 (skipped) without python3 or gnuplot.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FIXTURE="$HERE/testdata/report"
REPORT="$HERE/make_report.py"

PY="$(command -v python3)" || { echo "skipped: python3 is missing"; exit 77; }
# The interpreter itself (not a shim that needs PATH), for the run without gnuplot on PATH.
PY="$("$PY" -c 'import sys; print(sys.executable)')"
command -v gnuplot >/dev/null || { echo "skipped: gnuplot is missing (gnuplot-nox)"; exit 77; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sharedfs-report-test.XXXXXX")" || exit 1
trap 'rm -rf "$TMP"' EXIT

FAILS=0
fail() {
  echo "FAIL: $*"
  FAILS=$((FAILS + 1))
}
has() {  # has FILE TEXT: FILE holds the line fragment TEXT
  grep -qF -- "$2" "$1" || fail "$1 lacks: $2"
}
lacks() {
  ! grep -qF -- "$2" "$1" || fail "$1 should not hold: $2"
}
is_png() {
  [ "$(head -c 8 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]
}
# embedded DIR: the PNG file names report.md embeds, one a line.
embedded() { grep -o '!\[[^]]*\]([^)]*\.png)' "$1/report.md" | sed 's/.*(\(.*\))/\1/'; }
# json FILE EXPR: a figure from a fixture, EXPR a Python expression over the document d.
json() { "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# ---- 1. every suite passed: tables, facts, every chart.
D="$TMP/all"
cp -r "$FIXTURE" "$D"
"$PY" "$REPORT" report "$D" >"$TMP/out1" 2>&1 || { cat "$TMP/out1"; fail "make_report failed on the full fixture"; }
R="$D/report.md"
[ -s "$R" ] || { fail "no report.md"; exit 1; }
has "$R" "# sharedfs benchmark report"
has "$R" "| git commit | $(json "$D/host.json" 'd["git_commit"]')"
has "$R" "kernel $(json "$D/host.json" 'd["kernel"]')"
has "$R" "| memory | $(json "$D/host.json" 'd["memory_gib"]') GiB |"
has "$R" "| build | $(json "$D/host.json" 'd["build_type"]')"
# Each suite's table as the suite printed it, its heading one level down.
for s in fs cluster failover; do
  while IFS= read -r line; do
    case "$line" in
      "## "*) has "$R" "#$line" ;;
      "|"*) has "$R" "$line" ;;
    esac
  done <"$D/suites/$s.md"
done
lacks "$R" "FAILED"
lacks "$R" "Charts not drawn"
expected="fs_throughput fs_ratio cluster_create cluster_read cluster_append cluster_latency cluster_dlm failover_time failover_blocked"
for c in $expected; do
  embedded "$D" | grep -qx "$c.png" || fail "report.md does not embed $c.png"
done
n=0
for png in $(embedded "$D"); do
  n=$((n + 1))
  is_png "$D/$png" || fail "$png is not a PNG"
  [ "$(stat -c %s "$D/$png")" -gt 2000 ] || fail "$png is suspiciously small"
done
[ "$n" -ge 9 ] || fail "only $n charts embedded"
# The charts are drawn from the recorded figures: the medians are in their data.
has "$D/gnuplot/fs_throughput.dat" "$(json "$D/suites/fs.json" 'repr(float(d["rows"][0]["median"]["sharedfs"]))')"
has "$D/gnuplot/fs_throughput.dat" "$(json "$D/suites/fs.json" 'repr(float(d["rows"][0]["median"]["ext4"]))')"
has "$D/gnuplot/cluster_read.dat" "$(json "$D/suites/cluster.json" 'repr(float([r for r in d["rows"] if r["id"] == "read2"][0]["median"]))')"
has "$D/gnuplot/failover_time.dat" "$(json "$D/suites/failover.json" 'repr(float(d["failover_ms"][0]))')"
has "$D/gnuplot/failover_time.gp" "$(json "$D/suites/failover.json" 'repr(float(d["timeout_ms"]))')"

# ---- 2. one suite failed before its figures: reported with its log, the rest intact.
D="$TMP/failed"
cp -r "$FIXTURE" "$D"
sed -i 's/^rc=.*/rc=1/' "$D/suites/failover.meta"
rm "$D/suites/failover.json"
: >"$D/suites/failover.md"
echo "failover_bench: the last line of a failed run" >>"$D/suites/failover.log"
"$PY" "$REPORT" report "$D" >"$TMP/out2" 2>&1 || { cat "$TMP/out2"; fail "make_report failed with a failed suite"; }
R="$D/report.md"
has "$R" "**FAILED** (exit status 1)"
has "$R" "failover_bench: the last line of a failed run"
has "$R" "Last 40 lines of its log"
has "$R" "The suite printed no table"
embedded "$D" | grep -q '^failover_' && fail "charts embedded for the failed suite without figures"
embedded "$D" | grep -qx fs_throughput.png || fail "the passing suites lost their charts"
embedded "$D" | grep -qx cluster_create.png || fail "the passing suites lost their charts"

# ---- 3. a suite failed in every row but wrote its figures: its charts are said to be
# missing in its section, which does not make the report incomplete.
D="$TMP/allfail"
cp -r "$FIXTURE" "$D"
sed -i 's/^rc=.*/rc=1/' "$D/suites/cluster.meta"
"$PY" - "$D/suites/cluster.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    r["median"] = r["reference_median"] = "fail"
    r["runs"] = ["fail"]
    for k in ("dlm_messages_per_op", "lock_requests", "device_reads", "device_read_mb"):
        if r[k]:
            r[k] = {"runs": ["fail"], "median": "fail"}
json.dump(d, open(sys.argv[1], "w"))
EOF
"$PY" "$REPORT" report "$D" >"$TMP/out3" 2>&1 || { cat "$TMP/out3"; fail "make_report failed with a suite failed in every row"; }
# shellcheck disable=SC2016  # the backquotes are Markdown
has "$D/report.md" '_Charts not drawn: `cluster_create.png`: no figures'
lacks "$D/report.md" "## Charts not drawn"
embedded "$D" | grep -q '^cluster_' && fail "cluster charts without cluster figures"
embedded "$D" | grep -qx failover_time.png || fail "the passing suites lost their charts"

# ---- 4. only some suites ran.
D="$TMP/only"
cp -r "$FIXTURE" "$D"
rm "$D"/suites/cluster.* "$D"/suites/failover.*
"$PY" "$REPORT" report "$D" >"$TMP/out4" 2>&1 || { cat "$TMP/out4"; fail "make_report failed with one suite"; }
has "$D/report.md" "| Three nodes on one disk | not run | — |"
embedded "$D" | grep -q '^cluster_' && fail "cluster charts without a cluster run"

# ---- 5. no gnuplot: the report says so and the exit status is 1.
D="$TMP/nognuplot"
cp -r "$FIXTURE" "$D"
if PATH="$TMP/empty-path" "$PY" "$REPORT" report "$D" >"$TMP/out5" 2>&1; then
  fail "make_report exited 0 without gnuplot"
fi
has "$D/report.md" "## Charts not drawn"
has "$D/report.md" "gnuplot is not installed"
[ -z "$(embedded "$D")" ] || fail "charts embedded without gnuplot"

# ---- 6. no results at all: an error, not an empty report.
D="$TMP/empty"
mkdir -p "$D/suites"
if "$PY" "$REPORT" report "$D" >"$TMP/out6" 2>&1; then fail "make_report exited 0 without results"; fi

if [ "$FAILS" -ne 0 ]; then
  echo "$FAILS check(s) failed"
  exit 1
fi
echo "bench_report: all checks passed"
