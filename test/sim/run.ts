// Runs one scenario under the three systems and gathers the result JSON.

import { Worker } from 'node:worker_threads'
import { Engine } from './engine.js'
import type { PrefetchModel, SystemName } from './engine.js'
import type { Scenario } from './scenario.js'
import { makePrefetch, PlannerPrefetch } from './prefetch.js'
import type { PrefetchConfig } from './prefetch.js'
import { makeSystem } from './systems.js'
import type { GossipStats } from './systems.js'
import type { Trace } from './trace.js'

export const SYSTEMS: readonly SystemName[] = ['central', 'volt', 'vmthunderd']

export interface SystemResult {
  completionMaxMs: number | null
  completionMedianMs: number | null
  completionP90Ms: number | null
  originEgressBytes: number
  seedEgressBytes: number
  maxDepth: number
  maxFanout: number
  /** Per injected failure: time until every live agent reached a seed again (null: never). Max of them. */
  healMs: number | null
  heals: Array<{ atMs: number, kind: string, healMs: number | null }>
  finished: number
  unfinished: number
  crashed: number
  wastedBytes: number
  crossRackBytes: number
  /** Prefetch variant: blocks the prefetch model asked for (a demand read may have joined the fetch). */
  prefetchBlocks: number
  /** Prefetch variant (vmthunderd): agents promoted to seeds once they held every block. */
  promotedAgents: number
  checks: { runs: number, cycles: number, firstCycle: number[] | null, fanoutViolations: number, absentReads: number, unreachableAtEnd: number }
  simEndMs: number
  events: number
  wallMs: number
  /** CPU time of the run (user + system), when it ran alone in its process (one worker at a time). */
  cpuMs?: number
  /**
   * vmthunderd's adverts (issue 10 step 6): published in all, the peak per second on the image's topic, and
   * per agent per second (mean over the run's booting seconds). Every agent on the topic receives each one.
   */
  adverts?: { published: number, peakTopicPerS: number, meanPerAgentPerS: number }
  /**
   * What the testbed also measures, per booting agent: bytes received (duplicates included), CPU work (blocks,
   * instance creation and background; 0 for central and volt, which pay no costs); and block requests to
   * agents that are not seeds, and requests charged the per-request CPU (vmthunderd), for all agents.
   */
  perAgent: { receivedBytes: number, cpuMs: number }
  peerBlockRequests: number
  requestsCharged: number
  /** For the plots. */
  series: { completionsMs: number[], originEgressPerS: number[], depthHistogram: number[], unreachable: Array<[number, number]> }
}

export interface RunResult {
  scenario: string
  agents: number
  seed: number
  trace: { reads: number, blocks: number, blockSizeBytes: number, distinctBytes: number, thinkTotalMs: number }
  /** max(F/u_s, F/d_min, N·F/(u_s + Σu_i)), F the distinct bytes of the trace. */
  boundMs: number
  /** The same with F rounded to whole blocks (what block-granular systems must move). */
  boundBlocksMs: number
  /** Keyed by system name; with prefetch variants also `NAME+prefetch`. */
  systems: Record<string, SystemResult>
}

export interface RunOptions {
  scenario: Scenario
  trace: Trace
  agents: number
  seed: number
  systems?: readonly SystemName[]
  /** A custom model for every system (in process only); see `prefetchVariants` for the planner's. */
  prefetch?: PrefetchModel
  /**
   * Issue 5: also run each system with the planner-driven prefetch model (test/sim/prefetch.ts) and, for
   * vmthunderd, complete agents promoted to seeds; results as `NAME+prefetch`. 'only': just those.
   */
  prefetchVariants?: 'off' | 'both' | 'only'
  prefetchConfig?: PrefetchConfig
  /** Called once per simulated second (scale runs report progress; it must not change the simulation). */
  progress?: (e: Engine) => void
}

/** One system run: a system, with or without the planner's prefetch model. */
export interface Variant { system: SystemName, prefetch: boolean }

export const variantKey = (v: Variant): string => v.prefetch ? `${v.system}+prefetch` : v.system

export function variantsOf (o: RunOptions): Variant[] {
  const mode = o.prefetchVariants ?? (o.scenario.prefetch ? 'both' : 'off')
  const out: Variant[] = []
  for (const system of o.systems ?? SYSTEMS) {
    if (mode !== 'only') out.push({ system, prefetch: false })
    if (mode !== 'off') out.push({ system, prefetch: true })
  }
  return out
}

function quantile (sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

export function runSystem (name: SystemName, o: RunOptions, withPrefetch = false): { result: SystemResult, engine: Engine } {
  const t0 = performance.now()
  const prefetch = withPrefetch ? makePrefetch(o.trace, o.prefetchConfig) : o.prefetch
  const e = new Engine({ scenario: o.scenario, trace: o.trace, seed: o.seed, agents: o.agents, prefetch, promoteComplete: withPrefetch, progress: o.progress })
  const system = makeSystem(name, e)
  e.run(system)
  const gossip = (system as Partial<{ gossip: GossipStats }>).gossip
  const completions: number[] = []
  let unfinished = 0; let crashed = 0
  let booting = 0; let received = 0; let cpuMs = 0
  for (const n of e.nodes) {
    if (!n.boots) continue
    booting++
    received += n.held * e.blockSizeBytes
    cpuMs += e.net.cpuWorkMs(n.idx)
    if (!n.alive) { crashed++; continue }
    if (n.doneMs >= 0) completions.push(n.doneMs - n.startMs); else unfinished++
  }
  completions.sort((a, b) => a - b)
  const heals = e.failures.map(f => ({ atMs: f.atMs, kind: f.kind, healMs: f.healedAtMs >= 0 ? f.healedAtMs - f.atMs : null }))
  const last = e.check.unreachable[e.check.unreachable.length - 1]
  const result: SystemResult = {
    completionMaxMs: completions.length > 0 ? completions[completions.length - 1] : null,
    completionMedianMs: quantile(completions, 0.5),
    completionP90Ms: quantile(completions, 0.9),
    originEgressBytes: e.originEgressBytes,
    seedEgressBytes: e.seedEgressBytes,
    maxDepth: e.check.maxDepth,
    maxFanout: e.check.maxFanout,
    healMs: heals.length === 0 ? null : heals.some(h => h.healMs === null) ? null : Math.max(...heals.map(h => h.healMs as number)),
    heals,
    finished: completions.length,
    unfinished,
    crashed,
    wastedBytes: e.wastedBytes,
    perAgent: booting === 0
      ? { receivedBytes: 0, cpuMs: 0 }
      : { receivedBytes: (received + e.wastedBytes) / booting, cpuMs: cpuMs / booting + e.net.backgroundCpuMsPerAgent },
    peerBlockRequests: e.peerBlockRequests,
    requestsCharged: (system as Partial<{ requestsCharged: number }>).requestsCharged ?? 0,
    crossRackBytes: e.net.crossRackBytes,
    prefetchBlocks: prefetch instanceof PlannerPrefetch ? prefetch.issuedBlocks : 0,
    promotedAgents: e.nodes.filter(n => n.promoted).length,
    checks: {
      runs: e.check.checks, cycles: e.check.cycleChecksFailed, firstCycle: e.check.firstCycle, fanoutViolations: e.check.fanoutViolations,
      absentReads: e.check.absentReads, unreachableAtEnd: last === undefined ? 0 : last[1]
    },
    ...(gossip === undefined ? {} : { adverts: advertStats(gossip, e.nodes.length) }),
    simEndMs: e.nowMs,
    events: e.eventsRun,
    wallMs: Math.round(performance.now() - t0),
    series: { completionsMs: completions, originEgressPerS: e.originEgressPerS, depthHistogram: e.check.depthHistogram, unreachable: e.check.unreachable }
  }
  return { result, engine: e }
}

function advertStats (g: GossipStats, agents: number): { published: number, peakTopicPerS: number, meanPerAgentPerS: number } {
  const secs = g.perSecond.length
  return {
    published: g.advertsPublished,
    peakTopicPerS: Math.max(0, ...g.perSecond),
    meanPerAgentPerS: secs === 0 || agents === 0 ? 0 : Math.round(g.advertsPublished / secs / agents * 1000) / 1000
  }
}

export function lowerBoundMs (e: Engine, F: number): number {
  // u_s: upload of the seeds; d_min and u_i over the booting agents (bytes per ms)
  let us = 0; let sumU = 0; let dMin = Infinity; let N = 0
  for (const n of e.nodes) {
    const h = e.net.hosts[n.idx]
    if (n.isSeed) { us += h.up.capBytesPerMs; continue }
    if (!n.boots) continue
    N++
    sumU += h.up.capBytesPerMs
    dMin = Math.min(dMin, h.down.capBytesPerMs)
  }
  if (N === 0) return 0
  return Math.max(F / us, F / dMin, N * F / (us + sumU))
}

export function runScenario (o: RunOptions): RunResult {
  const systems: Record<string, SystemResult> = {}
  let bound = 0; let boundBlocks = 0
  for (const v of variantsOf(o)) {
    const { result, engine } = runSystem(v.system, o, v.prefetch)
    systems[variantKey(v)] = result
    if (bound === 0) {
      // hosts are the same in every system (scenario randomness); agents added by joins count too
      bound = lowerBoundMs(engine, o.trace.distinctBytes)
      boundBlocks = lowerBoundMs(engine, o.trace.blockCount * o.trace.blockSizeBytes)
    }
  }
  return {
    scenario: o.scenario.name,
    agents: o.agents,
    seed: o.seed,
    trace: { reads: o.trace.reads.length, blocks: o.trace.blockCount, blockSizeBytes: o.trace.blockSizeBytes, distinctBytes: o.trace.distinctBytes, thinkTotalMs: o.trace.thinkTotalMs },
    boundMs: bound,
    boundBlocksMs: boundBlocks,
    systems
  }
}

/** Young generation of the workers a simulation runs in (scale.ts too): see scale.ts. */
export const YOUNG_GEN_MB = 192

/** Like runScenario, with each system in its own worker thread (about 2x faster on 2 cores). */
export async function runScenarioParallel (o: RunOptions, maxWorkers = 2): Promise<RunResult> {
  if (o.prefetch !== undefined) return runScenario(o) // a model (functions) cannot cross into a worker
  const variants = variantsOf(o)
  const out = new Map<string, { result: SystemResult, boundMs: number, boundBlocksMs: number }>()
  const { prefetch: _p, ...options } = o
  const queue = [...variants]
  const runOne = async (): Promise<void> => {
    for (let v = queue.shift(); v !== undefined; v = queue.shift()) {
      const sys = v.system
      const withPrefetch = v.prefetch
      out.set(variantKey(v), await new Promise((resolve, reject) => {
        // a large young generation: most simulator garbage (events, closures) then dies young instead of
        // being promoted and re-marked by every major GC, which made big runs superlinear
        const cpu0 = process.cpuUsage()
        const w = new Worker(new URL('./worker-entry.mjs', import.meta.url), {
          workerData: { options, system: sys, withPrefetch }, resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GEN_MB }
        })
        w.once('message', (m: { result: SystemResult, boundMs: number, boundBlocksMs: number }) => {
          if (maxWorkers === 1) { const c = process.cpuUsage(cpu0); m.result.cpuMs = Math.round((c.user + c.system) / 1000) }
          resolve(m)
        })
        w.once('error', reject)
        w.once('exit', code => { if (code !== 0) reject(new Error(`sim worker for ${sys} exited with ${code}`)) })
      }))
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(maxWorkers, variants.length)) }, runOne))
  const systems: Record<string, SystemResult> = {}
  for (const v of variants) systems[variantKey(v)] = (out.get(variantKey(v)) as { result: SystemResult }).result
  const first = out.get(variantKey(variants[0])) as { boundMs: number, boundBlocksMs: number }
  return {
    scenario: o.scenario.name,
    agents: o.agents,
    seed: o.seed,
    trace: { reads: o.trace.reads.length, blocks: o.trace.blockCount, blockSizeBytes: o.trace.blockSizeBytes, distinctBytes: o.trace.distinctBytes, thinkTotalMs: o.trace.thinkTotalMs },
    boundMs: first.boundMs,
    boundBlocksMs: first.boundBlocksMs,
    systems
  }
}
