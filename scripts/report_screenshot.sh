#!/usr/bin/env bash
# Render a Snakemake report.html to a PNG with Debian's headless chromium, optionally opening one result.
#
#   scripts/report_screenshot.sh REPORT.html OUT.png [RESULT] [WIDTH] [HEIGHT]
#
# RESULT is the end of a result's path (e.g. evaluate/grid.png): the page opens that result, as a click on
# its "view" button would, before the screenshot. The page also loads every image result of the report
# in the browser and writes the outcome into <div id="rf-check" data-images="N" data-broken="a,b">; with
# DUMP_DOM=file set, the DOM after load is saved there (tests read it). The report file is not modified:
# the checking script is added to a temporary copy.
set -euo pipefail

report=${1:?usage: $0 REPORT.html OUT.png [RESULT] [WIDTH] [HEIGHT]}
out=${2:?usage: $0 REPORT.html OUT.png [RESULT] [WIDTH] [HEIGHT]}
result=${3:-}
width=${4:-1400}
height=${5:-900}
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[[ -n "$chromium" ]] || { echo "chromium not found (apt-get install chromium)" >&2; exit 2; }
[[ -f "$report" ]] || { echo "no such report: $report" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
page="$tmp/report.html"
# headless chromium's viewport is shorter than --window-size while the screenshot has the full size:
# the report's full-height panels (tailwind h-screen = 100vh) are stretched to the screenshot height.
inject=$(cat <<EOF
<style>.h-screen { height: ${height}px !important; }</style>
<script>
window.addEventListener("load", function () {
  const wanted = ${result@Q};
  const images = Object.entries(results).filter(([, r]) => r.mime_type.startsWith("image/"));
  const check = document.createElement("div");
  check.id = "rf-check";
  check.style.display = "none";
  document.body.appendChild(check);
  const broken = [];
  let pending = images.length;
  const done = () => { check.dataset.images = images.length; check.dataset.broken = broken.join(","); };
  done();
  images.forEach(([path, r]) => {
    const img = new Image();
    img.onload = () => { if (!img.naturalWidth) broken.push(path); if (--pending === 0) done(); };
    img.onerror = () => { broken.push(path); if (--pending === 0) done(); };
    img.src = r.data_uri;
  });
  const hit = wanted && Object.keys(results).find((p) => p.endsWith(wanted));
  const open = () => {  // once React has mounted the app (it sets the global "app")
    if (typeof app === "undefined") return setTimeout(open, 100);
    const r = results[hit];
    const kind = r.mime_type.startsWith("image/") ? "img" : (r.mime_type === "text/html" ? "html" : "text");
    app.setView({ navbarMode: "resultinfo", content: kind, contentPath: r.data_uri, resultPath: hit });
    check.dataset.opened = hit;
  };
  if (hit) open();
});
</script>
EOF
)
# single quotes from ${result@Q} are valid JS string delimiters; add the script before </body>
python3 - "$report" "$page" "$inject" <<'PY'
import sys
src, dst, inject = sys.argv[1:4]
html = open(src, encoding="utf-8").read()
pos = html.rfind("</body>")
html = html[:pos] + inject + html[pos:] if pos >= 0 else html + inject
open(dst, "w", encoding="utf-8").write(html)
PY

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$tmp/profile"
       --window-size="$width,$height" --virtual-time-budget=15000)
"$chromium" "${flags[@]}" --screenshot="$(realpath -m "$out")" "file://$page" >"$tmp/chromium.log" 2>&1 \
  || { cat "$tmp/chromium.log" >&2; exit 1; }
if [[ -n "${DUMP_DOM:-}" ]]; then
  "$chromium" "${flags[@]}" --dump-dom "file://$page" >"$DUMP_DOM" 2>"$tmp/chromium-dom.log" \
    || { cat "$tmp/chromium-dom.log" >&2; exit 1; }
fi
[[ -s "$out" ]] || { echo "no screenshot written" >&2; cat "$tmp/chromium.log" >&2; exit 1; }
echo "$out"
