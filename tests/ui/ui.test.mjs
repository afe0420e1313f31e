// Drives the daemon's web UI in real headless Chromium: the jobs table, "run now" with live
// output and the exit code, the job's slot strip, killing a long run (143) and its failure
// notification delivered, the timeline, and a phone-sized layout.
// Usage: node ui.test.mjs <api base URL> <screenshot dir>
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error("usage: node ui.test.mjs <api base URL> <screenshot dir>");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (page, what) => {
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  throw new Error(what);
};
const step = (what) => console.log(`ui: ${what}`);
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  // Content-Security-Policy violations and failed requests show up as console errors.
  page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
  page.on("dialog", d => d.accept());

  step("the jobs table lists the lab's jobs");
  await page.goto(base + "/");
  await page.waitForSelector('#jobs tr[data-job="uiecho"]', { timeout: 15000 });
  await page.waitForSelector('#jobs tr[data-job="uilong"]');
  const schedule = await page.textContent('#jobs tr[data-job="uiecho"] td:nth-child(3)');
  if (!schedule.includes("(UTC)")) await fail(page, `schedule not in words: ${schedule}`);
  // The last result cell is there; a "missed" badge (a job whose last due slot did not fire)
  // may be absent, but where shown it says why.
  if (!(await page.$('#jobs tr[data-job="uiecho"] td.last'))) await fail(page, "no last result cell");
  const badges = await page.$$eval("#jobs .badge.missed", bs => bs.map(b => b.title));
  if (badges.some(t => !t.includes("did not fire"))) await fail(page, `missed badge titles: ${badges}`);
  await page.screenshot({ path: `${shots}/jobs.png`, fullPage: true });

  step("run now: live output and exit code 0 on every target");
  await page.click('#jobs tr[data-job="uiecho"] a');
  await page.waitForSelector("#run-now");
  await page.click("#run-now");
  await page.waitForURL(/#\/run\/uiecho_/, { timeout: 15000 });
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#targets tbody tr[data-machine]")];
    return rows.length === 3 && rows.every(r => r.querySelector('.badge[data-code="0"]'));
  }, null, { timeout: 60000 });
  await page.waitForFunction(() => {
    const pres = [...document.querySelectorAll("pre.output")];
    return pres.length === 3 && pres.every(p => p.textContent.includes("hello from the UI"));
  }, null, { timeout: 30000 });
  const result = await page.textContent("#run-result");
  if (!result.includes("ok 3/3")) await fail(page, `run result: ${result}`);
  // Which daemon owns the run (several daemons may share a store).
  const owner = (await page.textContent("#run-owner")) || "";
  if (!owner.trim()) await fail(page, "the run page names no daemon");
  await page.screenshot({ path: `${shots}/run-ok.png`, fullPage: true });
  const ran = page.url().split("#/run/")[1];

  step("the job's slot strip shows the manual run, and opens it");
  await page.goto(base + "/#/job/uiecho");
  await page.waitForFunction(() => [...document.querySelectorAll("#slots .slot")]
    .some(c => c.title.includes("fired")), null, { timeout: 15000 });
  // A locator, not a handle: the strip is redrawn every two seconds.
  const cell = page.locator('#slots a.slot[data-state="fired"]').first();
  if (!(await cell.count())) await fail(page, "no fired cell links to its run");
  const title = await cell.getAttribute("title");
  if (!(title || "").includes(decodeURIComponent(ran))) await fail(page, `cell title: ${title}`);
  await page.screenshot({ path: `${shots}/job-slots.png`, fullPage: true });
  await cell.click();
  await page.waitForURL(/#\/run\/uiecho_/, { timeout: 15000 });

  step("kill a long run: 143 on every target");
  await page.goto(base + "/#/job/uilong");
  await page.waitForSelector("#run-now");
  await page.click("#run-now");
  await page.waitForURL(/#\/run\/uilong_/, { timeout: 15000 });
  await page.waitForFunction(() => [...document.querySelectorAll("pre.output")].length === 3 &&
    [...document.querySelectorAll("pre.output")].every(p => p.textContent.includes("started")), null, { timeout: 60000 });
  await page.click("#kill-all");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#targets tbody tr[data-machine]")];
    return rows.length === 3 && rows.every(r => r.querySelector('.badge[data-code="143"]'));
  }, null, { timeout: 60000 });
  const meaning = await page.textContent('#targets .badge[data-code="143"]');
  if (!meaning.includes("killed by user request")) await fail(page, `meaning: ${meaning}`);
  await page.screenshot({ path: `${shots}/killed.png`, fullPage: true });

  step("the killed run's failure notification is listed on the job's page, delivered");
  await page.goto(base + "/#/job/uilong");
  await page.waitForSelector('#deliveries tr[data-delivery] .badge.ok', { timeout: 30000 });
  const delivered = await page.textContent("#deliveries tbody");
  if (!delivered.includes("failure") || !delivered.includes("hook") || !delivered.includes("delivered"))
    await fail(page, `deliveries: ${delivered}`);
  const policy = await page.textContent("#notify-policy");
  if (!policy.includes("failure") || !policy.includes("hook") || !policy.includes("webhook"))
    await fail(page, `notify policy: ${policy}`);
  await page.screenshot({ path: `${shots}/job-notifications.png`, fullPage: true });

  step("the timeline shows the runs");
  await page.goto(base + "/#/timeline");
  await page.waitForSelector("#timeline .bar.ok", { timeout: 15000 });
  await page.waitForSelector("#timeline .bar.bad");
  const width = await page.$eval("#timeline .bar.ok", b => b.getBoundingClientRect().width);
  if (!(width >= 1)) await fail(page, `timeline bars are not laid out (width ${width})`);
  await page.screenshot({ path: `${shots}/timeline.png`, fullPage: true });

  step("readable on a phone");
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const p2 = await phone.newPage();
  await p2.goto(base + "/");
  await p2.waitForSelector('#jobs tr[data-job="uiecho"]', { timeout: 15000 });
  const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await p2.screenshot({ path: `${shots}/jobs-phone.png`, fullPage: true });
  if (overflow > 1) await fail(p2, `the page is ${overflow}px wider than a phone`);

  if (errors.length) await fail(page, `page errors: ${errors.join("; ")}`);
  step("all good");
} finally {
  await browser.close();
}
