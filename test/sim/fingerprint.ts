// Fingerprints of simulator runs, for checking that a change to the simulator's speed leaves its results alone:
// a hash of each run's result JSON (every field but the wall time, the process's CPU and the event count, which
// is printed beside it). Compare the output for two checkouts line by line (diff).
//
// Usage: node --import tsx test/sim/fingerprint.ts [--repo DIR]           the standard runs, one process each
//        node --import tsx test/sim/fingerprint.ts [--repo DIR] --run 'AGENTS SCENARIO THINK TOPIC SYSTEM [PREFETCH]'
// DIR: the checkout whose simulator runs (default: this one); TOPIC '-' keeps the scenario's topic size.

import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

/** The runs README.md lists for identity checks (1k back to back with 64-agent topics, then the failure and model variants). */
export const STANDARD_RUNS = [
  '1000 uniform 0 64 vmthunderd',
  '200 racks-crash-racks 1 - vmthunderd',
  '200 racks-crash-racks 1 - volt',
  '200 uniform-crash10 1 - vmthunderd',
  '100 churn 1 - vmthunderd',
  '100 origin-failure 1 - vmthunderd',
  '200 regions 1 - vmthunderd',
  '8 testbed-1g 1 - vmthunderd',
  '200 heterogeneous 0 - vmthunderd 1',
  '300 uniform 1 64 vmthunderd',
  '100 uniform 0 - central'
]

const HERE = resolve(fileURLToPath(new URL('.', import.meta.url)))

async function fingerprint (repo: string, spec: string): Promise<string> {
  const [agents, scenarioName, think, topic, system, prefetch = '0'] = spec.split(' ')
  const { runSystem } = await import(join(repo, 'test/sim/run.ts'))
  const { loadScenario } = await import(join(repo, 'test/sim/scenario.ts'))
  const { loadTrace } = await import(join(repo, 'test/sim/trace.ts'))
  const sc = loadScenario(scenarioName)
  const scenario = { ...sc, thinkTimeScale: Number(think), ...(topic === '-' ? {} : { advertTopicAgents: Number(topic) }) }
  const trace = loadTrace(join(repo, 'test/fixtures/debian12-boot.reads.csv'))
  const { result } = runSystem(system, { scenario, trace, agents: Number(agents), seed: 1 }, prefetch === '1')
  const { wallMs: _wallMs, cpuMs: _cpuMs, events, ...rest } = result
  const hash = createHash('sha256').update(JSON.stringify(rest)).digest('hex').slice(0, 16)
  const s = (ms: number | null): string => ms === null ? '-' : (ms / 1000).toFixed(3)
  return `${spec.padEnd(38)} ${hash} events ${String(events)} max ${s(rest.completionMaxMs)} median ${s(rest.completionMedianMs)} ` +
    `origin ${(rest.originEgressBytes / 1e9).toFixed(3)} depth ${String(rest.maxDepth)}`
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { repo: { type: 'string', default: resolve(HERE, '../..') }, run: { type: 'string' } } })
  const repo = resolve(values.repo)
  if (values.run !== undefined) { console.log(await fingerprint(repo, values.run)); return }
  // one process per run: no state (module caches, heap) carried from one run into the next
  for (const spec of STANDARD_RUNS) {
    process.stdout.write(execFileSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--repo', repo, '--run', spec], { encoding: 'utf8' }))
  }
}

await main()
