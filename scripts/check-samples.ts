/**
 * `npm run check:samples` (part of `npm run typecheck`): compiles every ```ts block of README.md
 * and docs/ (every Markdown page of the repository, see scripts/samples.ts) under the project's
 * `strict` settings, each as a module of its own, with what a reader has declared in
 * docs/reader.d.ts, and reports errors at the page's line. The modules are written to .samples/
 * (ignored by git), next to a link to the generated Prisma client, so that
 * `./generated/prisma/client.js` in a sample resolves as it does in a project made by
 * `prisma init`.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { allSamples, sampleModule } from "./samples.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, ".samples");
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
symlinkSync(join(root, "generated"), join(out, "generated"), "dir");
copyFileSync(join(root, "docs", "reader.d.ts"), join(out, "reader.d.ts"));

const samples = allSamples(root);
const files = new Map<string, { page: string; line: number; codeLine: number }>();
for (const sample of samples) {
  const name = `${sample.page.replaceAll("/", "_").replace(/\.md$/, "")}_${sample.index + 1}.ts`;
  const { text, codeLine } = sampleModule(sample);
  writeFileSync(join(out, name), text);
  files.set(name, { page: sample.page, line: sample.line, codeLine });
}
writeFileSync(
  join(out, "tsconfig.json"),
  JSON.stringify({ extends: "../tsconfig.json", compilerOptions: { noEmit: true }, include: ["*.ts"], files: ["reader.d.ts"] }, null, 2),
);

const tsc = join(dirname(createRequire(import.meta.url).resolve("typescript/package.json")), "bin", "tsc");
const result = spawnSync(process.execPath, [tsc, "-p", join(out, "tsconfig.json"), "--pretty", "false"], { encoding: "utf8" });
const errors = (result.stdout + result.stderr)
  .split("\n")
  .filter((line) => line.trim() !== "")
  .map((line) => {
    // .samples/README_2.ts(12,5): error TS2345: ...  ->  README.md:67:5: error TS2345: ...
    const match = /^(?:\.samples\/)?([^(/]+\.ts)\((\d+),(\d+)\): (.*)$/.exec(line.replace(`${out}/`, ""));
    const file = match && files.get(match[1]!);
    if (!match || !file) return line;
    const fileLine = Number(match[2]);
    return `${file.page}:${file.line + fileLine - file.codeLine}:${match[3]}: ${match[4]}`;
  });

if (result.status !== 0) {
  console.error(errors.join("\n"));
  console.error(`\nTypeScript samples: ${samples.length} compiled from the Markdown pages, errors above (the modules are in .samples/)`);
  process.exitCode = 1;
} else {
  console.log(`TypeScript samples: all ${samples.length} blocks of ${new Set(samples.map((s) => s.page)).size} pages compile under strict`);
}
