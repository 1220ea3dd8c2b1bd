/// <reference types="vitest/config" />
// Builds the TokenLens web app into dist/, which `tokenlens ui` serves. `npm run dev` proxies /api to a
// running `tokenlens ui` (TOKENLENS_UI_API, default http://127.0.0.1:8765) for hot-reload development.
import { defineConfig } from "vite";

export default defineConfig({
  oxc: { jsx: { runtime: "automatic" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 800 },
  server: {
    proxy: { "/api": process.env.TOKENLENS_UI_API ?? "http://127.0.0.1:8765" },
  },
  test: {
    environment: "jsdom",
    globals: true,
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test-setup.ts"],
  },
});
