import { fileURLToPath } from 'node:url';
import { configDefaults, defineConfig } from 'vitest/config';

const lib = fileURLToPath(new URL('./lib/', import.meta.url));

// Hang bounds stretch under CPU emulation (see HANG_SCALE in test/kvm-host.ts).
const scale = Math.max(1, Number(process.env.KVM_GMEM_HANG_SCALE ?? 1) || 1);

export default defineConfig({
  // experiments/ import the package by name: under test that is lib/, one copy shared with the tests.
  resolve: {
    alias: [
      { find: /^kvm-gmem$/, replacement: `${lib}index.ts` },
      { find: /^kvm-gmem\/(guest|ipc|selftest)$/, replacement: `${lib}$1/index.ts` },
    ],
  },
  test: {
    include: ['test/**/*.test.ts'],
    // The user-project test packs and installs from the registry: on the host (npm run test:package).
    exclude: [...configDefaults.exclude, 'test/package/**'],
    // Each file in its own process: a native crash fails that file, not the whole run.
    pool: 'forks',
    // Tests allocate and fill 1 GiB and run 10,000 create/close cycles; these machines are shared.
    testTimeout: 60_000 * scale,
    hookTimeout: 30_000 * scale,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
