// End-to-end tests in headless Chromium against a running `tokenlens ui`. tests/ui/test_e2e_browser.py makes
// real runs with `tokenlens run`, starts the server and runs this with:
//   TOKENLENS_UI_URL        the server, e.g. http://127.0.0.1:8765
//   TOKENLENS_E2E_RESULTS   the results directory the server reads (the spec checks the page against its files)
//   TOKENLENS_E2E_RUNS      two run ids with the same prompts, comma-separated (the first is the one explored)
//   TOKENLENS_E2E_ARTIFACTS where screenshots go (default ../../tests/artifacts)
//   CHROMIUM_PATH           the browser (default /usr/bin/chromium: Debian's, since `playwright install` can't
//                           download browsers here)
import { defineConfig } from "@playwright/test";

const artifacts = process.env.TOKENLENS_E2E_ARTIFACTS ?? "../../tests/artifacts";

export default defineConfig({
  testDir: "e2e",
  timeout: 90_000,
  expect: { timeout: 15_000 },
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  outputDir: `${artifacts}/playwright`,
  use: {
    baseURL: process.env.TOKENLENS_UI_URL ?? "http://127.0.0.1:8765",
    viewport: { width: 1440, height: 1000 },
    acceptDownloads: true,
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
    browserName: "chromium",
    headless: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
  },
});
