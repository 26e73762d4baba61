// npm run sim -- --scenario NAME|FILE --agents N --seed S [--trace FILE] --out DIR [--systems a,b] [--serial] [--in-process] [--prefetch | --prefetch-only]
import { parseArgs } from 'node:util'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { writeOutputs } from './report.js'
import { runScenario, runScenarioParallel, SYSTEMS } from './run.js'
import type { SystemName } from './engine.js'
import { loadScenario } from './scenario.js'
import { loadTrace } from './trace.js'

const DEFAULT_TRACE = resolve(fileURLToPath(new URL('.', import.meta.url)), '../fixtures/debian12-boot.reads.csv')

class UsageError extends Error { override name = 'UsageError' }

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      scenario: { type: 'string' }, agents: { type: 'string' }, seed: { type: 'string', default: '1' },
      trace: { type: 'string', default: DEFAULT_TRACE }, out: { type: 'string' }, systems: { type: 'string' },
      serial: { type: 'boolean', default: false }, prefetch: { type: 'boolean', default: false }, 'prefetch-only': { type: 'boolean', default: false }, 'in-process': { type: 'boolean', default: false }, help: { type: 'boolean', default: false }
    }
  })
  if (values.help === true || values.scenario === undefined || values.out === undefined) {
    throw new UsageError('usage: npm run sim -- --scenario NAME|FILE [--agents N] [--seed S] [--trace FILE] --out DIR [--systems central,volt,vmthunderd] [--serial] [--in-process] [--prefetch | --prefetch-only]')
  }
  const scenario = loadScenario(values.scenario)
  const agents = values.agents === undefined ? scenario.agents : Number(values.agents)
  const seed = Number(values.seed)
  if (!Number.isInteger(agents) || agents < 1 || agents > 200_000) throw new UsageError(`--agents must be an integer in 1..200000, got ${values.agents}`)
  if (!Number.isInteger(seed)) throw new UsageError(`--seed must be an integer, got ${values.seed}`)
  const systems = values.systems === undefined ? SYSTEMS : values.systems.split(',') as SystemName[]
  for (const s of systems) if (!SYSTEMS.includes(s)) throw new UsageError(`unknown system ${s}`)
  const trace = loadTrace(values.trace)
  const t0 = performance.now()
  // --prefetch: each system also with the planner-driven prefetch model (NAME+prefetch); --prefetch-only: just those
  const prefetchVariants = values['prefetch-only'] === true ? 'only' as const : values.prefetch === true || scenario.prefetch ? 'both' as const : 'off' as const
  const opts = { scenario, trace, agents, seed, systems, prefetchVariants }
  // --serial: one system at a time (in a worker), so that each system's CPU time can be measured
  const r = values['in-process'] === true ? runScenario(opts) : await runScenarioParallel(opts, values.serial === true ? 1 : 2)
  const wallMs = performance.now() - t0
  const files = writeOutputs(values.out, r)
  const s = (x: number | null): string => x === null ? '-' : (x / 1000).toFixed(2)
  console.log(`scenario ${r.scenario}, ${agents} agents, seed ${seed}; bound ${(r.boundMs / 1000).toFixed(3)} s (whole blocks ${(r.boundBlocksMs / 1000).toFixed(3)} s), trace think time ${(r.trace.thinkTotalMs / 1000).toFixed(1)} s`)
  console.log('system               max s   median s  origin GB  depth fanout  heal s  unfinished  cycles fan!  absent  wall s   cpu s')
  for (const [name, x] of Object.entries(r.systems)) {
    console.log(`${name.padEnd(19)} ${s(x.completionMaxMs).padStart(7)} ${s(x.completionMedianMs).padStart(9)} ${(x.originEgressBytes / 1e9).toFixed(3).padStart(10)} ${String(x.maxDepth).padStart(6)} ${String(x.maxFanout).padStart(6)} ${s(x.healMs).padStart(7)} ${String(x.unfinished).padStart(11)} ${String(x.checks.cycles).padStart(7)} ${String(x.checks.fanoutViolations).padStart(4)} ${String(x.checks.absentReads).padStart(7)} ${(x.wallMs / 1000).toFixed(1).padStart(7)} ${x.cpuMs === undefined ? '      -' : (x.cpuMs / 1000).toFixed(1).padStart(7)}`)
  }
  console.log(`wall ${(wallMs / 1000).toFixed(1)} s; wrote ${files.join(', ')}`)
}

main().catch((err: unknown) => {
  const e = err as Error
  console.error(`${e.name}: ${e.message}`)
  process.exitCode = e.name === 'UsageError' ? 2 : 1
})
