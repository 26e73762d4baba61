// Writes a run's outputs: DIR/result.json (deterministic: no wall-clock figures), DIR/timing.json, and the
// SVG plots (completion CDF, origin egress, depth histogram, recovery after failures).

import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { RunResult, SystemResult } from './run.js'
import { barChart, COLORS, lineChart } from './svg.js'
import type { Series } from './svg.js'

/** The result without wall-clock figures and plot series: what result.json holds. */
export function publicResult (r: RunResult): unknown {
  const systems: Record<string, unknown> = {}
  for (const [name, s] of Object.entries(r.systems) as Array<[string, SystemResult]>) {
    const { series: _s, wallMs: _w, cpuMs: _c, ...rest } = s
    systems[name] = rest
  }
  return { ...r, systems }
}

export function writeOutputs (dir: string, r: RunResult): string[] {
  mkdirSync(dir, { recursive: true })
  const files: string[] = []
  const write = (name: string, text: string): void => { writeFileSync(join(dir, name), text); files.push(join(dir, name)) }
  write('result.json', JSON.stringify(publicResult(r), null, 2) + '\n')
  write('timing.json', JSON.stringify(Object.fromEntries(Object.entries(r.systems).map(([k, s]) => [k, { wallMs: s.wallMs, cpuMs: s.cpuMs, events: s.events }])), null, 2) + '\n')
  const entries = Object.entries(r.systems) as Array<[string, SystemResult]>
  const color = (k: string): string => COLORS[k] ?? '#555'

  const cdf: Series[] = entries.map(([k, s]) => {
    const c = s.series.completionsMs
    const pts: Array<[number, number]> = c.map((ms, i) => [ms / 1000, (i + 1) / c.length])
    return { name: `${k} (max ${s.completionMaxMs === null ? '-' : (s.completionMaxMs / 1000).toFixed(1)} s)`, color: color(k), points: pts.length > 0 ? [[pts[0][0], 0], ...pts] : [] }
  })
  const maxC = Math.max(...entries.map(([, s]) => s.completionMaxMs ?? 0))
  const minC = Math.min(...entries.map(([, s]) => s.series.completionsMs[0] ?? Infinity))
  write('completion-cdf.svg', lineChart({
    title: `Boot completion time, ${r.agents} agents, scenario ${r.scenario}`, xLabel: 'time until the boot trace finished (s)', yLabel: 'fraction of agents',
    series: cdf, logX: maxC / Math.max(1, minC) > 5, yMin: 0, yMax: 1,
    vlines: [{ x: r.trace.thinkTotalMs / 1000, label: 'trace think time' }, { x: (r.trace.thinkTotalMs + r.boundMs) / 1000, label: '' }]
  }))

  write('origin-egress.svg', lineChart({
    title: 'Origin egress over time', xLabel: 'simulated time (s)', yLabel: 'origin upload (MB/s)',
    series: entries.map(([k, s]) => ({ name: `${k} (${(s.originEgressBytes / 1e9).toFixed(2)} GB total)`, color: color(k), points: s.series.originEgressPerS.map((b, i) => [i + 0.5, b / 1e6] as [number, number]) })),
    logX: maxC / Math.max(1, minC) > 5
  }))

  const maxDepth = Math.max(0, ...entries.map(([, s]) => s.series.depthHistogram.length - 1))
  write('depth-histogram.svg', barChart({
    title: 'Depth of agents in the tree (hops to a seed, end of run)', xLabel: 'depth', yLabel: 'agents',
    categories: Array.from({ length: maxDepth + 1 }, (_, i) => String(i)),
    groups: entries.map(([k, s]) => ({ name: k, color: color(k), values: s.series.depthHistogram }))
  }))

  const failures = entries.flatMap(([, s]) => s.heals)
  if (failures.length > 0) {
    const t0 = Math.min(...failures.map(f => f.atMs))
    const lastFailure = Math.max(...failures.map(f => f.atMs))
    const slowestHeal = Math.max(0, ...failures.map(f => f.healMs ?? 60_000))
    const t1 = lastFailure + Math.min(120_000, slowestHeal + 10_000)
    write('recovery.svg', lineChart({
      title: 'Recovery after failures: live agents cut off from every seed', xLabel: 'simulated time (s)', yLabel: 'agents without a path to a seed',
      series: entries.map(([k, s]) => ({
        name: `${k} (heal ${s.healMs === null ? 'never' : (s.healMs / 1000).toFixed(1) + ' s'})`, color: color(k), step: true,
        points: s.series.unreachable.filter(([t]) => t >= t0 - 2000 && t <= t1).map(([t, u]) => [t / 1000, u] as [number, number])
      })),
      vlines: [...new Set(failures.map(f => f.atMs))].slice(0, 10).map(at => ({ x: at / 1000, label: 'failure' }))
    }))
  }
  return files
}
