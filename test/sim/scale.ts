// Scale runs (issue 10 step 5): one system of one scenario in this process, reporting the simulated results
// beside wall time, CPU time (user + system) and peak RSS of the process, and vmthunderd's gossip load
// (issue 10 step 6): adverts per agent per second and per topic, and what each agent receives and validates.
//
// Usage: node --import tsx test/sim/scale.ts --scenario NAME --agents N [--seed S] [--system vmthunderd]
//          [--think 0|1] [--topic-agents N] [--max-sim-s S] [--progress-s S] [--uploads] [--json]

import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { isMainThread, Worker } from 'node:worker_threads'
import type { Engine, SystemName } from './engine.js'
import { costsOf } from './costs.js'
import { lowerBoundMs, runSystem, YOUNG_GEN_MB } from './run.js'
import type { SystemResult } from './run.js'
import { loadScenario } from './scenario.js'
import { GOSSIP_D } from './systems.js'
import type { GossipStats } from './systems.js'
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
      /** Stop at this simulated time (seconds): for profiling the start of a large run. */
      'max-sim-s': { type: 'string' },
      /** Print a progress line to stderr at most this often (wall seconds); 0: never. */
      'progress-s': { type: 'string', default: '0' },
      json: { type: 'boolean', default: false },
      /** Print where the upload went: copies of the boot each agent sent, the top uploaders, parents per agent. */
      uploads: { type: 'boolean', default: false }
    }
  })
  const sc = loadScenario(values.scenario as string)
  const scenario = {
    ...sc,
    ...(values.think !== undefined ? { thinkTimeScale: Number(values.think) } : {}),
    ...(values['topic-agents'] !== undefined ? { advertTopicAgents: Number(values['topic-agents']) } : {}),
    ...(values['max-sim-s'] !== undefined ? { maxSimMs: Number(values['max-sim-s']) * 1000 } : {})
  }
  const trace = loadTrace(join(ROOT, 'test/fixtures/debian12-boot.reads.csv'))
  const agents = Number(values.agents)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const progressS = Number(values['progress-s'])
  let lastProgressMs = t0
  const progress = progressS > 0
    ? (e: Engine): void => {
        const now = performance.now()
        if (now - lastProgressMs < progressS * 1000) return
        lastProgressMs = now
        const c = process.cpuUsage(cpu0)
        const unreachable = e.check.unreachable[e.check.unreachable.length - 1]?.[1] ?? 0
        console.error(`progress: sim ${(e.nowMs / 1000).toFixed(0)} s, ${e.eventsRun} events, ${agents - e.booting} of ${agents} booted, ` +
          `${unreachable} cut off from a seed, ${meanHeld(e).toFixed(0)} of ${e.blockCount} blocks held on average, origin ${(e.originEgressBytes / 1e9).toFixed(2)} GB, ` +
          `wall ${((now - t0) / 1000).toFixed(0)} s, cpu ${((c.user + c.system) / 1e6).toFixed(0)} s, RSS ${(process.memoryUsage.rss() / 2 ** 20).toFixed(0)} MiB`)
      }
    : undefined
  const { result: r, engine } = runSystem(values.system as SystemName, { scenario, trace, agents, seed: Number(values.seed), progress })
  const wallS = (performance.now() - t0) / 1000
  const c = process.cpuUsage(cpu0)
  const cpuS = (c.user + c.system) / 1e6
  const peakRssMiB = process.resourceUsage().maxRSS / 1024
  const boundS = lowerBoundMs(engine, trace.distinctBytes) / 1000
  const s = (x: number | null): string => x === null ? '-' : (x / 1000).toFixed(2)
  const gossip = gossipLoad(r, (engine.system as Partial<{ gossip: GossipStats }>).gossip, agents + scenario.seeds, scenario.advertTopicAgents,
    costsOf(scenario).advertCpuMs)
  const out = {
    scenario: scenario.name, agents, seed: Number(values.seed), system: values.system, thinkTimeScale: scenario.thinkTimeScale,
    maxS: r.completionMaxMs === null ? null : r.completionMaxMs / 1000, medianS: r.completionMedianMs === null ? null : r.completionMedianMs / 1000,
    boundS, unfinished: r.unfinished, healS: r.healMs === null ? null : r.healMs / 1000, cycles: r.checks.cycles, fanoutViolations: r.checks.fanoutViolations,
    originGB: r.originEgressBytes / 1e9, maxDepth: r.maxDepth, events: r.events, eventsPerAgent: Math.round(r.events / agents), wallS, cpuS, peakRssMiB,
    simEndS: r.simEndMs / 1000, adverts: r.adverts, gossip, ...(values.uploads === true ? { uploads: uploadsOf(engine) } : {})
  }
  if (values.json === true) { console.log(JSON.stringify(out)); return }
  console.log(`${out.scenario} ${agents} agents seed ${out.seed} think ${out.thinkTimeScale} ${out.system}: max ${s(r.completionMaxMs)} s, median ${s(r.completionMedianMs)} s, bound ${boundS.toFixed(3)} s, ` +
    `unfinished ${r.unfinished}, heal ${s(r.healMs)} s, cycles ${r.checks.cycles}, fan! ${r.checks.fanoutViolations}, origin ${out.originGB.toFixed(2)} GB, depth ${r.maxDepth}`)
  console.log(`  ${r.events} events; wall ${wallS.toFixed(1)} s, cpu ${cpuS.toFixed(1)} s, peak RSS ${peakRssMiB.toFixed(0)} MiB` +
    (r.adverts === undefined ? '' : `; adverts ${r.adverts.published}, peak ${r.adverts.peakTopicPerS}/s on the topic, ${r.adverts.meanPerAgentPerS}/s per agent`))
  if (out.uploads !== undefined) {
    const u = out.uploads
    const sorted = (h: Record<string, number>): string => Object.entries(h).sort((a, b) => Number(a[0]) - Number(b[0])).map(([k, v]) => `${k}: ${v}`).join(', ')
    console.log(`  copies of the blocks each agent uploaded (agents): ${sorted(u.copiesHistogram)}`)
    console.log(`  top uploaders: ${u.top.map(t => `${t.agent} ${t.copies} copies (${t.children} children, ${t.soleChildren} with it as their only parent)`).join('; ')}`)
    console.log(`  parents per agent at the end (agents): ${sorted(u.parentsHistogram)}`)
  }
  if (gossip !== undefined) {
    const g = gossip
    console.log(`  gossip: ${g.topics} topic(s) of ${g.topicAgents} agents; per topic ${g.topicMeanPerS}/s mean, ${g.topicPeakPerS}/s peak; ` +
      `per agent: publishes ${g.publishedPerAgentPerS}/s, validates ${g.topicMeanPerS}/s (peak ${g.topicPeakPerS}), receives ~${g.copiesPeakPerS}/s copies at peak, ` +
      `advert CPU ${g.advertCpuMsPerSMean} ms/s mean, ${g.advertCpuMsPerSPeak} ms/s peak`)
  }
}

/**
 * Where the upload went, at the end: how many copies of the image's blocks each agent sent (its upload port's
 * busy time x its rate / the blocks' bytes), the top uploaders with their children and how many of those have
 * them as their only parent, and parents per agent. Back to back, a wave takes about the busiest relay's copies
 * x one copy's time at its uplink: every child of a relay reads in step with the others, so the relay's uplink
 * sends each block once per child that takes it from there.
 */
function uploadsOf (e: Engine): { copiesHistogram: Record<string, number>, top: Array<{ agent: number, copies: number, children: number, soleChildren: number }>, parentsHistogram: Record<string, number> } {
  const F = e.blockCount * e.blockSizeBytes
  const copies = e.nodes.map(n => {
    const up = e.net.hosts[n.idx].up
    return { agent: n.idx, copies: Math.round(up.busyMs * up.capBytesPerMs / F * 100) / 100, children: n.children.size }
  })
  const copiesHistogram: Record<string, number> = {}
  for (const c of copies) { const k = (Math.floor(c.copies * 2) / 2).toFixed(1); copiesHistogram[k] = (copiesHistogram[k] ?? 0) + 1 }
  const parentsHistogram: Record<string, number> = {}
  const parentCount = new Map<number, number>()
  for (const n of e.nodes) {
    if (n.isSeed) continue
    const k = e.system.parentsOf(n).length
    parentCount.set(n.idx, k)
    parentsHistogram[String(k)] = (parentsHistogram[String(k)] ?? 0) + 1
  }
  const top = [...copies].sort((a, b) => b.copies - a.copies).slice(0, 5)
    .map(c => ({ ...c, soleChildren: [...e.nodes[c.agent].children].filter(k => parentCount.get(k) === 1).length }))
  return { copiesHistogram, top, parentsHistogram }
}

/** Blocks an agent that boots holds, on average. */
function meanHeld (e: Engine): number {
  let sum = 0; let n = 0
  for (const x of e.nodes) if (x.boots) { sum += x.held; n++ }
  return n === 0 ? 0 : sum / n
}

/**
 * What gossip costs each agent under the run's advert rates: every agent validates each advert of its topic
 * once (gossipsub drops the other copies by message id before the signature check, src/p2p/node.ts) and
 * receives it from each of its ~GOSSIP_D mesh peers.
 */
function gossipLoad (r: SystemResult, g: GossipStats | undefined, nodes: number, topicAgentsOpt: number | undefined, advertCpuMs: number) {
  if (g === undefined || r.adverts === undefined) return undefined
  const topicAgents = Math.min(nodes, topicAgentsOpt ?? nodes)
  const share = topicAgents / nodes
  const secs = Math.max(1, g.perSecond.length)
  const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d
  const topicMean = g.advertsPublished / secs * share
  const topicPeak = r.adverts.peakTopicPerS * share
  return {
    topicAgents, topics: Math.ceil(nodes / topicAgents), publishedPerAgentPerS: round(g.advertsPublished / secs / nodes, 3),
    topicMeanPerS: round(topicMean), topicPeakPerS: round(topicPeak), copiesPeakPerS: round(topicPeak * GOSSIP_D),
    advertCpuMsPerSMean: round(topicMean * advertCpuMs), advertCpuMsPerSPeak: round(topicPeak * advertCpuMs)
  }
}

// The run goes in a worker thread for its young generation (as runScenarioParallel's): with the default
// 16 MiB semi-spaces the requests and reads in flight at thousands of agents outlive a scavenge and are copied
// into the old generation (3k back to back: ~13 % more CPU than with 64 MiB ones). Same results, same output.
if (isMainThread) {
  const w = new Worker(new URL('./scale-entry.mjs', import.meta.url), { argv: process.argv.slice(2), resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GEN_MB } })
  w.on('error', err => { console.error(err); process.exitCode = 1 })
  w.on('exit', code => { if (code !== 0) process.exitCode = code })
} else main()
