// The testbed in the simulator (issue 10 step 2): predictions for the bench:testbed configurations beside the
// testbed's measured figures (config/sim/testbed-measured.json, the one file to update with new measurements),
// with the error. `npm run sim:testbed` prints the table; `testbedTable()` is what the test checks for shape.
//
// Usage: npm run sim:testbed -- [--seeds 3] [--costs measured|none]

import { readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { measuredCosts } from './costs.js'
import { runScenario } from './run.js'
import { loadScenario, SCENARIO_DIR } from './scenario.js'
import type { Scenario } from './scenario.js'
import { loadTrace } from './trace.js'
import type { Trace } from './trace.js'

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')

interface MeasuredRow {
  name: string
  scenario: string
  thinkTimeScale: number
  metric: 'slowest' | 'added'
  measuredS: Record<'central' | 'vmthunderd', [number, number]>
}

export interface TableRow {
  name: string
  system: 'central' | 'volt' | 'vmthunderd'
  measuredS: [number, number] | null
  /** Mean over seeds of the predicted figure. */
  predictedS: number
  /** (predicted - measured midpoint) / midpoint; null without a measurement. */
  error: number | null
}

export function loadMeasured (): { source: string, rows: MeasuredRow[] } {
  return JSON.parse(readFileSync(join(SCENARIO_DIR, 'testbed-measured.json'), 'utf8'))
}

export function testbedTable (trace: Trace, seeds: readonly number[], over: Partial<Scenario> = {}): TableRow[] {
  const out: TableRow[] = []
  for (const row of loadMeasured().rows) {
    const scenario = { ...loadScenario(row.scenario), thinkTimeScale: row.thinkTimeScale, ...over }
    const sums = { central: 0, volt: 0, vmthunderd: 0 }
    for (const seed of seeds) {
      const r = runScenario({ scenario, trace, agents: scenario.agents, seed })
      for (const sys of ['central', 'volt', 'vmthunderd'] as const) {
        const max = r.systems[sys].completionMaxMs ?? NaN
        sums[sys] += (row.metric === 'added' ? max - trace.thinkTotalMs : max) / 1000 / seeds.length
      }
    }
    for (const sys of ['central', 'volt', 'vmthunderd'] as const) {
      const m = sys === 'volt' ? null : row.measuredS[sys]
      const mid = m === null ? 0 : (m[0] + m[1]) / 2
      out.push({ name: row.name, system: sys, measuredS: m, predictedS: sums[sys], error: m === null ? null : (sums[sys] - mid) / mid })
    }
  }
  return out
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { seeds: { type: 'string', default: '3' }, costs: { type: 'string', default: 'measured' } } })
  const seeds = Array.from({ length: Math.max(1, Math.min(20, Number(values.seeds))) }, (_, i) => i + 1)
  const trace = loadTrace(join(ROOT, 'test/fixtures/debian12-boot.reads.csv'))
  const costs = values.costs === 'none' ? 'none' as const : 'measured' as const
  const c = measuredCosts()
  console.log(`testbed in the simulator; measured: ${loadMeasured().source}`)
  console.log(`costs: ${costs}${costs === 'measured' ? ` (config/sim/costs.json, calibrated on ${c.commit ?? '?'} at ${c.measuredAt ?? '?'})` : ''}; seeds ${seeds.join(',')}`)
  console.log('configuration                                   system       measured s     predicted s   error')
  for (const r of testbedTable(trace, seeds, { costs })) {
    const m = r.measuredS === null ? '-' : r.measuredS[0] === r.measuredS[1] ? r.measuredS[0].toFixed(2) : `${r.measuredS[0].toFixed(1)}-${r.measuredS[1].toFixed(1)}`
    const err = r.error === null ? '-' : `${r.error >= 0 ? '+' : ''}${(r.error * 100).toFixed(0)} %`
    console.log(`${r.name.padEnd(47)} ${r.system.padEnd(11)} ${m.padStart(11)} ${r.predictedS.toFixed(2).padStart(14)} ${err.padStart(8)}`)
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main().catch((err: unknown) => { console.error(err); process.exitCode = 1 })
}
