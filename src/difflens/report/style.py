"""The report's stylesheet, inlined into the page (no external fonts or images)."""

CSS = """
:root{--fg:#1d2330;--muted:#6b7280;--line:#e3e6ec;--bg:#f6f7f9;--card:#fff;--accent:#2f5fa7;
--sel:#0f7b6c;--selbg:#d9f2ec;--warn:#9a5b00;--warnbg:#fff6e5;--err:#a12a2a;--errbg:#fdecec;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
.layout{display:grid;grid-template-columns:230px minmax(0,1fr);max-width:1500px;margin:0 auto}
nav.toc{position:sticky;top:0;align-self:start;height:100vh;overflow:auto;padding:22px 14px 22px 20px;
border-right:1px solid var(--line);font-size:13px}
nav.toc .brand{font-weight:700;font-size:16px;margin-bottom:12px;letter-spacing:.2px}
nav.toc ul{list-style:none;margin:0;padding:0}
nav.toc li{margin:3px 0}
nav.toc ul ul{padding-left:12px;border-left:2px solid var(--line);margin:3px 0 8px 2px}
nav.toc a{color:var(--fg);text-decoration:none}
nav.toc a:hover{color:var(--accent)}
main{padding:24px 32px 60px;min-width:0}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:36px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:22px 0 8px;color:#2b3445}
h4{font-size:14px;margin:18px 0 6px;color:#2b3445}
h5{font-size:13px;margin:12px 0 4px}
.sub{color:var(--muted);margin:0 0 18px}
.muted{color:var(--muted)}
.small{font-size:12.5px}
code{font-family:var(--mono);font-size:12.5px;background:#eef0f4;padding:1px 5px;border-radius:4px}
table{border-collapse:collapse;background:var(--card)}
th,td{border:1px solid var(--line);padding:6px 9px;vertical-align:top;text-align:left}
th{background:#f0f2f6;font-weight:600}
table.kv.header{width:100%}
table.kv>tbody>tr>th{width:170px;white-space:nowrap}
table.inner th,table.inner td{padding:3px 8px;font-size:13px}
table.compact th,table.compact td{padding:3px 8px;font-size:12.5px}
table.num td{font-variant-numeric:tabular-nums;text-align:right}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.stages td:first-child{white-space:nowrap}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:12px 0}
.card h3{margin-top:2px}
.chartrow{display:flex;gap:22px;align-items:flex-start;flex-wrap:wrap}
svg.chart{background:#fff;flex:none}
svg.chart .grid{stroke:#eceef2}
svg.chart .axis{stroke:#9aa1ad}
svg.chart text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;fill:#4b5563}
svg.chart .val{font-size:10px;fill:#1d2330}
svg.chart .axlabel{font-size:11.5px;fill:#374151}
svg.chart .ref{stroke-width:1.6;stroke-dasharray:6 4}
svg.chart .ref.eta-ft{stroke:#c2410c}
svg.chart .ref.eta-base{stroke:#6b7280;stroke-dasharray:2 3}
svg.chart .reflabel.eta-ft{fill:#c2410c;font-weight:600}
svg.chart .reflabel.eta-base{fill:#6b7280}
svg.chart .dot{fill:#fff;stroke:#7c3f0b;stroke-width:1.4}
.badge{display:inline-block;font-size:11.5px;font-weight:600;padding:1px 8px;border-radius:10px;white-space:nowrap}
.badge.ok{background:#dcf3e4;color:#17663a}
.badge.part{background:var(--warnbg);color:var(--warn)}
.badge.no{background:#eceef2;color:#555e6c}
.badge.scale{background:#e5edf9;color:#234c8c;font-family:var(--mono);margin-right:8px}
.empty{background:var(--warnbg);border:1px dashed #e3b66a;color:#5d3b00;border-radius:6px;padding:9px 12px;margin:8px 0}
.error{background:var(--errbg);border:1px solid #e7a3a3;color:var(--err);border-radius:6px;padding:9px 12px;margin:8px 0}
table.grid3{width:100%;table-layout:fixed}
table.grid3 th:first-child,table.grid3 td.pos{width:64px}
td.pos{font-weight:600;white-space:nowrap;color:#374151;background:#fafbfc}
.cellhead{margin-bottom:5px}
.chips{display:flex;flex-wrap:wrap;gap:4px}
.chip{display:inline-flex;flex-direction:column;border:1px solid #d5d9e0;border-radius:5px;padding:1px 6px 2px;
background:#fff;min-width:22px}
.chip .tok{font-family:var(--mono);font-size:12.5px;white-space:pre;line-height:1.35}
.chip .pbar{display:block;height:3px;background:#eef0f4;border-radius:2px;margin-top:1px}
.chip .pbar span{display:block;height:3px;background:#7d8aa0;border-radius:2px}
.chip.sel{background:var(--selbg);border-color:#7cc9b7;color:#0b4f45;font-weight:600}
.chip.sel .pbar span{background:var(--sel)}
.chip.dim{opacity:.5}
.ws{color:#9aa3b2;font-weight:400}
.chip.sel .ws{color:#5fae9c}
.chip.neg{border-color:#efc7c7;color:#8a2b2b;background:#fff8f8}
.chip.neg .pbar span{background:#d48a8a}
.chip.inline{display:inline-flex;vertical-align:middle;padding:0 5px}
.chip.inline .tok{font-size:11.5px}
.lensrow{display:flex;gap:6px;align-items:flex-start;margin:2px 0}
.lensrow .sign{font-weight:700;width:12px;color:#374151;padding-top:1px}
.negrow{margin-top:5px}
.mini{display:inline-block;font-family:var(--mono);font-size:12px;background:#f1f3f6;border-radius:4px;padding:0 5px;
margin:1px 2px;white-space:pre}
details{margin:6px 0}
details>summary{cursor:pointer;color:var(--accent);font-size:13px}
details.scales table tr.chosen td{background:var(--selbg)}
.rationale{font-size:12.5px;color:#4b5563;margin-top:5px;font-style:italic}
.flag{font-size:12.5px;color:#92400e;background:#fffbeb;border:1px solid #fcd34d;border-radius:6px;padding:4px 6px;margin-top:6px}
details.steerpos{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 14px;margin:10px 0}
details.steerpos>summary{font-size:14px;font-weight:600;color:#2b3445}
.prompt{margin:12px 0 16px}
.ptext{font-weight:600;margin-bottom:5px}
.plabel{display:inline-block;font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.5px;
background:#e5edf9;color:#234c8c;border-radius:4px;padding:0 6px;margin-right:4px}
table.sbs{width:100%;table-layout:fixed}
table.sbs th{font-size:12.5px}
.gen{white-space:pre-wrap;word-wrap:break-word;font-size:13px;line-height:1.45}
.gen.steered{color:#5a2a00}
.longtext{white-space:pre-wrap;word-wrap:break-word;max-height:320px;overflow:auto;font-size:13px}
pre.json{font-family:var(--mono);font-size:12px;white-space:pre-wrap;margin:0}
.numv{font-variant-numeric:tabular-nums}
table.generic th,table.generic td{font-size:13px;padding:4px 8px}
ol{margin:2px 0;padding-left:22px}
footer{margin-top:40px;color:var(--muted);font-size:12px}
@media (max-width:900px){.layout{grid-template-columns:1fr}nav.toc{position:static;height:auto;border:0}}
@media print{nav.toc{display:none}.layout{display:block}details{display:block}}
.ctl { font-size: 10px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: #6b5b95;
       background: #efeaf8; border-radius: 3px; padding: 0 4px; margin-left: 4px; white-space: nowrap; }
.controls { border-left: 3px solid #d9cff0; padding: 2px 10px; margin: 8px 0 12px; }
.gen.control { background: #f6f3fb; }
.msg { border-left: 3px solid var(--line); margin: 6px 0; padding: 2px 10px; background: var(--card); }
.msg.assistant { border-left-color: var(--accent); }
.msg.tool { border-left-color: var(--sel); }
.msg .who { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.msg pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; font-family: var(--mono); font-size: 12px; }
.ctl.base { color: #1f5f8b; background: #e3f0f8; }
.up { color: #17663a; font-size: 11px; }
table.methods td:first-child, table.methods td.org + td { text-align: left; }
table.lead td:first-child { text-align: left; }
figure.fig { margin: 0; }
figure.fig figcaption { font-size: 12.5px; font-weight: 600; color: #374151; margin: 0 0 2px 52px; }
table.methods td.org { vertical-align: middle; background: #fafbfc; }
table.ranked td { padding: 2px 6px; }
table.ranked td:first-child { color: var(--muted); font-variant-numeric: tabular-nums; text-align: right; }
table.ranked th { font-size: 12px; font-weight: 600; vertical-align: bottom; }
.relv { font-weight: 600; color: var(--sel); font-size: 12px; }
ul.missing { margin: 4px 0 0; padding-left: 20px; }
.card.method h3 { margin-bottom: 2px; }
.ctx { font-family: var(--mono); font-size: 12px; white-space: pre-wrap; word-break: break-word; }
mark.tok { background: #fde68a; color: #1d2330; outline: 1.5px solid #d97706; border-radius: 2px; padding: 0 1px;
           font-weight: 700; }
mark.tok .ws { color: #92400e; }
table.contexts td:nth-child(4) { max-width: 820px; }
.heat { font-family: var(--mono); font-size: 12.5px; line-height: 1.9; white-space: pre-wrap; word-break: break-word;
        background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; margin: 6px 0; }
.heat span, .heat mark { border-radius: 2px; }
.heat .pre { color: #9aa3b2; }
.heat mark.peak { outline: 2px solid #1d2330; color: inherit; }
.heatlegend { display: flex; gap: 8px; align-items: center; font-size: 12px; margin: 2px 0 10px; }
.heatlegend .ramp { display: inline-block; width: 140px; height: 10px; border-radius: 3px;
                    background: linear-gradient(90deg, rgba(194,65,12,0.04), rgba(194,65,12,0.85)); }
"""
