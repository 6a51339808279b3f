"""The page's stylesheet, inlined (system fonts: nothing is fetched)."""

CSS = """
:root{--ink:#1f2328;--mute:#656d76;--line:#d8dee4;--bg:#f6f8fa;--good:#2f9e44;--warn:#f08c00;--bad:#e03131}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Liberation Sans",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 16px 40px}
header h1{font-size:22px;margin:0 0 2px}header h1 span{color:var(--mute);font-weight:400;font-size:16px;margin-left:8px}
header p{margin:0 0 14px;color:var(--mute)}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;background:#eef1f4;
 padding:1px 4px;border-radius:4px}
h2{font-size:17px;margin:0 0 10px}
section{margin:0 0 14px}
.verdict{background:#fff;border:1px solid var(--line);border-left:6px solid var(--warn);border-radius:8px;
 padding:14px 16px}
.verdict.good{border-left-color:var(--good)}.verdict.bad{border-left-color:var(--bad)}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:8px}
.fig{background:var(--bg);border-radius:6px;padding:8px 10px}
.fig b{display:block;font-size:20px;font-variant-numeric:tabular-nums;white-space:nowrap}
.fig span{color:var(--mute);font-size:12px}
.fig.good b{color:var(--good)}.fig.bad b{color:var(--bad)}
.notes{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.notes ul{margin:0;padding-left:20px}.notes li{margin:2px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:0 0 14px;min-width:0}
.grid .card{margin:0}
figcaption{font-weight:600;font-size:15px}
.sub{color:var(--mute);font-size:12px;margin:0 0 6px}
.empty{color:var(--mute);font-style:italic;margin:8px 0}
svg.chart{display:block;max-width:100%;height:auto;font-size:11px;fill:#57606a}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--mute);margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;margin-top:8px;font-size:12px}
th{text-align:left;color:var(--mute);font-weight:600;border-bottom:1px solid var(--line);padding:4px 6px}
td{border-bottom:1px solid #eef1f4;padding:4px 6px;vertical-align:top;overflow-wrap:anywhere}
table.num td:not(:first-child),table.num th:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
footer{color:var(--mute);font-size:12px;margin-top:18px}
"""
