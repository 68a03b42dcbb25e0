/**
 * The upgrade experiment's command line (`npm run upgrade-experiment -- [options]`, which runs
 * main.ts): hands a running guest from one VMM process to another, for several memory sizes,
 * and reports what the kernel allowed and what the takeover cost.
 * @module
 */
import { accessSync, constants, statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { MAX_SIZE_MIB, experimentOptions, runExperiment, type ExperimentOptions } from './experiment.js';
import { formatReport, renderSvg, reportJson } from './report.js';

/**
 * The sizes (MiB) run by default, up to the largest the experiment takes (MAX_SIZE_MIB: one
 * memslot from GPA 0, below the local APIC). Most of a run's time goes to writing and checking
 * the pattern and allocating memory, not to the handover.
 */
export const DEFAULT_SIZES_MIB = [64, 128, 256, 512, 1024, 2048, 4032];

/** Handovers per size by default (the table shows the run with the median blackout, the chart every run). */
export const DEFAULT_RUNS = 3;

/** The command's options (parseArgs); {@link UPGRADE_USAGE} describes each one. */
export const UPGRADE_OPTIONS = {
  sizes: { type: 'string' },
  runs: { type: 'string' },
  json: { type: 'boolean', default: false },
  chart: { type: 'string' },
  'guest-fill-max': { type: 'string' },
  'guest-check': { type: 'string' },
  'after-ms': { type: 'string' },
  verbose: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

/** The --help text. */
export const UPGRADE_USAGE = `usage: npm run upgrade-experiment -- [options]
       node build/experiments/upgrade/main.js [options]

Live VMM upgrade on guest_memfd, between two real processes: an old VMM runs a guest on guest_memfd
memory, pauses it and sends the guest_memfd, the VM and vCPU fds and the vCPU state over a Unix
socket to a new VMM, which records what the kernel allows with them, copies the memory into a VM
of its own, restores the vCPU and resumes the guest; the old VMM exits, the guest runs on.

options:
  --sizes LIST          guest memory sizes, comma-separated: 64MiB, 1GiB (or 64M, 1G; a bare
                        number is MiB), even MiB from 2 to ${MAX_SIZE_MIB}
                        (default ${DEFAULT_SIZES_MIB.join(',')})
  --runs N              handovers per size; each row of the table shows the run with the
                        median blackout and the range of all runs, the chart every run
                        (default ${DEFAULT_RUNS})
  --json                the full report as JSON on stdout instead of the table
  --chart FILE          also write an SVG chart to FILE: the blackout against memory size,
                        one bar per run stacked by part (default: no file is written)
  --guest-fill-max MiB  the guest writes its own pattern up to this size, else the old VMM
                        does (default 128: guest code is slower at it than the host)
  --guest-check MiB     after the takeover the guest checks every page up to this much data,
                        a stride sample above it (default 64)
  --after-ms MS         how long the guest keeps running after the old VMM exited (default 500)
  --verbose             the VMM processes' own progress lines too
  -h, --help            this text

Options go after npm's \`--\` (\`npm run upgrade-experiment --help\` is npm's own help), and npm
runs the experiment in the checkout's root, where a relative --chart FILE lands. Progress goes to
stderr; stdout has the table, or with --json only the JSON (\`npm run -s\` keeps npm's own header
off stdout). Exit status: 0 when every takeover succeeded (the guest resumed with its memory intact
and kept counting after the old VMM exited), 1 when one failed or the chart could not be written,
2 for bad usage.
`;

/** `--sizes` in MiB: each a whole number with M/MiB or G/GiB (binary, as `kvm-gmem --vm-memory`), or bare MiB. */
function parseSizes(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (parts.length === 0) throw new RangeError(`--sizes must be a comma-separated list of sizes (64MiB,1GiB); got '${text}'`);
  return parts.map((p) => {
    const m = /^(\d+)\s*(?:([mg])(ib)?)?$/i.exec(p);
    if (!m) {
      const decimal = /^(\d+)\s*([mg])b$/i.exec(p);
      const hint = decimal ? ` (write ${decimal[1]!}${decimal[2]!.toUpperCase()}iB: units are binary)` : '';
      throw new RangeError(`--sizes: '${p}' is not a size${hint}; expected a whole number with M/MiB or G/GiB, or bare MiB`);
    }
    return Number(m[1]) * (m[2]?.toUpperCase() === 'G' ? 1024 : 1);
  });
}

function parseInt10(text: string | undefined, name: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n)) throw new RangeError(`${name} must be a whole number; got '${text}'`);
  return n;
}

/**
 * Runs the command with `argv` (the program's arguments).
 * @returns the exit status: 0 all takeovers succeeded, 1 one failed, 2 bad usage
 */
export async function upgradeExperimentCommand(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: UPGRADE_OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    process.stderr.write(`upgrade-experiment: ${(e as Error).message}\n\n${UPGRADE_USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(UPGRADE_USAGE);
    return 0;
  }
  const log = (line: string) => process.stderr.write(`upgrade-experiment: ${line}\n`);
  let report;
  let chart: string | undefined;
  try {
    const opts: ExperimentOptions = {
      sizesMiB: values.sizes !== undefined ? parseSizes(values.sizes) : DEFAULT_SIZES_MIB,
      runs: DEFAULT_RUNS,
      log,
      verbose: values.verbose,
    };
    const runs = parseInt10(values.runs, '--runs');
    const fillMax = parseInt10(values['guest-fill-max'], '--guest-fill-max');
    const check = parseInt10(values['guest-check'], '--guest-check');
    const afterMs = parseInt10(values['after-ms'], '--after-ms');
    if (runs !== undefined) opts.runs = runs;
    if (fillMax !== undefined) opts.guestFillMaxMiB = fillMax;
    if (check !== undefined) opts.guestCheckMiB = check;
    if (afterMs !== undefined) opts.afterMs = afterMs;
    experimentOptions(opts); // bad values are a usage error before anything starts
    if (values.chart !== undefined) chart = chartPath(values.chart);
    const started = performance.now();
    report = await runExperiment(opts);
    log(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } catch (e) {
    if (e instanceof RangeError || e instanceof TypeError) {
      process.stderr.write(`upgrade-experiment: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  let chartFailed = false;
  if (chart !== undefined) {
    try {
      writeFileSync(chart, renderSvg(report));
      log(`chart written to ${chart}`);
    } catch (e) {
      // The run's results still go to stdout: only the file is lost.
      log(`could not write the chart: ${(e as Error).message}`);
      chart = undefined;
      chartFailed = true;
    }
  }
  process.stdout.write(values.json ? reportJson(report) : formatReport(report, chart));
  return report.ok && !chartFailed ? 0 : 1;
}

/**
 * The absolute path for --chart FILE, checked before the run (which can take minutes): a file
 * name whose directory exists and is writable. Throws RangeError (a usage error) otherwise.
 */
export function chartPath(file: string): string {
  if (file === '') throw new RangeError('--chart needs a file name');
  const path = resolve(file);
  if (existsDir(path)) throw new RangeError(`--chart ${file}: is a directory; give a file name`);
  try {
    accessSync(dirname(path), constants.W_OK);
  } catch (e) {
    throw new RangeError(`--chart ${file}: cannot write in ${dirname(path)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return path;
}

function existsDir(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
}
