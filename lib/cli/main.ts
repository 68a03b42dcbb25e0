#!/usr/bin/env node
/**
 * The `kvm-gmem` bin. It loads the commands (lib/cli/commands.ts) with a dynamic import, so that
 * an addon that cannot load (no prebuilt binary for this machine, a broken file) is reported in
 * one line with the command that fixes it, not as a stack trace from module loading.
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
      process.stderr.write(`kvm-gmem: ${(e as Error).message.replace(/^kvm-gmem: /, '')}\n`);
      process.exitCode = exitCodeOf(e); // the addon's load error: 3, the command could not run
    },
  );
