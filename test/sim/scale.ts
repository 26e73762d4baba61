// Scale runs (issue 10 step 5): one system of one scenario in this process, reporting the simulated results
// beside wall time, CPU time (user + system) and peak RSS of the process, and vmthunderd's advert counts.
//
// Usage: node --import tsx test/sim/scale.ts --scenario NAME --agents N [--seed S] [--system vmthunderd]
//          [--think 0|1] [--topic-agents N] [--json]

import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type { SystemName } from './engine.js'
import { lowerBoundMs, runSystem } from './run.js'
import { loadScenario } from './scenario.js'
import { loadTrace } from './trace.js'

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')

function main (): void {
  const { values } = parseArgs({
    options: {
      scenario: { type: 'string', default: 'uniform' },
      agents: { type: 'string', default: '1000' },
      seed: { type: 'string', default: '1' },
      system: { type: 'string', default: 'vmthunderd' },
      think: { type: 'string' },
      'topic-agents': { type: 'string' },
      json: { type: 'boolean', default: false }
    }
  })
  const sc = loadScenario(values.scenario as string)
  const scenario = {
    ...sc,
    ...(values.think !== undefined ? { thinkTimeScale: Number(values.think) } : {}),
    ...(values['topic-agents'] !== undefined ? { advertTopicAgents: Number(values['topic-agents']) } : {})
  }
  const trace = loadTrace(join(ROOT, 'test/fixtures/debian12-boot.reads.csv'))
  const agents = Number(values.agents)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const { result: r, engine } = runSystem(values.system as SystemName, { scenario, trace, agents, seed: Number(values.seed) })
  const wallS = (performance.now() - t0) / 1000
  const c = process.cpuUsage(cpu0)
  const cpuS = (c.user + c.system) / 1e6
  const peakRssMiB = process.resourceUsage().maxRSS / 1024
  const boundS = lowerBoundMs(engine, trace.distinctBytes) / 1000
  const s = (x: number | null): string => x === null ? '-' : (x / 1000).toFixed(2)
  const out = {
    scenario: scenario.name, agents, seed: Number(values.seed), system: values.system, thinkTimeScale: scenario.thinkTimeScale,
    maxS: r.completionMaxMs === null ? null : r.completionMaxMs / 1000, medianS: r.completionMedianMs === null ? null : r.completionMedianMs / 1000,
    boundS, unfinished: r.unfinished, healS: r.healMs === null ? null : r.healMs / 1000, cycles: r.checks.cycles, fanoutViolations: r.checks.fanoutViolations,
    originGB: r.originEgressBytes / 1e9, maxDepth: r.maxDepth, events: r.events, wallS, cpuS, peakRssMiB, adverts: r.adverts
  }
  if (values.json === true) { console.log(JSON.stringify(out)); return }
  console.log(`${out.scenario} ${agents} agents seed ${out.seed} think ${out.thinkTimeScale} ${out.system}: max ${s(r.completionMaxMs)} s, median ${s(r.completionMedianMs)} s, bound ${boundS.toFixed(3)} s, ` +
    `unfinished ${r.unfinished}, heal ${s(r.healMs)} s, cycles ${r.checks.cycles}, fan! ${r.checks.fanoutViolations}, origin ${out.originGB.toFixed(2)} GB, depth ${r.maxDepth}`)
  console.log(`  ${r.events} events; wall ${wallS.toFixed(1)} s, cpu ${cpuS.toFixed(1)} s, peak RSS ${peakRssMiB.toFixed(0)} MiB` +
    (r.adverts === undefined ? '' : `; adverts ${r.adverts.published}, peak ${r.adverts.peakTopicPerS}/s on the topic, ${r.adverts.meanPerAgentPerS}/s per agent`))
}

main()
