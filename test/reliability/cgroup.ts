/**
 * A child cgroup for one test process, with the pids or memory controller, on cgroup v1 (a
 * hierarchy per controller, as on the hosts here) or v2 (one unified hierarchy, as in the VM):
 * made under the cgroup this process is in, and removed after. The child process joins it
 * through a shell that writes its own pid to cgroup.procs and then execs Node; the child sets
 * its own limits (the files named in {@link Cgroup.env}) once it has started.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'vitest';
import { REQUIRE_KVM } from '../kvm-host.js';

export type Controller = 'pids' | 'memory';

export interface Cgroup {
  dir: string;
  version: 1 | 2;
  /** Runs the child in the cgroup: put before the Node command line (runNode's wrapper). */
  wrapper: string[];
  /**
   * What the child needs to set its limits: CG_LIMIT (the limit file), CG_CURRENT (usage), CG_SWAP
   * (swap limit, if any), CG_OOM (v1 memory: oom_control).
   */
  env: Record<string, string>;
  /**
   * Memory cgroups: acts as the cgroup's OOM handler while the child runs (see below); stop()
   * ends that and says how many times it raised the limit.
   */
  rescueFaults(): { stop(): number };
  /** Removes the cgroup (its processes must have exited). */
  remove(): void;
}

interface Mount {
  path: string;
  type: string;
  options: string[];
}

function mounts(): Mount[] {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').filter(Boolean).map((l) => {
    const f = l.split(' ');
    return { path: f[1]!, type: f[2]!, options: f[3]!.split(',') };
  });
}

/** This process's cgroup path in the hierarchy of `controller` (v1), or the unified one (v2: ''). */
function ownPath(controller: string): string | undefined {
  for (const l of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const [, ctrls, path] = l.split(':');
    if (ctrls !== undefined && ctrls.split(',').includes(controller)) return path;
    if (controller === '' && ctrls === '') return path;
  }
  return undefined;
}

let made = 0;

/** A fresh cgroup with `controller`, or the reason there cannot be one here. */
export function makeCgroup(controller: Controller): Cgroup | string {
  if (process.getuid?.() !== 0) return 'making cgroups needs root';
  const all = mounts();
  const v1 = all.find((m) => m.type === 'cgroup' && m.options.includes(controller));
  const v2 = all.find((m) => m.type === 'cgroup2');
  const name = `kvm-gmem-reliability-${process.pid}-${made++}`;
  let parent: string;
  let version: 1 | 2;
  if (v1) {
    version = 1;
    parent = join(v1.path, ownPath(controller) ?? '/');
  } else if (v2) {
    version = 2;
    parent = join(v2.path, ownPath('') ?? '/');
    const available = readFileSync(join(parent, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (!available.includes(controller)) return `cgroup2 at ${parent} does not offer the ${controller} controller`;
    const enabled = readFileSync(join(parent, 'cgroup.subtree_control'), 'utf8').split(/\s+/);
    if (!enabled.includes(controller)) {
      try {
        writeFileSync(join(parent, 'cgroup.subtree_control'), `+${controller}`);
      } catch (e) {
        // A non-root cgroup with processes of its own cannot pass controllers down (EBUSY).
        return `cannot enable ${controller} for children of ${parent}: ${(e as Error).message}`;
      }
    }
  } else {
    return `no cgroup hierarchy with the ${controller} controller is mounted`;
  }
  const dir = join(parent, name);
  try {
    mkdirSync(dir);
  } catch (e) {
    return `cannot make a cgroup under ${parent}: ${(e as Error).message}`;
  }
  const file = (n: string) => join(dir, n);
  const env: Record<string, string> = controller === 'pids'
    ? { CG_LIMIT: file('pids.max'), CG_CURRENT: file('pids.current') }
    : version === 2
      ? { CG_LIMIT: file('memory.max'), CG_CURRENT: file('memory.current'), ...(existsSync(file('memory.swap.max')) ? { CG_SWAP: file('memory.swap.max') } : {}) }
      : {
        CG_LIMIT: file('memory.limit_in_bytes'), CG_CURRENT: file('memory.usage_in_bytes'), CG_OOM: file('memory.oom_control'),
        ...(existsSync(file('memory.memsw.limit_in_bytes')) ? { CG_SWAP: file('memory.memsw.limit_in_bytes') } : {}),
      };
  if (!existsSync(env.CG_LIMIT!)) {
    rmdirSync(dir);
    return `${env.CG_LIMIT} is missing`;
  }
  return {
    dir,
    version,
    wrapper: ['/bin/sh', '-c', 'echo $$ > "$0" && exec "$@"', file('cgroup.procs')],
    env: { ...env, CG_VERSION: String(version) },
    rescueFaults: () => rescuer(version, dir, env),
    remove() {
      // The last task leaves a moment after its parent saw it exit: rmdir says EBUSY until then.
      for (let i = 0; ; i++) {
        try {
          rmdirSync(dir);
          return;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EBUSY' || i >= 200) throw e;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        }
      }
    },
  };
}

/**
 * JavaScript for the child: setLimit(n) sets the limit file (and swap to none), usage() reads the
 * current use, refuseInsteadOfKill() makes the kernel refuse memory charges past the limit
 * (ENOMEM) instead of letting the OOM killer end the process: oom_score_adj -1000 where the
 * process may lower it, else (cgroup v1) the cgroup's oom_control.
 */
export const CHILD_LIMITS = `
import { writeFileSync as writeLimit } from 'node:fs';
const refuseInsteadOfKill = () => {
  try { writeLimit('/proc/self/oom_score_adj', '-1000'); }
  catch (e) { if (!process.env.CG_OOM) throw e; writeLimit(process.env.CG_OOM, '1'); }
};
const usage = () => Number(readFileSync(process.env.CG_CURRENT, 'utf8').trim());
const setLimit = (n) => {
  if (process.env.CG_VERSION === '1' && process.env.CG_SWAP) {
    // v1: memory+swap must stay >= memory: raising, set it first; lowering, last. 'max' is -1 there.
    const v = n === 'max' ? '-1' : String(n);
    const raising = n === 'max' || n > Number(readFileSync(process.env.CG_LIMIT, 'utf8').trim());
    if (raising) { writeLimit(process.env.CG_SWAP, v); writeLimit(process.env.CG_LIMIT, v); }
    else { writeLimit(process.env.CG_LIMIT, v); writeLimit(process.env.CG_SWAP, v); }
    return;
  }
  writeLimit(process.env.CG_LIMIT, n === 'max' ? (process.env.CG_VERSION === '1' && !/pids/.test(process.env.CG_LIMIT) ? '-1' : 'max') : String(n));
  if (process.env.CG_SWAP && process.env.CG_VERSION === '2') writeLimit(process.env.CG_SWAP, n === 'max' ? 'max' : '0');
};
`;

/**
 * The OOM handler of a memory cgroup whose only process the OOM killer may not end. A system call
 * that passes the limit fails (ENOMEM: what the tests check), but the memory it charged before
 * failing stays charged until the process frees it, and if V8 touches a new page first, that
 * page fault cannot be charged: the kernel parks the thread (v1, oom_control) or retries the
 * fault forever (v2, oom_score_adj -1000). The process would never get to free the memory. So,
 * as cgroup v1's documentation has an outside OOM handler do, this raises the limit by 32 MiB
 * whenever the cgroup is in that state: v1 says so (under_oom 1, only set for a parked page
 * fault); on v2 the retried fault shows as a run of OOM events (memory.events: oom), 20 or more
 * in 500 ms, where a failing system call makes one. The child sets its limit again before each
 * call, so a rescue never lets a later call through, and a call that is itself stuck would then
 * succeed, which the tests count as a failure.
 */
function rescuer(version: 1 | 2, dir: string, env: Record<string, string>): { stop(): number } {
  let rescues = 0;
  const events: { at: number; oom: number }[] = [];
  const read = (f: string) => readFileSync(join(dir, f), 'utf8');
  const raise = () => {
    const by = 32 * 1024 * 1024;
    const limit = Number(readFileSync(env.CG_LIMIT!, 'utf8').trim());
    if (!Number.isFinite(limit)) return; // 'max': nothing to raise
    if (version === 1 && env.CG_SWAP) writeFileSync(env.CG_SWAP, String(limit + by));
    writeFileSync(env.CG_LIMIT!, String(limit + by));
    rescues++;
  };
  const timer = setInterval(() => {
    try {
      if (version === 1) {
        if (/^under_oom 1$/m.test(read('memory.oom_control'))) raise();
        return;
      }
      const oom = Number(/^oom (\d+)$/m.exec(read('memory.events'))?.[1] ?? 0);
      const now = performance.now();
      events.push({ at: now, oom });
      while (events.length > 0 && events[0]!.at < now - 500) events.shift();
      if (oom - events[0]!.oom >= 20) {
        raise();
        events.length = 0;
      }
    } catch {
      // The cgroup is being torn down.
    }
  }, 20);
  return {
    stop() {
      clearInterval(timer);
      return rescues;
    },
  };
}

/** A cgroup with `controller`, or a skip (a failure under KVM_GMEM_REQUIRE_KVM: the VM has cgroup2 with both). */
export function cgroupOrSkip(ctx: TestContext, controller: Controller): Cgroup {
  const cg = makeCgroup(controller);
  if (typeof cg === 'string') {
    if (REQUIRE_KVM) throw new Error(`KVM_GMEM_REQUIRE_KVM=1 but no ${controller} cgroup can be made: ${cg}`);
    ctx.skip(cg);
  }
  return cg;
}
