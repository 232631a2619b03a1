/**
 * Where the relay's Node CPU goes, by part, from the CPU profiles that the telemetry bench writes
 * with TELEMETRY_PROFILE=<dir> (one per drain): each sample's self time is charged to the part its
 * function belongs to (txonce's telemetry, the rest of txonce, the OpenTelemetry SDK, Prisma,
 * node-postgres, Node, the garbage collector, ...), summed per drain and divided by the drain's
 * messages; the table gives each part's median over a mode's drains, in µs per message.
 *
 * The profiler samples every 100 µs, so a part under about 0.05 µs per message is a handful of
 * samples per drain; and profiling itself costs Node CPU (the inspector's messages, charged to
 * "node"), the same in every mode.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileNameOf, fmt, log, median, table } from "./common.js";

interface CallFrame {
  functionName: string;
  url: string;
}
interface Profile {
  nodes: { id: number; callFrame: CallFrame }[];
  samples: number[];
  timeDeltas: number[];
}

/** The part of the process a function belongs to, by its file. */
function partOf({ functionName, url }: CallFrame): string {
  if (url === "") {
    if (functionName === "(garbage collector)") return "garbage collector";
    if (functionName === "(idle)") return "idle";
    if (functionName === "(program)") return "V8 (program)";
    return "native (Node's C++ bindings)";
  }
  if (url.includes("/@opentelemetry/sdk-trace")) return "OpenTelemetry: traces";
  if (url.includes("/@opentelemetry/sdk-metrics")) return "OpenTelemetry: metrics";
  if (url.includes("/@opentelemetry/")) return "OpenTelemetry: API, context, core";
  if (url.includes("/node_modules/")) {
    if (url.includes("prisma")) return "Prisma";
    if (/\/node_modules\/pg[-/]/.test(url)) return "node-postgres";
    return "other packages";
  }
  if (url.startsWith("node:")) return "Node";
  if (url.includes("/src/telemetry/")) return "txonce: telemetry";
  if (url.includes("/src/")) return "txonce: the rest";
  return "other";
}

/** Self time per part of one profile, in µs. */
function partsOf(profile: Profile): Map<string, number> {
  const parts = new Map(profile.nodes.map((node) => [node.id, partOf(node.callFrame)]));
  const time = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const part = parts.get(profile.samples[i]!) ?? "other";
    time.set(part, (time.get(part) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  return time;
}

/**
 * Prints, per mode, each part's median µs per message over the drains profiled in `dir` (files
 * named `{mode}-{publisher}-{time}.cpuprofile`, the mode as {@link fileNameOf} writes it), for `publisher`.
 */
export function summarizeDrainProfiles(dir: string, publisher: string, messages: number, modes: readonly string[]): void {
  const fileMode = new Map(modes.map((mode) => [fileNameOf(mode), mode]));
  const byMode = new Map<string, Map<string, number>[]>();
  for (const file of readdirSync(dir)) {
    const match = /^(.+)-([a-z]+)-\d+\.cpuprofile$/.exec(file);
    const mode = match && match[2] === publisher ? fileMode.get(match[1]!) : undefined;
    if (!mode) continue;
    const drains = byMode.get(mode) ?? [];
    drains.push(partsOf(JSON.parse(readFileSync(join(dir, file), "utf8")) as Profile));
    byMode.set(mode, drains);
  }
  const profiled = modes.filter((mode) => byMode.has(mode));
  if (profiled.length === 0) return;
  const parts = [...new Set(profiled.flatMap((mode) => byMode.get(mode)!.flatMap((drain) => [...drain.keys()])))].sort();
  const perMessage = (mode: string, part: string) => median(byMode.get(mode)!.map((drain) => (drain.get(part) ?? 0) / messages));
  log();
  log(`Node CPU by part in the relay's drains, ${publisher} publisher (CPU profiles in ${dir}; µs per message, median of each mode's drains):`);
  const busy = (mode: string) => median(byMode.get(mode)!.map((drain) => [...drain].reduce((sum, [part, us]) => (part === "idle" ? sum : sum + us), 0) / messages));
  table(
    ["part", ...profiled.map((mode) => `${mode} (${byMode.get(mode)!.length})`)],
    [
      ...parts.map((part) => [part, ...profiled.map((mode) => fmt(perMessage(mode, part), 2))]),
      ["all but idle", ...profiled.map((mode) => fmt(busy(mode), 2))],
    ],
  );
}
