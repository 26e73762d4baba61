// The cost model of a real agent (issue 10): CPU per request and per block at the sender and at the receiver,
// per advert received, idle CPU, and the time to create an instance, measured from the daemon by
// `npm run calibrate -- --write` into config/sim/costs.json (that file records the commit and date). A
// scenario's `costs` picks them ('measured'), turns them off ('none') or overrides fields.

import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ScenarioError, SCENARIO_DIR } from './scenario.js'
import type { Scenario } from './scenario.js'

export interface CostParams {
  /** CPU ms at a sender per block request it answers (parse, lookup, stream write), beyond the blocks. */
  requestSendCpuMs: number
  /** CPU ms at a sender per 64 KiB block sent (read, frame, encrypt). */
  blockSendCpuMs: number
  /** CPU ms at a requester per request (scheduling, framing), beyond the blocks. */
  requestRecvCpuMs: number
  /** CPU ms at a receiver per block (decrypt, hash check, cache write, NBD reply). */
  blockRecvCpuMs: number
  /** Wall ms a request spends inside the two agents beyond their CPU (scheduling, commits): latency only. */
  requestWaitMs: number
  /** CPU ms per advert received (signature, decode, validation: the part that grows with the swarm). */
  advertCpuMs: number
  /**
   * CPU ms per second per neighbour beyond its adverts (RTT probes, lease renewals, gossip control): bounded by
   * the probes per heartbeat (8), parents and children (NEIGHBOURS_MAX).
   */
  neighbourCpuMsPerS: number
  /** CPU ms per second an agent spends with no blocks moving (heartbeat, pings, timers). */
  idleCpuMsPerS: number
  /** CPU ms at an agent per VM read, hit or miss (NBD request and reply, cache lookup and copy). */
  readCpuMs: number
  /** Wall ms of a VM read served from the agent's cache on an idle host, its CPU included (a boot's think-time gaps). */
  readWallMs: number
  /** Wall ms of instance.create (manifest fetch, cache, export): reported, not simulated (load inflates it). */
  instanceCreateMs: number
  /** CPU ms of instance.create at the agent: CPU work on the host before the VM's first read. */
  instanceCreateCpuMs: number
  startupCpuMs: number
  startupWallMs: number
  attachMs: number
}

export const NO_COSTS: Readonly<CostParams> = Object.freeze({
  requestSendCpuMs: 0, blockSendCpuMs: 0, requestRecvCpuMs: 0, blockRecvCpuMs: 0, requestWaitMs: 0, advertCpuMs: 0, neighbourCpuMsPerS: 0, idleCpuMsPerS: 0,
  readCpuMs: 0, readWallMs: 0, instanceCreateMs: 0, instanceCreateCpuMs: 0, startupCpuMs: 0, startupWallMs: 0, attachMs: 0
})

/** Peers an agent probes, renews or is renewed by each heartbeat: 8 probes, 3 parents, 8 children. */
export const NEIGHBOURS_MAX = 19

export const COSTS_FILE = join(SCENARIO_DIR, 'costs.json')

/** CPU costs under the testbed's load: costs.json's `testbedLoad` (npm run calibrate -- --from-testbed FILE). */
export interface TestbedLoad {
  /** Measured CPU of the wave's host agents over what the quiet costs give for the work they counted. */
  factor: number
  /**
   * The per-request costs' own factor (requestSendCpuMs, requestRecvCpuMs), when fitted on two waves that differ
   * in their share of requests (a first boot and a --vmt-profile wave): `factor` is then the rest's.
   */
  requestFactor?: number
  /**
   * CPU ms per VM read of what else ran on the testbed's cores in that wave (the machine's busy CPU less the
   * agents'): the replay drivers and the kernel's network path. Added to readCpuMs under the testbed's load.
   */
  backgroundCpuMsPerRead?: number
  /** The bench:testbed runs it was fitted on. */
  source: string
  /** Fitted apart per link rate (bench:testbed's --rate: '1gbit', '100mbit'); a scenario's testbedRate picks one. */
  byRate?: Record<string, Omit<TestbedLoad, 'byRate'>>
}

/** The cost fields that are CPU time (scaled by a load factor); the rest are wall times. */
export const CPU_COST_FIELDS = [
  'requestSendCpuMs', 'blockSendCpuMs', 'requestRecvCpuMs', 'blockRecvCpuMs', 'advertCpuMs', 'neighbourCpuMsPerS', 'idleCpuMsPerS',
  'readCpuMs', 'instanceCreateCpuMs', 'startupCpuMs'
] as const satisfies ReadonlyArray<keyof CostParams>

/** The per-request CPU costs: scaled by testbedLoad.requestFactor when it was fitted. */
const REQUEST_COST_FIELDS: ReadonlySet<string> = new Set(['requestSendCpuMs', 'requestRecvCpuMs'])

type MeasuredCosts = CostParams & { commit?: string, measuredAt?: string, testbedLoad?: TestbedLoad }
let measured: MeasuredCosts | undefined

export function measuredCosts (): MeasuredCosts {
  if (measured !== undefined) return measured
  let json: Record<string, unknown>
  try { json = JSON.parse(readFileSync(COSTS_FILE, 'utf8')) } catch (err) { throw new ScenarioError(`${COSTS_FILE}: ${(err as Error).message}`) }
  const out: Record<string, unknown> = { ...json }
  for (const k of Object.keys(NO_COSTS)) {
    const v = json[k]
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ScenarioError(`${COSTS_FILE}: ${k} must be a number >= 0`)
  }
  const load = json.testbedLoad as TestbedLoad | undefined
  if (load !== undefined) {
    checkLoad(load)
    if (load.byRate !== undefined) {
      if (typeof load.byRate !== 'object' || load.byRate === null) throw new ScenarioError(`${COSTS_FILE}: testbedLoad.byRate must be an object of loads by rate`)
      for (const l of Object.values(load.byRate)) checkLoad(l)
    }
  }
  measured = out as unknown as MeasuredCosts
  return measured
}

function checkLoad (load: Omit<TestbedLoad, 'byRate'>): void {
  const positive = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v) && v > 0
  if (!positive(load.factor) || typeof load.source !== 'string' ||
    (load.requestFactor !== undefined && !positive(load.requestFactor)) ||
    (load.backgroundCpuMsPerRead !== undefined && (typeof load.backgroundCpuMsPerRead !== 'number' || !Number.isFinite(load.backgroundCpuMsPerRead) || load.backgroundCpuMsPerRead < 0))) {
    throw new ScenarioError(`${COSTS_FILE}: testbedLoad must be { factor: number > 0, requestFactor?: number > 0, backgroundCpuMsPerRead?: number >= 0, source: string, byRate?: { RATE: the same } }`)
  }
}

/** The testbed load of a scenario: its testbedRate's own fit when costs.json has one, else testbedLoad's. */
export function testbedLoadOf (scenario: Pick<Scenario, 'testbedRate'>): Omit<TestbedLoad, 'byRate'> | undefined {
  const load = measuredCosts().testbedLoad
  if (load === undefined) return undefined
  return (scenario.testbedRate !== undefined ? load.byRate?.[scenario.testbedRate] : undefined) ?? load
}

export function costsOf (scenario: Pick<Scenario, 'costs' | 'costLoad' | 'testbedRate'>): CostParams {
  const c = scenario.costs
  if (c === 'none') return { ...NO_COSTS }
  const picked = pickCosts(c)
  if (scenario.costLoad !== 'testbed') return picked
  // The testbed's agents share 2 cores with 16 other processes: the same work costs them more CPU than two
  // agents alone measure (perf: every function's share grew alike, it is not extra work).
  const load = testbedLoadOf(scenario)
  if (load === undefined) throw new ScenarioError(`costLoad 'testbed': ${COSTS_FILE} has no testbedLoad (npm run calibrate -- --from-testbed FILE --write)`)
  for (const k of CPU_COST_FIELDS) picked[k] *= REQUEST_COST_FIELDS.has(k) ? load.requestFactor ?? load.factor : load.factor
  // And what else ran on those cores, per read (the replay drivers, the kernel's network path).
  picked.readCpuMs += load.backgroundCpuMsPerRead ?? 0
  return picked
}

function pickCosts (c: Exclude<Scenario['costs'], 'none'>): CostParams {
  const base = measuredCosts()
  const pick: CostParams = { ...NO_COSTS }
  for (const k of Object.keys(NO_COSTS) as Array<keyof CostParams>) pick[k] = base[k]
  // The measured wait is wall time of one read chain on a machine shared with other work: mostly scheduling
  // delay, which the CPU queues already model. Reported by calibrate; simulated only when a scenario sets it.
  pick.requestWaitMs = 0
  if (c === 'measured') return pick
  for (const [k, v] of Object.entries(c)) {
    if (!(k in NO_COSTS)) throw new ScenarioError(`costs.${k}: not a cost field (${Object.keys(NO_COSTS).join(', ')})`)
    pick[k as keyof CostParams] = v
  }
  return pick
}
