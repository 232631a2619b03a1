/**
 * The TypeScript samples of the documentation: every ```ts block of every Markdown page in the
 * repository, as `npm run typecheck` compiles them (scripts/check-samples.ts) and
 * `npm run check:package` runs some of them. What a reader is assumed to have (their Prisma
 * client, a logger, the request being handled ...) is declared once, as globals, in
 * docs/reader.d.ts; a sample's own imports and declarations shadow those. Nothing needs
 * registering: a block added later is compiled as it is, and fails until it compiles.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

export interface Sample {
  /** The page, relative to the repository, e.g. `docs/outbox.md`. */
  readonly page: string;
  /** Line of the page where the block's code starts (1-based). */
  readonly line: number;
  /** The `##` heading the block is under, e.g. `Use it`. */
  readonly heading: string;
  /** Its position among the page's TypeScript blocks (0-based). */
  readonly index: number;
  readonly code: string;
}

const TS_FENCE = /^```(ts|typescript|mts)\s*$/;
const SKIPPED_FOLDERS = new Set(["node_modules", "dist", "generated", "coverage", ".git", ".samples"]);

/** The Markdown pages of the repository at `root`. */
export function markdownPages(root: string): string[] {
  const pages: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        if (!SKIPPED_FOLDERS.has(entry.name)) walk(join(dir, entry.name));
      } else if (entry.name.endsWith(".md")) {
        pages.push(relative(root, join(dir, entry.name)));
      }
    }
  };
  walk(root);
  return pages.sort();
}

/** The TypeScript blocks of one page. */
export function samplesOf(root: string, page: string): Sample[] {
  const lines = readFileSync(join(root, page), "utf8").split("\n");
  const samples: Sample[] = [];
  let heading = "";
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^## /.test(line)) heading = line.slice(3).trim();
    if (TS_FENCE.test(line)) {
      const end = lines.findIndex((l, j) => j > i && /^```\s*$/.test(l));
      if (end === -1) throw new Error(`${page}:${i + 1}: unclosed code block`);
      samples.push({
        page,
        line: i + 2,
        heading,
        index: samples.length,
        code: lines.slice(i + 1, end).join("\n"),
      });
      i = end;
      continue;
    }
    if (/^```/.test(line)) {
      // Another language's block: skip it whole, so its content is never read as Markdown.
      const end = lines.findIndex((l, j) => j > i && /^```\s*$/.test(l));
      i = end === -1 ? lines.length : end;
      continue;
    }
  }
  return samples;
}

/** Every TypeScript sample of the repository at `root`. */
export function allSamples(root: string): Sample[] {
  return markdownPages(root).flatMap((page) => samplesOf(root, page));
}

/**
 * A sample as a module: a comment naming its place, the code, then `export {}` (so that each
 * sample has a scope of its own even without imports). `codeLine` is the file's line where the
 * code starts.
 */
export function sampleModule(sample: Sample): { text: string; codeLine: number } {
  return { text: `// ${sample.page}:${sample.line} (${sample.heading || "top"})\n${sample.code}\nexport {};\n`, codeLine: 2 };
}
