import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each file in its own process: a native crash fails that file, not the whole run.
    pool: 'forks',
    // Tests allocate and fill 1 GiB and run 10,000 create/close cycles; these machines are shared.
    testTimeout: 60_000,
    hookTimeout: 30_000,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
