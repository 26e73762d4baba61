// Multipath block scheduling, pure: which parent to ask for a missing block, when to send a hedged second
// request, and where to fail over. The driver keeps the per-parent state (bytes queued, measured
// throughput and RTT, requests in flight, failure) and the clock; these functions only decide.
//
// Expected completion time of asking source s for a block of b bytes:
//   expectedMs = rttMs + (queuedBytes + b) / throughputBytesPerS · 1000 + (holds ? 0 : relayPenaltyMs)
// A parent that does not hold the block can still relay it (it fetches from its own parents first), so it
// stays a choice, behind every holder of similar speed. Failed sources are never chosen; sources at
// maxInFlightPerSource only when every other one is too.

import { TopologyParamsError } from './errors.js'

export interface SchedulerParams {
  /** Throughput assumed for a source not yet measured. */
  defaultThroughputBytesPerS: number
  /** RTT assumed for a source not yet measured. */
  defaultRttMs: number
  /** Added to the expected time of a source that would have to fetch the block first. */
  relayPenaltyMs: number
  /** Hedge when a request has taken hedgeFactor × its expected time... */
  hedgeFactor: number
  /** ...and at least this long (avoids hedging every fast request on timer noise). */
  hedgeMinMs: number
  /** Bound on requests in flight per source. */
  maxInFlightPerSource: number
}

export const DEFAULT_SCHEDULER_PARAMS: Readonly<SchedulerParams> = Object.freeze({
  defaultThroughputBytesPerS: 50 * 1024 * 1024,
  defaultRttMs: 5,
  relayPenaltyMs: 10,
  hedgeFactor: 3,
  hedgeMinMs: 20,
  maxInFlightPerSource: 16
})

export function validateSchedulerParams (p: SchedulerParams): SchedulerParams {
  const pos = (f: keyof SchedulerParams, min: number): void => {
    const v = p[f]
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new TopologyParamsError(f, `must be a finite number >= ${min}, got ${String(v)}`)
  }
  pos('defaultThroughputBytesPerS', 1)
  pos('defaultRttMs', 0)
  pos('relayPenaltyMs', 0)
  pos('hedgeFactor', 1)
  pos('hedgeMinMs', 0)
  pos('maxInFlightPerSource', 1)
  return p
}

/** Which blocks a source holds: a flag for this block, a predicate, or a presence bitmap (LSB first). */
export type Holds = boolean | ((blockIndex: number) => boolean) | Uint8Array

export interface SourceState {
  peerId: string
  holds: Holds
  /** Bytes already requested from this source and not yet received. */
  queuedBytes: number
  /** Measured (smoothed) receive throughput from this source. */
  throughputBytesPerS?: number
  rttMs?: number
  inFlight: number
  failed: boolean
}

export interface BlockRequest {
  blockIndex: number
  sizeBytes: number
}

export interface SourceChoice {
  peerId: string
  /** Its position in the sources the choice was made from (callers look their own record up by it). */
  index: number
  expectedMs: number
  holds: boolean
}

/** A request in flight, as the driver remembers it. */
export interface InFlightRequest {
  peerId: string
  startedAtMs: number
  expectedMs: number
  /** Set once a hedge was sent: one hedge per request. */
  hedged: boolean
}

export function sourceHolds (holds: Holds, blockIndex: number): boolean {
  if (typeof holds === 'boolean') return holds
  if (typeof holds === 'function') return holds(blockIndex)
  const byte = holds[blockIndex >>> 3]
  return byte !== undefined && (byte & (1 << (blockIndex & 7))) !== 0
}

export function expectedCompletionMs (s: SourceState, req: BlockRequest, params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS): number {
  const rtt = s.rttMs !== undefined && Number.isFinite(s.rttMs) && s.rttMs >= 0 ? s.rttMs : params.defaultRttMs
  const tput = s.throughputBytesPerS !== undefined && s.throughputBytesPerS > 0 ? s.throughputBytesPerS : params.defaultThroughputBytesPerS
  const queued = Math.max(0, s.queuedBytes)
  return rtt + (queued + req.sizeBytes) / tput * 1000 + (sourceHolds(s.holds, req.blockIndex) ? 0 : params.relayPenaltyMs)
}

/** Usable sources, best (lowest expected completion) first; ties by peer id for determinism. */
export function rankSources (req: BlockRequest, sources: readonly SourceState[], params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS,
  exclude?: ReadonlySet<string> | string): SourceChoice[] {
  const skip = (id: string): boolean => typeof exclude === 'string' ? id === exclude : exclude?.has(id) === true
  const open: Array<SourceChoice & { full: boolean }> = []
  for (let index = 0; index < sources.length; index++) {
    const s = sources[index]
    if (s.failed || skip(s.peerId)) continue
    open.push({ peerId: s.peerId, index, expectedMs: expectedCompletionMs(s, req, params), holds: sourceHolds(s.holds, req.blockIndex), full: s.inFlight >= params.maxInFlightPerSource })
  }
  open.sort((a, b) => Number(a.full) - Number(b.full) || a.expectedMs - b.expectedMs || (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0))
  return open.map(({ peerId, index, expectedMs, holds }) => ({ peerId, index, expectedMs, holds }))
}

/** The source to ask first, or null when every source failed. Same order as rankSources, one pass. */
export function chooseSource (req: BlockRequest, sources: readonly SourceState[], params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS,
  exclude?: ReadonlySet<string> | string): SourceChoice | null {
  let best: SourceState | undefined
  let bestIndex = -1
  let bestMs = 0
  let bestFull = true
  for (let i = 0; i < sources.length; i++) {
    const s = sources[i]
    if (s.failed) continue
    if (exclude !== undefined && (typeof exclude === 'string' ? s.peerId === exclude : exclude.has(s.peerId))) continue
    const ms = expectedCompletionMs(s, req, params)
    const full = s.inFlight >= params.maxInFlightPerSource
    if (best === undefined || (bestFull && !full) ||
      (full === bestFull && (ms < bestMs || (ms === bestMs && s.peerId < best.peerId)))) {
      best = s; bestIndex = i; bestMs = ms; bestFull = full
    }
  }
  return best === undefined ? null : { peerId: best.peerId, index: bestIndex, expectedMs: bestMs, holds: sourceHolds(best.holds, req.blockIndex) }
}

/** The absolute time at which a request that has not completed should be hedged. */
export function hedgeDeadlineMs (request: Pick<InFlightRequest, 'startedAtMs' | 'expectedMs'>, params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS): number {
  return request.startedAtMs + Math.max(params.hedgeMinMs, params.hedgeFactor * request.expectedMs)
}

export function shouldHedge (request: InFlightRequest, nowMs: number, params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS): boolean {
  return !request.hedged && nowMs >= hedgeDeadlineMs(request, params)
}

/** Where to send the hedge: the best source other than the one already asked (null: none left). */
export function chooseHedgeTarget (req: BlockRequest, sources: readonly SourceState[], request: InFlightRequest,
  params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS): SourceChoice | null {
  return chooseSource(req, sources, params, request.peerId)
}

/** Where to go when `failedPeerId` failed the request: at once, to the best remaining source. */
export function chooseFailover (req: BlockRequest, sources: readonly SourceState[], failedPeerId: string | ReadonlySet<string>,
  params: SchedulerParams = DEFAULT_SCHEDULER_PARAMS): SourceChoice | null {
  return chooseSource(req, sources, params, failedPeerId)
}
