import { defineConfig } from 'vitest/config';

// Hang bounds stretch under CPU emulation (see HANG_SCALE in test/kvm-host.ts).
const scale = Math.max(1, Number(process.env.KVM_GMEM_HANG_SCALE ?? 1) || 1);

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each file in its own process: a native crash fails that file, not the whole run.
    pool: 'forks',
    // Tests allocate and fill 1 GiB and run 10,000 create/close cycles; these machines are shared.
    testTimeout: 60_000 * scale,
    hookTimeout: 30_000 * scale,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
