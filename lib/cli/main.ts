#!/usr/bin/env node
/**
 * The `kvm-gmem` bin. The commands (lib/cli/commands.ts) load the addon only when one runs, so an
 * addon that cannot load (no prebuilt binary for this machine, a broken file) is reported in one
 * line with the command that fixes it, and --help and --version work without it; the dynamic
 * import here keeps that true of anything else that fails while loading.
 *
 *   kvm-gmem info | selftest | exec ... (kvm-gmem --help)
 * @module
 */
import { exitCodeOf } from './exit.js';

import('./commands.js')
  .then(({ main }) => main(process.argv.slice(2)))
  .then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`kvm-gmem: ${(e as Error).message}\n`);
      process.exitCode = exitCodeOf(e); // the addon's load error: 3, the command could not run
    },
  );
