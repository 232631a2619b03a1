/**
 * The extraction behind `npm run check:samples`: every ```ts block of every Markdown page is
 * found without registering it, with the page line it starts at, and nothing else is.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, test } from "vitest";
import { allSamples, markdownPages, samplesOf } from "../scripts/samples.js";

const root = mkdtempSync(join(tmpdir(), "txonce-samples-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

test("every ts block of every page, under its heading and at its line; other languages and skipped folders are not", () => {
  mkdirSync(join(root, "docs", "deep"), { recursive: true });
  mkdirSync(join(root, "node_modules", "dep"), { recursive: true });
  writeFileSync(join(root, "node_modules", "dep", "README.md"), "```ts\nnot ours\n```\n");
  writeFileSync(
    join(root, "README.md"),
    ["# Title", "", "## Use it", "", "```ts", "const a = 1;", "```", "", "```sh", "```ts", "```", "", "## Later", "```typescript", "const b = 2;", "const c = 3;", "```"].join("\n"),
  );
  writeFileSync(join(root, "docs", "deep", "page.md"), "Text\n\n```ts\nconst d = 4;\n```\n");
  expect(markdownPages(root)).toEqual(["README.md", "docs/deep/page.md"]);
  expect(samplesOf(root, "README.md")).toEqual([
    { page: "README.md", line: 6, heading: "Use it", index: 0, code: "const a = 1;" },
    { page: "README.md", line: 15, heading: "Later", index: 1, code: "const b = 2;\nconst c = 3;" },
  ]);
  expect(allSamples(root).map((s) => `${s.page}:${s.line}`)).toEqual(["README.md:6", "README.md:15", "docs/deep/page.md:4"]);
});

test("this repository's README and docs have samples, all found", () => {
  const pages = new Set(allSamples(join(import.meta.dirname, "..")).map((s) => s.page));
  expect([...pages].sort()).toEqual(expect.arrayContaining(["README.md", "docs/cleanup.md", "docs/http.md", "docs/outbox.md"]));
});

test("an unclosed block is an error naming its line", () => {
  writeFileSync(join(root, "broken.md"), "## X\n```ts\nconst a = 1;\n");
  expect(() => samplesOf(root, "broken.md")).toThrow("broken.md:2: unclosed code block");
});
