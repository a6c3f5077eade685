// Walks the RabbitMQ management UI in Debian's chromium (playwright-core; no browser download) and
// prints what each page showed, as JSON, for tests/test_management_ui.py to assert on. It asserts
// nothing itself: a step whose page never shows what it waits for fails the walk, naming the step.
//
// Input (environment): UI_URL, UI_ADMIN_PASSWORD, UI_SERVICE_USER, UI_SERVICE_PASSWORD, UI_VHOST,
// UI_QUEUE (whose messages to get), UI_SHOTS (folder for one PNG per step), CHROMIUM (its path).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const seen = {};
let page;
let step = "launch";

async function shot(name, fullPage = true) {
  await page.screenshot({ path: path.join(env.UI_SHOTS, `${name}.png`), fullPage });
}

async function login(user, password) {
  await page.locator("input[name=username]").fill(user);
  await page.locator("input[name=password]").fill(password);
  const whoami = page.waitForResponse((r) => r.url().endsWith("/api/whoami"));
  await page.locator("input[type=submit][value=Login]").click();
  const response = await whoami;
  return { status: response.status(), body: await response.text() };
}

// Each row of the page's list table as {header: cell text}, plus the titles of the cell's <abbr>s
// (the Features column abbreviates arguments: DLX means x-dead-letter-exchange, its title says so).
async function listTable() {
  await page.locator("table.list tbody tr").first().waitFor();
  return page.locator("table.list").evaluate((table) => {
    const headers = [...table.querySelectorAll("thead tr:last-child th")].map((th) => th.innerText.trim());
    return [...table.querySelectorAll("tbody > tr")].map((tr) => {
      const row = {};
      [...tr.children].forEach((td, i) => {
        const key = headers[i] || `column ${i}`;
        row[key] = td.innerText.trim();
        const titles = [...td.querySelectorAll("abbr")].map((a) => a.title).filter(Boolean);
        if (titles.length) row[`${key} titles`] = titles;
      });
      return row;
    });
  });
}

function totalShown(queue) {
  const table = document.querySelector("table.list");
  if (!table) return false;
  const headers = [...table.querySelectorAll("thead tr:last-child th")].map((th) => th.innerText.trim());
  const row = [...table.querySelectorAll("tbody > tr")]
    .find((tr) => [...tr.children].some((td) => td.innerText.trim() === queue));
  const total = row?.children[headers.indexOf("Total")];
  return Boolean(total) && total.innerText.trim() !== "?";
}

// The facts of a got message: {Exchange, Routing Key, ..., properties: {name: value}} where
// nested tables (headers) are flattened into the same map.
async function gotMessage() {
  const box = page.locator("#msg-wrapper div.box").first();
  await box.waitFor();
  // The page slides the message in (jQuery, 200 ms); until then it is there but 0 px high.
  await page.waitForFunction(() => !window.jQuery("#msg-wrapper").is(":animated"));
  return box.evaluate((div) => {
    const facts = {};
    for (const tr of div.querySelectorAll("table.facts > tbody > tr")) {
      facts[tr.querySelector("th").innerText.trim().split("\n")[0]] = tr.querySelector("td").innerText.trim();
    }
    const properties = {};
    for (const tr of div.querySelectorAll("table.mini tr")) {
      const name = tr.querySelector(":scope > th")?.innerText.trim().replace(/:$/, "");
      const value = tr.querySelector(":scope > td");
      if (name && value) properties[name] = value.innerText.trim();
    }
    return { heading: div.querySelector("h3").innerText, facts, properties };
  });
}

const walk = {
  async adminLogsIn() {
    await page.goto(env.UI_URL);
    seen.adminLogin = await login("admin", env.UI_ADMIN_PASSWORD);
    await page.locator("#logout input[value='Log out']").waitFor();
    // The tabs and the page come after the header, from further requests.
    await page.locator("#tabs a", { hasText: "Exchanges" }).waitFor();
    await page.locator("h1", { hasText: "Overview" }).waitFor();
    seen.header = await page.locator("#logout").innerText();
    seen.versions = await page.locator("#versions").innerText();
    seen.tabs = await page.locator("#tabs").innerText();
    await shot("1-overview-as-admin");
  },
  async exchanges() {
    await page.goto(`${env.UI_URL}#/exchanges`);
    await page.locator("h1", { hasText: "Exchanges" }).waitFor();
    seen.exchanges = await listTable();
    await shot("2-exchanges");
  },
  async queues() {
    await page.goto(`${env.UI_URL}#/queues`);
    await page.locator("h1", { hasText: "Queues" }).waitFor();
    // Counts read "?" until the node's first statistics; the page refreshes every 5 s.
    await page.waitForFunction(totalShown, env.UI_QUEUE);
    seen.queues = await listTable();
    await shot("3-queues");
  },
  async getMessage() {
    const vhost = encodeURIComponent(env.UI_VHOST);
    await page.goto(`${env.UI_URL}#/queues/${vhost}/${encodeURIComponent(env.UI_QUEUE)}`);
    await page.locator("h1", { hasText: env.UI_QUEUE }).waitFor();
    await page.locator("h2", { hasText: "Get messages" }).click();
    // The default ack mode, "Nack message requeue true": the message stays in the queue.
    seen.ackMode = await page.locator("select[name=ackmode] option:checked").innerText();
    await page.locator("input[type=submit][value='Get Message(s)']").click();
    seen.message = await gotMessage();
    // The window as a person sees it, scrolled to the message.
    await page.locator("#msg-wrapper div.box").scrollIntoViewIfNeeded();
    await shot("4-dead-letter-got", false);
    await page.locator("#msg-wrapper").screenshot({ path: path.join(env.UI_SHOTS, "4-dead-letter-got-close-up.png") });
  },
  async adminLogsOut() {
    await page.locator("#logout input[value='Log out']").click();
    await page.locator("input[name=username]").waitFor();
    seen.afterLogout = { loginForm: await page.locator("#login form").count(),
      logoutButton: await page.locator("#logout").count() };
    await shot("5-logged-out");
  },
  async serviceUserIsRefused() {
    seen.serviceLogin = await login(env.UI_SERVICE_USER, env.UI_SERVICE_PASSWORD);
    await page.locator("#login-status p").waitFor();
    seen.serviceLogin.status_text = await page.locator("#login-status").innerText();
    seen.serviceLogin.logoutButton = await page.locator("#logout").count();
    await shot("6-service-user-refused");
  },
};

const profile = mkdtempSync(path.join(tmpdir(), "modelwatch-chromium-"));
let context;
let failed = null;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env.CHROMIUM || "/usr/bin/chromium", headless: true, args: ARGS,
    viewport: { width: 1280, height: 900 },
  });
  context.setDefaultTimeout(30_000);
  page = context.pages()[0] || (await context.newPage());
  seen.browser = await page.evaluate(() => navigator.userAgent);
  for (const [name, action] of Object.entries(walk)) {
    step = name;
    await action();
  }
} catch (error) {
  failed = { step, error: String(error.message || error).split("\n").slice(0, 6).join("\n") };
  if (page) await shot(`failed-${step}`).catch(() => {});
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify({ ...seen, failed }, null, 1));
process.exit(failed ? 1 : 0);
