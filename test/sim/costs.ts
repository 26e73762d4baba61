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
  instanceCreateMs: 0, instanceCreateCpuMs: 0, startupCpuMs: 0, startupWallMs: 0, attachMs: 0
})

/** Peers an agent probes, renews or is renewed by each heartbeat: 8 probes, 3 parents, 8 children. */
export const NEIGHBOURS_MAX = 19

export const COSTS_FILE = join(SCENARIO_DIR, 'costs.json')

let measured: (CostParams & { commit?: string, measuredAt?: string }) | undefined

export function measuredCosts (): CostParams & { commit?: string, measuredAt?: string } {
  if (measured !== undefined) return measured
  let json: Record<string, unknown>
  try { json = JSON.parse(readFileSync(COSTS_FILE, 'utf8')) } catch (err) { throw new ScenarioError(`${COSTS_FILE}: ${(err as Error).message}`) }
  const out: Record<string, unknown> = { ...json }
  for (const k of Object.keys(NO_COSTS)) {
    const v = json[k]
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ScenarioError(`${COSTS_FILE}: ${k} must be a number >= 0`)
  }
  measured = out as unknown as CostParams & { commit?: string, measuredAt?: string }
  return measured
}

export function costsOf (scenario: Pick<Scenario, 'costs'>): CostParams {
  const c = scenario.costs
  if (c === 'none') return { ...NO_COSTS }
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
