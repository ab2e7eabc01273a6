// Loads the threatflow console in Debian's chromium (headless, through playwright-core) while a
// job runs, and prints what the page shows as JSON: whether it saw the job running, the alerts
// when the job has finished (with each one's rules and the model's contributions as the expanded
// row shows them), and the rows left by a filter on one user. Optionally saves a screenshot.
//
// node tests/console/check.mjs URL [SCREENSHOT.png]
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", error => errors.push(String(error)));
  await page.goto(url);
  // Seen while the job runs: the status says so and events are counted.
  let sawRunning = false;
  const deadline = Date.now() + 120_000;
  for (;;) {
    const status = await page.textContent("#status");
    if (status === "running") sawRunning = true;
    if (status === "finished") break;
    if (Date.now() > deadline) throw new Error(`the page never said the job finished (status: ${status})`);
    await page.waitForTimeout(50);
  }
  await page.waitForTimeout(700); // the last update
  const rows = await page.$$eval("#alerts tr.alert", trs => trs.map(tr => ({ decision_id: tr.dataset.decision, user: tr.dataset.user })));
  // Expand the newest alert the model raised and read its explanation.
  const modelRow = await page.$$eval("#alerts tr.alert", trs => {
    const tr = trs.find(t => t.children[4].textContent.includes("(model)"));
    return tr ? tr.dataset.decision : null;
  });
  let explained = null;
  if (modelRow) {
    await page.click(`tr[data-decision="${modelRow}"]`);
    const details = page.locator(`tr[data-details="${modelRow}"]`);
    await details.waitFor();
    explained = {
      decision_id: modelRow,
      contributions: await details.locator(".bar").evaluateAll(bars => bars.map(b => [b.dataset.feature, b.querySelector(".value").textContent])),
      features: await details.locator(".features span").allTextContents(),
    };
    if (screenshot) await page.screenshot({ path: screenshot });
  }
  // Filter on one user: only that user's alerts remain.
  const user = rows.length ? rows[rows.length - 1].user : "";
  await page.fill("#filter-user", user);
  const filtered = await page.$$eval("#alerts tr.alert", trs => trs.map(tr => tr.dataset.user));
  console.log(JSON.stringify({ sawRunning, rows, explained, user, filtered, errors }));
} finally {
  await browser.close();
}
