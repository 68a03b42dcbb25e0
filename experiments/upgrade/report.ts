/**
 * The live-upgrade experiment's output: a text table with what the kernel answered, JSON, and an
 * SVG chart of the blackout against memory size (stacked handover / copy / restore), written by
 * hand (no dependencies).
 * @module
 */
import { EXPECTED_PROBES, type ExperimentReport, type SizeSummary } from './experiment.js';
import { REBIND_THREAD, type Probes } from './common.js';

/** Milliseconds with a precision that suits their size. */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(0)} ms`;
}

/** A min-max range of milliseconds ('-' when there is none). */
export function formatRange([lo, hi]: [number, number]): string {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return '-';
  const f = (x: number) => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));
  return `${f(lo)}-${f(hi)}`;
}

/** Bytes as MiB or GiB. */
export function formatBytes(n: number): string {
  if (n >= 2 ** 30 && n % 2 ** 30 === 0) return `${n / 2 ** 30} GiB`;
  return `${Math.round(n / 2 ** 20)} MiB`;
}

/** The columns of the table, in order. */
export const TABLE_COLUMNS = [
  'memory', 'pattern by', 'handover', '(pause)', 'copy', 'restore', 'blackout', 'range', 'copied', 'copy rate',
  'guest check', 'result',
] as const;

function row(s: SizeSummary, pagesTotal: number): string[] {
  return [
    formatBytes(s.bytes),
    s.filledBy,
    formatMs(s.handoverMs),
    formatMs(s.pauseMs),
    formatMs(s.copyMs),
    formatMs(s.restoreMs),
    formatMs(s.blackoutMs),
    s.runs > 1 ? formatRange(s.blackoutRange) : '-',
    formatBytes(s.bytes),
    Number.isFinite(s.copyGiBps) ? `${s.copyGiBps.toFixed(2)} GiB/s` : '-',
    s.guestCheckStride === 1 ? `all ${pagesTotal} pages` : `1 in ${s.guestCheckStride} pages`,
    s.ok ? 'ok' : 'FAILED',
  ];
}

/** Lays out rows under a header: numbers right-aligned, text left-aligned. */
export function formatColumns(header: readonly string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const right = header.map((_, i) => rows.every((r) => /^[\d.-]/.test(r[i]!)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const PROBE_LINES: [keyof Probes, string, string][] = [
  ['mapReceived', 'mmap of the received guest_memfd', ''],
  ['receivedMemory', 'its memory (host check of every page)', ''],
  ['vmCheckExtension', 'KVM_CHECK_EXTENSION on the received VM fd', 'the VM belongs to the old process\'s mm'],
  ['vmCreateGuestMemfd', 'KVM_CREATE_GUEST_MEMFD on the received VM fd', ''],
  ['vcpuGetRegs', 'KVM_GET_REGS on the received vCPU fd', ''],
  ['bindReceivedToNewVm', 'binding the received guest_memfd into a new VM', `bound to its own VM for life: option (a) of ${REBIND_THREAD}`],
  ['bindOwnToNewVm', 'control: the new VM binding its own guest_memfd', ''],
  ['copyCompare', 'the copy vs the received memory (every byte)', ''],
];

/** The text report: header, table, what the kernel answered, the rebinding verdict, failures. */
export function formatReport(rep: ExperimentReport, chartPath?: string): string {
  const h = rep.host;
  const out: string[] = [];
  const runs = rep.options.runs;
  out.push(
    `upgrade-experiment: kernel ${h.kernel} (${h.arch}), paging ${h.paging}, ${h.cpus} CPUs, ${h.memoryGiB} GiB; ` +
      `${runs} run${runs > 1 ? 's' : ''} per size${runs > 1 ? ' (each row: the run with the median blackout; range: all runs)' : ''}`,
    '',
  );
  const pagesOf = (s: SizeSummary) => rep.runs.find((r) => r.sizeMiB === s.sizeMiB)?.guestVerify.pagesTotal ?? 0;
  out.push(formatColumns(TABLE_COLUMNS, rep.sizes.map((s) => row(s, pagesOf(s)))));
  out.push(
    '',
    'blackout = handover + copy + restore, from the old VMM\'s kick to the new VMM\'s first KVM_RUN (CLOCK_MONOTONIC in both processes):',
    '  handover  kick the vCPU, KVM_GET_REGS/SREGS/FPU, send the guest_memfd, VM and vCPU fds and the state (SCM_RIGHTS), receive;',
    '            (pause) is the kick and the register reads',
    '  copy      map the received guest_memfd, fault it in (MADV_POPULATE_READ), copy every byte into the new VM\'s guest_memfd',
    '  restore   bind the new guest_memfd, KVM_CREATE_VCPU, KVM_SET_SREGS/REGS/FPU, up to KVM_RUN',
    'Before the pause the new VMM has created its VM and its guest_memfd (fallocate, MADV_POPULATE_WRITE): not in the blackout.',
    `pattern by: who wrote the data region before the handover (the guest itself up to ${rep.options.guestFillMaxMiB} MiB, else the old VMM).`,
    `guest check: after the resume the guest checks its data region (every page up to ${rep.options.guestCheckMiB} MiB, else a stride sample);`,
    '  the new VMM also compares every byte of the copy and checks every page of the received memory host-side.',
  );

  const p = rep.probes;
  if (p) {
    out.push('', `What the kernel let the new VMM do with the received fds (${p.receivedKinds.join(', ')})${rep.probesAgree ? '' : ' (first run; runs differed, see --json)'}:`);
    const label = Math.max(...PROBE_LINES.map(([, l]) => l.length));
    for (const [k, l, why] of PROBE_LINES) {
      const got = String(p[k]);
      const want = EXPECTED_PROBES[k];
      const note = want === undefined ? '' : got === want ? (why ? `  (expected: ${why})` : '') : `  (UNEXPECTED: expected ${want})`;
      out.push(`  ${l.padEnd(label)}  ${got}${note}`);
    }
  }
  const rb = rep.rebind;
  if (rb) {
    const unknown = [...rb.unknown.system.map(([c, v]) => `${c}=${v} on /dev/kvm`), ...rb.unknown.vm.map(([c, v]) => `${c}=${v} on a VM`)];
    out.push(
      '',
      `A way to rebind: ${rb.anyWay ? 'MAYBE, see below' : 'none on this kernel'}.`,
      `  KVM_CAP_GUEST_MEMFD_FLAGS = 0x${rb.gmemFlags.system.toString(16)} (/dev/kvm), 0x${rb.gmemFlags.vm.toString(16)} (a new VM); bits beyond MMAP|INIT_SHARED: ${rb.gmemFlags.unknownBits}`,
      `  KVM_CHECK_EXTENSION of 0..${rb.capLimit - 1}: ${rb.nonzero.system.length} non-zero on /dev/kvm, ${rb.nonzero.vm.length} on a new VM; ` +
        `above ${rb.lastKnownCap} (the last in the 6.18 uapi): ${unknown.length ? unknown.join(', ') : 'none'}`,
      `  ${rb.uapi}`,
    );
  }

  const done = rep.sizes.filter((s) => Number.isFinite(s.blackoutMs));
  const big = done[done.length - 1];
  if (big) {
    const share = (100 * big.copyMs) / big.blackoutMs;
    out.push(
      '',
      `A kernel that let the new VM bind the received guest_memfd (options (b)/(c) of ${REBIND_THREAD}) would skip the copy: ` +
        `${formatMs(big.copyMs)} of the ${formatMs(big.blackoutMs)} blackout at ${formatBytes(big.bytes)} (${share.toFixed(0)}%), ` +
        `and the second ${formatBytes(big.bytes)} of memory the copy needs while both exist.`,
    );
  }

  const failed = rep.runs.filter((r) => r.failures.length > 0);
  if (failed.length) {
    out.push('', 'FAILED runs:');
    for (const r of failed) out.push(`  ${r.sizeMiB} MiB run ${r.run}: ${r.failures.join('; ')}`);
  }
  const odd = rep.runs.filter((r) => r.unexpectedProbes.length > 0);
  for (const r of odd) out.push(`  note: ${r.sizeMiB} MiB run ${r.run}: unexpected answers: ${r.unexpectedProbes.join('; ')}`);
  if (chartPath) out.push('', `chart: ${chartPath}`);
  return out.join('\n') + '\n';
}

/** The report as JSON text. */
export function reportJson(rep: ExperimentReport): string {
  return JSON.stringify(rep, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n';
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** A "nice" upper bound and step for an axis from 0 to `max`. */
export function niceScale(max: number, ticks = 5): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.2 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  return { top: Math.ceil(max / step - 1e-9) * step, step };
}

const SEGMENTS = [
  { key: 'handoverMs', label: 'handover (pause, send and receive fds + state)', color: '#4e79a7' },
  { key: 'copyMs', label: 'copy (what a rebinding kernel would save)', color: '#e15759' },
  { key: 'restoreMs', label: 'restore (bind, vCPU, registers)', color: '#59a14f' },
] as const;

/** The parts of a blackout that the chart stacks (a run's, or a size's median run's). */
type Parts = Pick<SizeSummary, (typeof SEGMENTS)[number]['key']>;

/** The stacked height of `p`: its finite parts (a failed run may have measured only some). */
function stacked(p: Parts): number {
  return SEGMENTS.reduce((a, g) => a + (Number.isFinite(p[g.key]) ? p[g.key] : 0), 0);
}

/**
 * The chart: for each memory size one stacked bar (handover, copy, restore) per run, in run
 * order, so that the spread between runs and the part it comes from show; with several runs the
 * median run (the table's row) is outlined, and above each size are its median blackout and the
 * range of its completed runs. A failed run is marked with a red cross. Linear millisecond axis,
 * plain SVG 1.1.
 */
export function renderSvg(rep: ExperimentReport): string {
  const W = 820;
  const H = 480;
  const m = { left: 70, right: 20, top: 80, bottom: 74 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const sizes = rep.sizes;
  const runsOf = (s: SizeSummary) => rep.runs.filter((r) => r.sizeMiB === s.sizeMiB).sort((a, b) => a.run - b.run);
  const perSize = Math.max(1, ...sizes.map((s) => runsOf(s).length));
  const multi = perSize > 1;
  const failedRuns = rep.runs.filter((r) => r.failures.length > 0).length;
  // Headroom for the labels above the tallest bar (two lines with several runs).
  const { top, step } = niceScale((multi ? 1.12 : 1.06) * Math.max(0, ...rep.runs.map(stacked), ...sizes.map(stacked)));
  const y = (v: number) => m.top + ph - (v / top) * ph;
  const band = pw / Math.max(1, sizes.length);
  // One run: a bar as wide as before; several: a group of narrower bars with gaps, within the band.
  const slot = multi ? Math.min(30, (band * 0.8) / perSize) : Math.min(70, band * 0.6);
  const bw = multi ? slot * 0.8 : slot;
  const el: string[] = [];
  const h = rep.host;
  el.push(
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold">Live VMM upgrade on guest_memfd: blackout vs guest memory</text>`,
    `<text x="${W / 2}" y="46" text-anchor="middle" font-size="12" fill="#555">${esc(
      `kernel ${h.kernel}, ${h.paging} paging, ${h.cpus} CPUs: a new VM cannot bind the received guest_memfd (EINVAL): it is copied`,
    )}</text>`,
    `<text x="${W / 2}" y="64" text-anchor="middle" font-size="12" fill="#555">${esc(
      `${multi ? `${rep.options.runs} runs per size, one bar each in run order, the median outlined; ` : ''}pause (old VMM) to first KVM_RUN (new VMM), two processes`,
    )}</text>`,
  );
  // Legend: top left of the plot, where the smallest bars leave room; drawn last, over the grid.
  const keys: { mark: (ly: number) => string; label: string }[] = [...SEGMENTS].reverse().map((g) => ({
    mark: (ly) => `<rect x="${m.left + 18}" y="${ly}" width="12" height="12" fill="${g.color}"/>`, label: g.label,
  }));
  if (multi) {
    keys.push({
      mark: (ly) => `<rect x="${m.left + 18}" y="${ly}" width="12" height="12" fill="#ffffff" stroke="#222222" stroke-width="1.5"/>`,
      label: 'outlined: the run with the median blackout (the table\'s row)',
    });
  }
  if (failedRuns > 0) keys.push({ mark: (ly) => cross(m.left + 24, ly + 11), label: 'a failed run (its parts as far as measured)' });
  const legend: string[] = [
    `<rect x="${m.left + 10}" y="${m.top + 4}" width="320" height="${keys.length * 18 + 8}" fill="#ffffff" fill-opacity="0.9" stroke="#cccccc"/>`,
  ];
  keys.forEach((k, i) => {
    const ly = m.top + 12 + i * 18;
    legend.push(k.mark(ly), `<text x="${m.left + 36}" y="${ly + 10}" font-size="11">${esc(k.label)}</text>`);
  });
  // Axes and grid.
  for (let v = 0; v <= top + 1e-9; v += step) {
    const yy = y(v).toFixed(1);
    el.push(
      `<line x1="${m.left}" y1="${yy}" x2="${W - m.right}" y2="${yy}" stroke="#e0e0e0"/>`,
      `<text x="${m.left - 8}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" font-size="11">${esc(tickLabel(v, step))}</text>`,
    );
  }
  el.push(
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#333"/>`,
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${W - m.right}" y2="${m.top + ph}" stroke="#333"/>`,
    `<text x="18" y="${m.top + ph / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 18 ${m.top + ph / 2})">blackout (ms)</text>`,
    `<text x="${m.left + pw / 2}" y="${H - 10}" text-anchor="middle" font-size="12">${esc(
      `guest memory (copied in full at each handover; below: ${multi ? 'the median run\'s' : 'the'} copy share of the blackout, and its rate)`,
    )}</text>`,
  );
  // Bars: one per run.
  sizes.forEach((s, i) => {
    const cx = m.left + band * (i + 0.5);
    const rs = runsOf(s);
    let tallest = 0;
    rs.forEach((r, j) => {
      const x = cx - (slot * rs.length) / 2 + slot * j + (slot - bw) / 2;
      const name = `${formatBytes(s.bytes)}${multi ? ` run ${r.run}` : ''}`;
      let acc = 0;
      for (const g of SEGMENTS) {
        const v = r[g.key];
        if (!Number.isFinite(v) || v <= 0) continue;
        const y1 = y(acc + v);
        const hgt = y(acc) - y1;
        el.push(`<rect x="${x.toFixed(1)}" y="${y1.toFixed(1)}" width="${bw.toFixed(1)}" height="${Math.max(hgt, 0.5).toFixed(1)}" fill="${g.color}"><title>${esc(`${name} ${g.key.replace('Ms', '')}: ${formatMs(v)}`)}</title></rect>`);
        acc += v;
      }
      tallest = Math.max(tallest, acc);
      if (multi && r.run === s.medianRun && acc > 0) {
        el.push(`<rect x="${x.toFixed(1)}" y="${y(acc).toFixed(1)}" width="${bw.toFixed(1)}" height="${(y(0) - y(acc)).toFixed(1)}" fill="none" stroke="#222222" stroke-width="1.5"/>`);
      }
      if (r.failures.length > 0) {
        el.push(`<g>${cross(x + bw / 2, y(acc) - 4)}<title>${esc(`${name} failed: ${r.failures.join('; ')}`)}</title></g>`);
        tallest = Math.max(tallest, acc + (12 * top) / ph); // the cross sits above the bar
      }
    });
    const med = stacked(s);
    const at = (line: number) => (y(Math.max(tallest, Number.isFinite(med) ? med : 0)) - 6 - 13 * line).toFixed(1);
    if (!multi) {
      const label = !Number.isFinite(s.blackoutMs) ? 'failed' : s.ok ? formatMs(med) : `${formatMs(med)} (a run failed)`;
      el.push(`<text x="${cx.toFixed(1)}" y="${at(0)}" text-anchor="middle" font-size="11">${esc(label)}</text>`);
    } else if (!Number.isFinite(s.blackoutMs)) {
      el.push(`<text x="${cx.toFixed(1)}" y="${at(0)}" text-anchor="middle" font-size="11">every run failed</text>`);
    } else {
      el.push(
        `<text x="${cx.toFixed(1)}" y="${at(0)}" text-anchor="middle" font-size="11">${esc(`median ${formatMs(med)}`)}</text>`,
        `<text x="${cx.toFixed(1)}" y="${at(1)}" text-anchor="middle" font-size="10" fill="#555">${esc(`range ${formatRange(s.blackoutRange)} ms`)}</text>`,
      );
    }
    el.push(
      `<text x="${cx.toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle" font-size="12">${esc(formatBytes(s.bytes))}</text>`,
      `<text x="${cx.toFixed(1)}" y="${m.top + ph + 32}" text-anchor="middle" font-size="10" fill="#555">${esc(
        Number.isFinite(s.copyGiBps) ? `copy ${((100 * s.copyMs) / s.blackoutMs).toFixed(0)}%` : '',
      )}</text>`,
      `<text x="${cx.toFixed(1)}" y="${m.top + ph + 44}" text-anchor="middle" font-size="10" fill="#555">${esc(
        Number.isFinite(s.copyGiBps) ? `${s.copyGiBps.toFixed(1)} GiB/s` : '',
      )}</text>`,
    );
  });
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`,
    ...[...el, ...legend].map((e) => `  ${e}`),
    '</svg>',
    '',
  ].join('\n');
}

/** A red cross centred on `cx`, its glyph's baseline at `y`: the mark of a failed run. */
function cross(cx: number, y: number): string {
  return `<text x="${cx.toFixed(1)}" y="${y.toFixed(1)}" text-anchor="middle" font-size="13" font-weight="bold" fill="#c00000">\u00d7</text>`;
}

function tickLabel(v: number, step: number): string {
  const digits = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
  return v.toFixed(digits);
}
