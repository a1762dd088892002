#!/usr/bin/env python3
"""The benchmark report's writer (issue 7): Markdown and gnuplot charts from recorded results.

    make_report.py facts --root ROOT --bin-dir DIR [--command TEXT]   host facts as JSON on stdout
    make_report.py report DIR                                          DIR/report.md and DIR/*.png

`bench/run` calls `facts` before the suites and `report` after them. `report` reads only
files, so it runs on recorded results too (bench/testdata/, tests/report_test.sh):

    DIR/host.json          the facts `facts` printed
    DIR/suites/NAME.meta   one suite that ran: rc=, seconds=, command= lines (NAME: fs,
                           cluster, failover; a suite without one did not run)
    DIR/suites/NAME.md     its Markdown (stdout), embedded as it is
    DIR/suites/NAME.json   its --json figures, the charts' only source
    DIR/suites/NAME.log    its progress and warnings (stderr); the tail goes in the report
                           when the suite failed

Every figure in the report comes from these files. Charts are drawn by gnuplot (pngcairo,
else png); the data and scripts it ran are kept in DIR/gnuplot/ so a chart can be redrawn
or restyled (`cd DIR/gnuplot && gnuplot NAME.gp`). Python standard library only.
Exit status: 0 when the report and every chart it names were written, 1 otherwise (the
report is still written, saying which chart is missing and why), 2 for bad usage.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys

SUITES = [
    ("fs", "Single node: sharedfs, ext4, passthrough_ll", "bench/fs_bench.sh"),
    ("cluster", "Three nodes on one disk", "bench/cluster_bench.sh"),
    ("failover", "Node failure", "bench/failover_bench.sh"),
]
LOG_TAIL_LINES = 40
# One colour per series, the same file system always in the same colour.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


# ---------------------------------------------------------------- host facts


def run_text(args, cwd=None):
    """First line of a command's stdout, or None when it cannot run or fails."""
    try:
        p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    out = p.stdout.strip()
    return out.splitlines()[0] if p.returncode == 0 and out else None


def build_type(build_dir, root):
    """CMAKE_BUILD_TYPE of the build, or the project's default when the cache leaves it empty."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    try:
        with open(cache) as f:
            m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", f.read(), re.M)
    except OSError:
        return None
    if m and m.group(1).strip():
        return m.group(1).strip()
    try:
        with open(os.path.join(root, "CMakeLists.txt")) as f:
            d = re.search(r"set\(CMAKE_BUILD_TYPE\s+(\w+)", f.read())
    except OSError:
        d = None
    return f"{d.group(1)} (the project's default)" if d else "(none)"


def cmake_cache(build_dir, key):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            m = re.search(rf"^{re.escape(key)}:\w+=(.*)$", f.read(), re.M)
    except OSError:
        return None
    return m.group(1).strip() if m else None


def facts(args):
    root, bin_dir = os.path.abspath(args.root), os.path.abspath(args.bin_dir)
    build_dir = os.path.dirname(bin_dir)
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu_model = m.group(1).strip() if m else None
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.M)
            mem_kib = int(m.group(1)) if m else None
    except OSError:
        pass
    os_name = None
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', f.read(), re.M)
            os_name = m.group(1) if m else None
    except OSError:
        pass
    cxx = cmake_cache(build_dir, "CMAKE_CXX_COMPILER")
    sharedfs = os.path.join(bin_dir, "sharedfs")
    built = None
    if os.path.exists(sharedfs):
        built = datetime.datetime.fromtimestamp(os.path.getmtime(sharedfs), datetime.timezone.utc)
        built = built.strftime("%Y-%m-%d %H:%M UTC")
    dirty = run_text(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    doc = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": args.command,
        "host": platform.node(),
        "os": os_name,
        "kernel": platform.release(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1048576, 1) if mem_kib else None,
        "var_tmp": run_text(["findmnt", "-rn", "-o", "SOURCE,FSTYPE", "--target", "/var/tmp"]),
        "git_commit": run_text(["git", "-C", root, "rev-parse", "HEAD"]),
        "git_describe": run_text(["git", "-C", root, "describe", "--always", "--dirty"]),
        "git_branch": run_text(["git", "-C", root, "rev-parse", "--abbrev-ref", "HEAD"]),
        "git_dirty": dirty is not None,
        "build_dir": build_dir,
        "build_type": build_type(build_dir, root),
        "compiler": (run_text([cxx, "--version"]) if cxx else None),
        "sharedfs_version": run_text([sharedfs, "version"]),
        "binaries_built": built,
        "libfuse": run_text(["pkg-config", "--modversion", "fuse3"]),
        "fio": run_text(["fio", "--version"]),
        "gnuplot": run_text(["gnuplot", "--version"]),
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


# ---------------------------------------------------------------- formatting


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def short_num(v):
    """Bar labels: three significant figures, k/M suffixes."""
    if not is_num(v):
        return ""
    a = abs(v)
    for div, suf in ((1e6, "M"), (1e3, "k")):
        if a >= div:
            x = v / div
            return (f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}") + suf
    return f"{v:.0f}" if a >= 100 else f"{v:.3g}"


def gp_str(s):
    """A gnuplot double-quoted string."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def fence(text):
    """A Markdown code fence longer than any run of backticks in text."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


# ---------------------------------------------------------------- charts


class Charts:
    """Draws bar charts with gnuplot into the report directory, keeping data and scripts."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.src_dir = os.path.join(out_dir, "gnuplot")
        self.errors = []  # (png, why) for each chart that was not drawn
        self.gnuplot = shutil.which("gnuplot")
        self.terminal = None
        if self.gnuplot:
            p = subprocess.run([self.gnuplot, "-e", "set terminal"], capture_output=True, text=True)
            names = re.findall(r"^\s*(\S+)\s", p.stdout + p.stderr, re.M)
            if "pngcairo" in names:
                self.terminal = "pngcairo size {w},{h} noenhanced font 'sans,10'"
            elif "png" in names:
                self.terminal = "png size {w},{h} noenhanced"

    def bars(self, name, title, categories, series, ylabel, hlines=(), log=None, label_fmt=short_num,
             width=None, height=480):
        """Grouped bars: one group per category, one bar per series (name, values). Values that
        are not numbers (a failed run, n/a) leave a gap. hlines: (y, title) dashed lines.
        log: True, False, or None to choose log scale when the bars span more than 30x.
        Returns the PNG's file name, or None (the reason kept in self.errors)."""
        png = f"{name}.png"
        if not self.gnuplot:
            self.errors.append((png, "gnuplot is not installed (Debian package gnuplot-nox)"))
            return None
        if not self.terminal:
            self.errors.append((png, "this gnuplot has neither the pngcairo nor the png terminal"))
            return None
        if not any(is_num(v) for _, vals in series for v in vals):
            self.errors.append((png, "no figures: every run failed or was n/a"))
            return None
        values = [v for _, vals in series for v in vals if is_num(v) and v > 0]
        if log is None:
            log = bool(values) and max(values) / min(values) > 30
        if log and not values:
            log = False
        if not log:
            # Zero is a figure on a linear scale (no messages sent, say).
            values = [v for _, vals in series for v in vals if is_num(v)]
        span_lines = [y for y, _ in hlines if is_num(y) and y > 0]
        os.makedirs(self.src_dir, exist_ok=True)
        dat = os.path.join(self.src_dir, f"{name}.dat")
        n = len(series)
        bw = 0.8 / n
        with open(dat, "w") as f:
            f.write("# x\t" + "\t".join(f"{s}\t{s} label" for s, _ in series) + "\n")
            for i, _ in enumerate(categories):
                cols = [str(i)]
                for _, vals in series:
                    v = vals[i] if i < len(vals) else None
                    ok = is_num(v) and (v > 0 or not log)
                    cols += [repr(float(v)) if ok else "NaN", label_fmt(v) if ok else "n/a"]
                f.write("\t".join(cols) + "\n")
        top = max(values + span_lines)
        bottom = min(values + span_lines)
        if top <= 0:
            top = 1.0
        if width is None:
            width = max(640, min(1600, 120 + len(categories) * (40 + 28 * n)))
        lines = [
            f"set terminal {self.terminal.format(w=width, h=height)}",
            f"set output {gp_str('../' + png)}",
            f"set title {gp_str(title)}",
            "set datafile separator '\\t'",
            "set style fill solid 0.85 border -1",
            f"set boxwidth {bw:.4f} absolute",
            "set grid ytics",
            "set key inside top left horizontal opaque box",
            f"set ylabel {gp_str(ylabel + (' (log scale)' if log else ''))}",
            f"set xrange [-0.6:{len(categories) - 0.4}]",
            "set xtics (" + ", ".join(f"{gp_str(c)} {i}" for i, c in enumerate(categories)) + ")",
            "set xtics scale 0",
        ]
        if len(categories) > 4 or max(len(c) for c in categories) > 18:
            lines.append("set xtics rotate by -30 left")
            lines.append("set bmargin 8")
            lines.append("set rmargin 12")  # the last label runs to the right of its tick
        if log:
            lines.append("set logscale y")
            # Room above the tallest bar for its label and for the key.
            lines.append(f"set yrange [{bottom / 3:.6g}:{top * 12:.6g}]")
            if bottom / 3 >= 1:
                lines.append("set format y '%.0s%c'")  # 1k, 10k, 1M
        else:
            lines.append(f"set yrange [0:{top * 1.3:.6g}]")
        plots = []
        for j, (s, _) in enumerate(series):
            off = (j - (n - 1) / 2) * bw
            col = 2 + 2 * j
            colour = COLOURS[j % len(COLOURS)]
            plots.append(f"{gp_str(os.path.basename(dat))} using ($1{off:+.4f}):{col} with boxes "
                         f"lc rgb '{colour}' title {gp_str(s)}")
            plots.append(f"'' using ($1{off:+.4f}):{col}:{col + 1} with labels "
                         f"offset 0,0.7 font ',8' notitle")
        for k, (y, t) in enumerate(hlines):
            if is_num(y):
                plots.append(f"{float(y)!r} with lines dt {2 + k} lw 2 lc rgb '#444444' title {gp_str(t)}")
        lines.append("plot " + ", \\\n     ".join(plots))
        gp = os.path.join(self.src_dir, f"{name}.gp")
        with open(gp, "w") as f:
            f.write("# Drawn by bench/make_report.py; to redraw (or restyle) the chart:\n")
            f.write(f"#   cd REPORT_DIR/gnuplot && gnuplot {name}.gp\n")
            f.write("\n".join(lines) + "\n")
        p = subprocess.run([self.gnuplot, os.path.basename(gp)], cwd=self.src_dir,
                           capture_output=True, text=True)
        path = os.path.join(self.out_dir, png)
        if p.returncode != 0 or not valid_png(path):
            why = (p.stderr.strip().splitlines() or ["no PNG written"])[-1]
            self.errors.append((png, f"gnuplot failed: {why}"))
            return None
        return png


def valid_png(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


# ---------------------------------------------------------------- per-suite charts


def fs_charts(doc, charts):
    rows = doc.get("rows", [])
    fss = doc.get("filesystems", ["sharedfs", "ext4", "passthrough_ll"])
    # The small-file row is reported in files/s and in MB/s; files/s goes on the chart.
    rows = [r for r in rows if r.get("id") != "smallmb"]
    cats = [f"{r['short']} ({r['unit']})" for r in rows]
    out = []
    png = charts.bars("fs_throughput", "Single node: median per row (higher is better)", cats,
                      [(fs, [r["median"].get(fs) for r in rows]) for fs in fss],
                      "operations or MB per second")
    if png:
        out.append((png, "single-node rows, sharedfs beside ext4 and passthrough_ll"))
    refs = [fs for fs in fss if fs != "sharedfs"]
    png = charts.bars("fs_ratio", "sharedfs relative to each reference (above 1: sharedfs faster)",
                      [r["short"] for r in rows],
                      [(f"sharedfs / {ref}", [r.get("ratio", {}).get(ref) for r in rows]) for ref in refs],
                      "ratio of medians", hlines=[(1.0, "parity")], label_fmt=lambda v: f"{v:.2f}")
    if png:
        out.append((png, "ratios sharedfs/ext4 and sharedfs/passthrough_ll per row"))
    return out


def cluster_charts(doc, charts):
    rows = {r["id"]: r for r in doc.get("rows", [])}
    out = []
    creates = [rows[k] for k in ("create1", "create2", "create3") if k in rows]
    if creates:
        one = rows.get("create1", {}).get("median")
        nodes = [int(r["id"][-1]) for r in creates]
        series = [("measured, all nodes together", [r["median"] for r in creates])]
        if is_num(one):
            series.append(("n × the 1-node figure (linear scaling)", [n * one for n in nodes]))
        png = charts.bars("cluster_create", "Create scaling: aggregate files/s by nodes creating at once",
                          [f"{n} node{'s' if n > 1 else ''}" for n in nodes], series, "files/s", log=False)
        if png:
            out.append((png, "create rate of 1, 2 and 3 nodes against linear scaling of the 1-node rate"))
    reads = [rows[k] for k in ("read1", "read2") if k in rows]
    if reads:
        png = charts.bars("cluster_read", "Three nodes reading one dataset: epoch 1 (cold) and epoch 2",
                          [r["short"] for r in reads], [("aggregate MB/s", [r["median"] for r in reads])],
                          "MB/s")
        if png:
            out.append((png, "read epochs, MB/s over the bytes all nodes read"))
    apps = [rows[k] for k in ("ppref", "pp2") if k in rows]
    if apps:
        png = charts.bars("cluster_append", "4 KiB appends to one file, alternating descriptors",
                          [r["short"] for r in apps], [("appends/s", [r["median"] for r in apps])],
                          "appends/s")
        if png:
            out.append((png, "appends: one node against lock ping-pong between two nodes"))
    lats = [rows[k] for k in ("pp2.p50", "pp2.p99") if k in rows]
    if lats:
        png = charts.bars("cluster_latency", "Latency of one append (lower is better)",
                          [r["id"].split(".")[1] for r in lats],
                          [("one node (reference)", [r.get("reference_median") for r in lats]),
                           ("node 1 and node 2 in turn", [r["median"] for r in lats])], "µs")
        if png:
            out.append((png, "append latency p50 and p99"))
    if doc.get("counters"):
        withc = [r for r in doc.get("rows", []) if r.get("dlm_messages_per_op")]
        if withc:
            png = charts.bars("cluster_dlm", "DLM messages sent per operation (all nodes, lower is better)",
                              [r["short"] for r in withc],
                              [("messages / op", [r["dlm_messages_per_op"]["median"] for r in withc])],
                              "messages per operation", log=False, label_fmt=lambda v: f"{v:.3g}")
            if png:
                out.append((png, "lock messages per operation from the daemons' counters"))
    return out


def failover_charts(doc, charts):
    out = []
    fo = doc.get("failover_ms", [])
    if fo:
        png = charts.bars("failover_time", "SIGKILL of a node to a survivor's first write to its file",
                          [f"run {i + 1}" for i in range(len(fo))], [("failover", fo)], "ms",
                          hlines=[(doc.get("timeout_ms"), "dead-node timeout"),
                                  (doc.get("target_failover_ms"), "target: timeout + 1 s")], log=False,
                          label_fmt=lambda v: f"{v:.0f}")
        if png:
            out.append((png, "failover time per run against the dead-node timeout"))
    bl, base = doc.get("blocked_ms", []), doc.get("baseline_ms", [])
    if bl:
        png = charts.bars("failover_blocked",
                          "Longest write+fsync on a file the dead node never touched (lower is better)",
                          [f"run {i + 1}" for i in range(len(bl))],
                          [("during the failover", bl), ("before the kill", base)], "ms")
        if png:
            out.append((png, "node 1's longest write+fsync during the failover and before it"))
    return out


CHARTS = {"fs": fs_charts, "cluster": cluster_charts, "failover": failover_charts}


# ---------------------------------------------------------------- report


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_meta(path):
    text = read(path)
    if text is None:
        return None
    meta = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            meta[k.strip()] = v.strip()
    return meta


def host_table(host):
    def g(k):
        v = host.get(k)
        return "—" if v in (None, "") else str(v)
    commit = g("git_commit")
    if host.get("git_describe"):
        commit += f" ({host['git_describe']}, branch {g('git_branch')})"
    cpus = g("cpus") + (f" × {host['cpu_model']}" if host.get("cpu_model") else "")
    rows = [
        ("date", f"{g('started')} to {g('finished')}"),
        ("command", f"`{g('command')}`"),
        ("host", g("host")),
        ("OS, kernel", f"{g('os')}, kernel {g('kernel')}"),
        ("CPUs", cpus),
        ("memory", f"{g('memory_gib')} GiB"),
        ("/var/tmp (images, work directories)", g("var_tmp")),
        ("git commit", commit),
        ("build", f"{g('build_type')}, {g('compiler')}; {g('build_dir')}"),
        ("sharedfs", f"{g('sharedfs_version')} (binaries built {g('binaries_built')})"),
        ("references", f"libfuse {g('libfuse')} (passthrough_ll), {g('fio')}"),
        ("charts", g("gnuplot")),
    ]
    lines = ["| | |", "|---|---|"]
    lines += ["| " + k + " | " + v.replace("|", "\\|") + " |" for k, v in rows]
    return "\n".join(lines)


def report(args):
    out_dir = os.path.abspath(args.dir)
    sdir = os.path.join(out_dir, "suites")
    host_text = read(os.path.join(out_dir, "host.json"))
    try:
        host = json.loads(host_text) if host_text else {}
    except ValueError:
        host = {}
    # The run ended when the last suite did (its .meta is written then): a report redrawn
    # later keeps the run's dates.
    metas = [os.path.join(sdir, f"{n}.meta") for n, _, _ in SUITES]
    ends = [os.path.getmtime(m) for m in metas if os.path.exists(m)]
    if ends:
        end = datetime.datetime.fromtimestamp(max(ends), datetime.timezone.utc)
        host.setdefault("finished", end.strftime("%Y-%m-%d %H:%M:%S UTC"))
    charts = Charts(out_dir)
    ran, failed = [], []
    sections = []
    for name, title, script in SUITES:
        meta = read_meta(os.path.join(sdir, f"{name}.meta"))
        if meta is None:
            continue
        ran.append(name)
        rc = meta.get("rc", "?")
        ok = rc == "0"
        if not ok:
            failed.append(name)
        md = (read(os.path.join(sdir, f"{name}.md")) or "").strip()
        jtext = read(os.path.join(sdir, f"{name}.json"))
        doc, jerr = None, None
        if jtext is None:
            jerr = f"no {name}.json: the suite stopped before writing its figures"
        else:
            try:
                doc = json.loads(jtext)
            except ValueError as e:
                jerr = f"{name}.json is not valid JSON ({e})"
        sec = [f"## {title}", ""]
        status = "passed" if ok else f"**FAILED** (exit status {rc})"
        sec.append(f"`{script}`: {status}, {meta.get('seconds', '?')} s. "
                   f"Command: `{meta.get('command', '?')}`.")
        sec.append("")
        if md:
            # The suite's own heading goes one level down under this section's.
            sec.append(re.sub(r"^(#+) ", r"#\1 ", md, flags=re.M))
        else:
            sec.append("_The suite printed no table._")
        sec.append("")
        if doc is not None:
            before = len(charts.errors)
            for png, alt in CHARTS[name](doc, charts):
                sec += [f"![{alt}]({png})", ""]
            if not ok and len(charts.errors) > before:
                # Expected of a failed suite: said here, not counted against the report.
                missing = charts.errors[before:]
                del charts.errors[before:]
                sec += ["_Charts not drawn: " + "; ".join(f"`{p}`: {w}" for p, w in missing) + "._", ""]
        elif jerr:
            sec += [f"_No charts: {jerr}._", ""]
        if not ok:
            log = read(os.path.join(sdir, f"{name}.log")) or ""
            tail = "\n".join(log.rstrip("\n").splitlines()[-LOG_TAIL_LINES:])
            fn = fence(tail)
            sec += [f"Last {LOG_TAIL_LINES} lines of its log (`suites/{name}.log`):", "",
                    fn, tail, fn, ""]
        sections.append("\n".join(sec))
    if not ran:
        print(f"make_report: no suite results under {sdir}", file=sys.stderr)
        return 1

    head = ["# sharedfs benchmark report", "",
            "Every figure below was measured in this run on this host; each suite measures its "
            "references (kernel ext4 on a loop device, libfuse's passthrough_ll over that ext4, "
            "or sharedfs itself in a reference configuration) in the same run. "
            "See bench/README.md for what each row measures.", "",
            host_table(host), "",
            "| suite | status | time |", "|---|---|--:|"]
    for name, title, script in SUITES:
        meta = read_meta(os.path.join(sdir, f"{name}.meta"))
        if meta is None:
            head.append(f"| {title} | not run | — |")
        else:
            st = "passed" if meta.get("rc") == "0" else f"**FAILED** (exit status {meta.get('rc', '?')})"
            head.append(f"| {title} | {st} | {meta.get('seconds', '?')} s |")
    head.append("")
    tail = []
    if charts.errors:
        tail += ["## Charts not drawn", ""]
        tail += [f"- `{png}`: {why}" for png, why in charts.errors]
        tail.append("")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(head) + "\n" + "\n".join(sections) + "\n" + "\n".join(tail))
    for png, why in charts.errors:
        print(f"make_report: {png} not drawn: {why}", file=sys.stderr)
    print(os.path.join(out_dir, "report.md"))
    return 1 if charts.errors else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("facts", help="host facts as JSON on stdout")
    f.add_argument("--root", required=True, help="the source tree (git commit, default build type)")
    f.add_argument("--bin-dir", required=True, help="the build's bin/ (its parent holds CMakeCache.txt)")
    f.add_argument("--command", default="", help="the command line to record")
    r = sub.add_parser("report", help="DIR/report.md and DIR/*.png from DIR/host.json and DIR/suites/")
    r.add_argument("dir")
    args = ap.parse_args()
    return facts(args) if args.cmd == "facts" else report(args)


if __name__ == "__main__":
    sys.exit(main())
