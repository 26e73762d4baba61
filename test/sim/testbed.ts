// The testbed in the simulator (issue 10 step 2): predictions for the bench:testbed configurations beside the
// testbed's measured figures (config/sim/testbed-measured.json, the one file to update with new measurements),
// with the error. `npm run sim:testbed` prints the table; `testbedTable()` is what the test checks for shape.
//
// Usage: npm run sim:testbed -- [--seeds 3] [--costs scenario|measured|none]
// (scenario, the default: each scenario file's costs; measured: config/sim/costs.json as written; none: network only)
//        npm run sim:testbed -- --record OUT/results.json [--record OUT2/results.json ...] --source TEXT
// writes config/sim/testbed-measured.json from bench:testbed runs (each run to its row by rate, think times and
// --vmt-profile; runs of one row give its ranges) and runs nothing else.

import { readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { measuredCosts, testbedLoadOf } from './costs.js'
import { runScenario } from './run.js'
import { loadScenario, SCENARIO_DIR } from './scenario.js'
import type { Scenario } from './scenario.js'
import { loadTrace } from './trace.js'
import type { Trace } from './trace.js'
import type { PrefetchConfig } from './prefetch.js'

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')

type Range = [number, number]

/** The testbed's other figures for vmthunderd (ranges; per host: per booting host). */
export interface MeasuredDetail { originMiB: Range, receivedMiBPerHost: Range, cpuSPerHost: Range, peerBlockRequests: Range }

interface MeasuredRow {
  name: string
  scenario: string
  thinkTimeScale: number
  metric: 'slowest' | 'added'
  /**
   * vmthunderd reads ahead with this prefetch model (the daemon's read-ahead; `{ backToBack: true, idle: false }`
   * for bench:testbed --vmt-profile, a wave whose image was booted before); central and volt run without.
   */
  prefetch?: PrefetchConfig
  measuredS: Record<'central' | 'vmthunderd', Range>
  vmthunderd?: MeasuredDetail
}

export interface TableRow {
  name: string
  system: 'central' | 'volt' | 'vmthunderd'
  measuredS: [number, number] | null
  /** Mean over seeds of the predicted figure. */
  predictedS: number
  /** (predicted - measured midpoint) / midpoint; null without a measurement. */
  error: number | null
  /** Means over seeds of the figures beside the time (MeasuredDetail's), with the measured ones if any. */
  detail: { predicted: Record<keyof MeasuredDetail, number>, measured: MeasuredDetail | null }
}

const MiB = 2 ** 20
const DETAIL_KEYS = ['originMiB', 'receivedMiBPerHost', 'cpuSPerHost', 'peerBlockRequests'] as const

/** The rows bench:testbed runs go to: by rate, think times and --vmt-profile (booted before). */
const RECORD_ROWS: Array<{ rate: string, think: boolean, vmtProfile: boolean, row: Omit<MeasuredRow, 'measuredS' | 'vmthunderd'> }> = [
  { rate: '1gbit', think: false, vmtProfile: false, row: { name: '1 Gb/s back to back, slowest host', scenario: 'testbed-1g', thinkTimeScale: 0, metric: 'slowest' } },
  { rate: '1gbit', think: false, vmtProfile: true, row: { name: '1 Gb/s back to back, booted before (--vmt-profile)', scenario: 'testbed-1g', thinkTimeScale: 0, metric: 'slowest', prefetch: { backToBack: true, idle: false } } },
  { rate: '100mbit', think: false, vmtProfile: false, row: { name: '100 Mb/s back to back, slowest host', scenario: 'testbed-100m', thinkTimeScale: 0, metric: 'slowest' } },
  { rate: '100mbit', think: false, vmtProfile: true, row: { name: '100 Mb/s back to back, booted before (--vmt-profile)', scenario: 'testbed-100m', thinkTimeScale: 0, metric: 'slowest', prefetch: { backToBack: true, idle: false } } },
  { rate: '100mbit', think: true, vmtProfile: false, row: { name: '100 Mb/s think times, s added over local', scenario: 'testbed-100m', thinkTimeScale: 1, metric: 'added' } }
]

class RecordError extends Error {
  override name = 'RecordError'
}

/** testbed-measured.json's content from bench:testbed results files (vmthunderd and nbdkit in each run). */
export function recordMeasured (files: ReadonlyArray<{ path: string, results: any }>, source: string): { source: string, localReplayS?: number, rows: MeasuredRow[] } {
  const byRow = new Map<string, { row: Omit<MeasuredRow, 'measuredS' | 'vmthunderd'>, figures: Array<Record<string, number>> }>()
  let localReplayS: number | undefined
  for (const { path, results: r } of files) {
    const v = r.systems?.vmthunderd
    const central = r.systems?.nbdkit
    if (v === undefined || central === undefined || !Array.isArray(v.agents)) throw new RecordError(`${path}: a run of vmthunderd and nbdkit is needed (--systems vmthunderd,nbdkit)`)
    const spec = RECORD_ROWS.find(x => x.rate === r.rate && x.think === (r.think === true) && x.vmtProfile === (r.vmtProfile === true))
    if (spec === undefined || r.hosts !== 8 || r.warmUp === true || (r.staggerMs ?? 0) > 0) throw new RecordError(`${path}: no testbed row for ${String(r.hosts)} hosts at ${String(r.rate)}${r.think === true ? ', think times' : ''}${r.warmUp === true ? ', warm-up' : ''}${(r.staggerMs ?? 0) > 0 ? ', staggered' : ''}`)
    const base = spec.row.metric === 'added' ? r.localThinkMs as number : 0
    if (spec.row.metric === 'added') {
      if (typeof base !== 'number') throw new RecordError(`${path}: a think-time run without its local replay (localThinkMs)`)
      localReplayS = Math.round(base / 10) / 100
    }
    const agents = v.agents as Array<{ bytesFromOrigin: number, bytesFromPeers: number, cpuMs: number, blockRequests?: { requests: number } }>
    const mean = (f: (a: typeof agents[number]) => number): number => agents.reduce((s, a) => s + f(a), 0) / agents.length
    const figures = {
      central: (central.maxMs - base) / 1000,
      vmthunderd: (v.maxMs - base) / 1000,
      originMiB: v.originBytes / MiB,
      receivedMiBPerHost: mean(a => (a.bytesFromOrigin + a.bytesFromPeers) / MiB),
      cpuSPerHost: mean(a => a.cpuMs / 1000),
      peerBlockRequests: agents.reduce((s, a) => s + (a.blockRequests?.requests ?? 0), 0)
    }
    const entry = byRow.get(spec.row.name) ?? { row: spec.row, figures: [] }
    entry.figures.push(figures)
    byRow.set(spec.row.name, entry)
  }
  const rows: MeasuredRow[] = []
  for (const spec of RECORD_ROWS) {
    const e = byRow.get(spec.row.name)
    if (e === undefined) continue
    const range = (k: string, digits: number): Range => {
      const xs = e.figures.map(f => f[k])
      const round = (x: number): number => Math.round(x * 10 ** digits) / 10 ** digits
      return [round(Math.min(...xs)), round(Math.max(...xs))]
    }
    rows.push({
      ...e.row,
      measuredS: { central: range('central', 2), vmthunderd: range('vmthunderd', 2) },
      vmthunderd: { originMiB: range('originMiB', 1), receivedMiBPerHost: range('receivedMiBPerHost', 1), cpuSPerHost: range('cpuSPerHost', 2), peerBlockRequests: range('peerBlockRequests', 0) }
    })
  }
  return { source, ...(localReplayS !== undefined ? { localReplayS } : {}), rows }
}

export function loadMeasured (): { source: string, rows: MeasuredRow[] } {
  return JSON.parse(readFileSync(join(SCENARIO_DIR, 'testbed-measured.json'), 'utf8'))
}

export function testbedTable (trace: Trace, seeds: readonly number[], over: Partial<Scenario> = {}): TableRow[] {
  const out: TableRow[] = []
  for (const row of loadMeasured().rows) {
    const scenario = { ...loadScenario(row.scenario), thinkTimeScale: row.thinkTimeScale, ...over }
    const sums = { central: 0, volt: 0, vmthunderd: 0 }
    const zero = (): Record<keyof MeasuredDetail, number> => ({ originMiB: 0, receivedMiBPerHost: 0, cpuSPerHost: 0, peerBlockRequests: 0 })
    const details = { central: zero(), volt: zero(), vmthunderd: zero() }
    const backgroundPerAgentMs = scenario.costLoad === 'testbed' ? trace.reads.length * (testbedLoadOf(scenario)?.backgroundCpuMsPerRead ?? 0) : 0
    for (const seed of seeds) {
      const r = runScenario({ scenario, trace, agents: scenario.agents, seed })
      const read = row.prefetch === undefined
        ? undefined
        : runScenario({ scenario, trace, agents: scenario.agents, seed, systems: ['vmthunderd'], prefetchVariants: 'only', prefetchConfig: row.prefetch }).systems['vmthunderd+prefetch']
      for (const sys of ['central', 'volt', 'vmthunderd'] as const) {
        const s = sys === 'vmthunderd' && read !== undefined ? read : r.systems[sys]
        const max = s.completionMaxMs ?? NaN
        sums[sys] += (row.metric === 'added' ? max - trace.thinkTotalMs : max) / 1000 / seeds.length
        const d = details[sys]
        d.originMiB += s.originEgressBytes / MiB / seeds.length
        d.receivedMiBPerHost += s.perAgent.receivedBytes / MiB / seeds.length
        // The agent's own CPU, as the testbed measures it: without the background CPU per read (the replay
        // driver and the kernel path) that testbed scenarios book with each read on the host's core.
        const backgroundMs = sys === 'central' ? 0 : backgroundPerAgentMs
        d.cpuSPerHost += Math.max(0, s.perAgent.cpuMs - backgroundMs) / 1000 / seeds.length
        // The daemon counts GETs (blockRequests.requests, to any peer, the origin included): the model's
        // requests that carried the per-request cost (a read's blocks asked of one peer at one moment).
        d.peerBlockRequests += s.requestsCharged / seeds.length
      }
    }
    for (const sys of ['central', 'volt', 'vmthunderd'] as const) {
      const m = sys === 'volt' ? null : row.measuredS[sys]
      const mid = m === null ? 0 : (m[0] + m[1]) / 2
      out.push({
        name: row.name, system: sys, measuredS: m, predictedS: sums[sys], error: m === null ? null : (sums[sys] - mid) / mid,
        detail: { predicted: details[sys], measured: sys === 'vmthunderd' ? row.vmthunderd ?? null : null }
      })
    }
  }
  return out
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      seeds: { type: 'string', default: '3' },
      costs: { type: 'string', default: 'scenario' },
      record: { type: 'string', multiple: true },
      source: { type: 'string' }
    }
  })
  if (values.record !== undefined && values.record.length > 0) {
    if (values.source === undefined) throw new RecordError('--record needs --source TEXT: when, which code, which config')
    const files = values.record.map(path => ({ path, results: JSON.parse(readFileSync(path, 'utf8')) }))
    const out = join(SCENARIO_DIR, 'testbed-measured.json')
    writeFileSync(out, JSON.stringify(recordMeasured(files, values.source), null, 2) + '\n')
    console.log(`wrote ${out} from ${files.length} run(s)`)
    return
  }
  const seeds = Array.from({ length: Math.max(1, Math.min(20, Number(values.seeds))) }, (_, i) => i + 1)
  const trace = loadTrace(join(ROOT, 'test/fixtures/debian12-boot.reads.csv'))
  const costs = values.costs === 'none' ? 'none' as const : values.costs === 'measured' ? 'measured' as const : undefined
  const c = measuredCosts()
  const file = `config/sim/costs.json, calibrated on ${c.commit ?? '?'} at ${c.measuredAt ?? '?'}`
  console.log(`testbed in the simulator; measured: ${loadMeasured().source}`)
  console.log(`costs: ${costs === undefined ? `each scenario's (${file}, with the scenario's overrides)` : costs === 'measured' ? `measured (${file}, as written)` : 'none'}; seeds ${seeds.join(',')}`)
  console.log('configuration                                   system       measured s     predicted s   error')
  const rows = testbedTable(trace, seeds, costs === undefined ? {} : { costs })
  const range = (m: Range, digits: number): string => m[0] === m[1] ? m[0].toFixed(digits) : `${m[0].toFixed(digits)}-${m[1].toFixed(digits)}`
  for (const r of rows) {
    const m = r.measuredS === null ? '-' : r.measuredS[0] === r.measuredS[1] ? r.measuredS[0].toFixed(2) : `${r.measuredS[0].toFixed(1)}-${r.measuredS[1].toFixed(1)}`
    const err = r.error === null ? '-' : `${r.error >= 0 ? '+' : ''}${(r.error * 100).toFixed(0)} %`
    console.log(`${r.name.padEnd(47)} ${r.system.padEnd(11)} ${m.padStart(11)} ${r.predictedS.toFixed(2).padStart(14)} ${err.padStart(8)}`)
  }
  console.log('\nvmthunderd beside the time, measured / predicted (per host: mean per booting host; requests: all hosts)')
  console.log('configuration                                   origin MiB        MiB per host      CPU-s per host    block requests to peers')
  for (const r of rows) {
    if (r.system !== 'vmthunderd') continue
    const p = r.detail.predicted
    const cell = (k: typeof DETAIL_KEYS[number], digits: number): string => `${r.detail.measured === null ? '-' : range(r.detail.measured[k], digits)} / ${p[k].toFixed(digits)}`.padEnd(18)
    console.log(`${r.name.padEnd(47)} ${cell('originMiB', 1)}${cell('receivedMiBPerHost', 1)}${cell('cpuSPerHost', 1)}${cell('peerBlockRequests', 0)}`)
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main().catch((err: unknown) => { console.error(err); process.exitCode = 1 })
}
