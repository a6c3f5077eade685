// Opens the dashboard in Debian's chromium for DURATION_S seconds and prints, as JSON, how the page
// kept up: events received, the longest main-thread task (PerformanceObserver "longtask"), and
// the gap between the rows counter's changes. Used by hand with the pipeline at full speed
// (docs/dashboard.md); the live-update behaviour itself is tests/dashboard.mjs's.
import { chromium } from "playwright-core";

const env = process.env;
const browser = await chromium.launch({ executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true, args: ["--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
await page.addInitScript(() => {
  window.__long = [];
  new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration)))
    .observe({ type: "longtask", buffered: true });
  window.__updates = [];
  const orig = window.EventSource;
  window.EventSource = function (...a) {
    const s = new orig(...a);
    s.addEventListener("update", () => window.__updates.push(performance.now()));
    return s;
  };
});
const started = Date.now();
await page.goto(env.DASHBOARD_URL, { waitUntil: "load" });
const loadMs = Date.now() - started;
await page.waitForTimeout(Number(env.DURATION_S || 20) * 1000);
const seen = await page.evaluate(() => {
  const u = window.__updates;
  const gaps = u.slice(1).map((t, i) => t - u[i]);
  return { updates: u.length, maxGapMs: Math.max(...gaps), longTasks: window.__long.length,
    longestTaskMs: Math.max(0, ...window.__long), rows: document.getElementById("rows-total").textContent,
    rate: document.getElementById("rows-per-s").textContent };
});
console.log(JSON.stringify({ loadMs, ...seen }));
await browser.close();
