// Watches the modelwatch dashboard in Debian's chromium (playwright-core; no browser download) while
// the real pipeline runs, and prints one JSON line per step for tests/test_dashboard_browser.py,
// which asserts on them and restarts the dashboard service when it reads the `alert` step. Nothing
// is asserted here: a step whose page never shows what it waits for fails the walk, naming the step.
//
// Input (environment): DASHBOARD_URL, SHOTS (folder for one PNG per step), CHROMIUM (its path),
// ALERT_FEATURE (the feature whose drift alert to wait for).
import path from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
let page;
let step = "launch";

const say = (what) => process.stdout.write(JSON.stringify({ step, ...what }) + "\n");
const shot = (name) => page.screenshot({ path: path.join(env.SHOTS, `${name}.png`), fullPage: true });
const text = async (id) => (await page.locator(`#${id}`).innerText()).trim();
const rowsTotal = async () => Number((await text("rows-total")).replaceAll(",", ""));

async function grows(id, timeout) {
  const before = await rowsTotal();
  await page.waitForFunction(([sel, n]) => Number(document.querySelector(sel).textContent.replaceAll(",", "")) > n,
    [`#${id}`, before], { timeout });
  return [before, await rowsTotal()];
}

const browser = await chromium.launch({ executablePath: env.CHROMIUM, headless: true, args: ARGS });
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));

  step = "load";
  const started = Date.now();
  await page.goto(env.DASHBOARD_URL, { waitUntil: "load" });
  const loadedMs = Date.now() - started;
  await page.waitForSelector("body[data-status=live]", { timeout: 10000 });
  const liveMs = Date.now() - started;
  const nav = await page.evaluate(() => {
    const n = performance.getEntriesByType("navigation")[0];
    return { domContentLoaded: n.domContentLoadedEventEnd, load: n.loadEventEnd };
  });
  await shot("1-loaded");
  say({ loadedMs, liveMs, nav, hosts: [...new Set(requests.map((u) => new URL(u).host))] });

  step = "live";
  const rows = await grows("rows-total", 30000);
  await page.waitForFunction(() => document.querySelectorAll("#rows tbody tr").length >= 10, null, { timeout: 30000 });
  const firstRow = await page.locator("#rows tbody tr").first().getAttribute("data-message-id");
  const after = await grows("rows-total", 30000);
  const newest = await page.locator("#rows tbody tr").first().getAttribute("data-message-id");
  say({ rows, after, firstRow, newest, rate: await text("rows-per-s") });

  step = "windows";
  await page.waitForFunction(() => document.querySelectorAll("#drift-table tbody tr").length > 0, null, { timeout: 60000 });
  await page.waitForFunction(() => document.querySelectorAll("#error-chart .u-over").length === 1, null, { timeout: 60000 });
  const drift = await page.locator("#drift-table tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.feature));
  await shot("2-windows");
  say({ drift, window: await text("drift-window") });

  step = "alert";
  const selector = `#open-alerts tbody tr[data-alert*="/${env.ALERT_FEATURE}/"]`;
  await page.waitForSelector(selector, { timeout: 90000 });
  const alert = page.locator(selector).first();
  const alertId = await alert.getAttribute("data-alert");
  const links = await alert.locator("a.trace-link").evaluateAll((as) => as.map((a) => ({
    href: a.href, traceId: a.dataset.traceId, messageId: a.previousElementSibling?.textContent })));
  await shot("3-alert");
  say({ alert: alertId, links, openAlerts: await text("open-alert-count") });

  step = "restart";  // the test stops the dashboard service now and starts it again
  await page.waitForSelector("body[data-status=reconnecting]", { timeout: 30000 });
  await page.waitForSelector("body[data-status=live]", { timeout: 60000 });
  const kept = await page.locator(`#open-alerts tbody tr[data-alert="${alertId}"]`).count();
  const resumed = await grows("rows-total", 30000);
  await shot("4-after-restart");
  const ids = await page.locator("#rows tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.messageId));
  say({ kept, resumed, errors, ids });
  step = "done";
  say({});
} catch (e) {
  if (page) await shot(`failed-${step}`).catch(() => {});
  process.stdout.write(JSON.stringify({ failed: step, error: String(e).slice(0, 2000) }) + "\n");
  process.exitCode = 1;
} finally {
  await browser.close();
}
